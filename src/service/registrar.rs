use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use zeroize::Zeroizing;

use crate::error::ParseError;
use crate::id::{DeviceName, IssuedClientId, ProductKey};
use crate::lifecycle::{
    DynamicRegistration, Event, IssuancePolicy, SecretEffect, TransitionError, transition,
};
use crate::mqtt::{ConnectKind, ConnectRequest};
use crate::policy::{Clock, SystemClock};
use crate::random::{EntropyError, OsEntropy};
use crate::register::{RefusalCode, RegisterForm, RegisterReply};
use crate::secret::{DeviceSecret, DeviceToken, ProductSecret};
use crate::sign::VerifyError;
use crate::store::{
    DeviceRecord, DeviceStore, FailureKind, PreRegistrationFree, ProductRecord, ProductStore,
    StoreError,
};
use crate::verified::{DeviceIdentity, Verified};

use super::apply_event;

/// Unknown products are verified against this key, so that they cost what known ones cost.
static DUMMY_PRODUCT_SECRET: LazyLock<ProductSecret> = LazyLock::new(|| {
    ProductSecret::new("iotauth-unknown-product-timing-key").unwrap_or_else(|_| unreachable!())
});

/// A device's secret, delivered by dynamic registration.
///
/// **Warning:** this is the device's only credential. Send it to the device alone, over TLS,
/// and never log it; [`IssuedSecret::into_reply`] builds the wire reply.
pub struct IssuedSecret {
    identity: Verified<DeviceIdentity>,
    device_secret: DeviceSecret,
    redelivered: bool,
}

impl IssuedSecret {
    /// Who the secret belongs to.
    pub fn identity(&self) -> &Verified<DeviceIdentity> {
        &self.identity
    }

    /// The secret, giving up the rest: an issued secret is handed on, not kept and copied.
    pub fn into_device_secret(self) -> DeviceSecret {
        self.device_secret
    }

    /// Whether this is a repeated delivery (policy `RedeliverUntilFirstLogin`).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The payload MQTT dynamic registration publishes on `/ext/register`:
    /// `{"productKey","deviceName","deviceSecret"}`.
    ///
    /// **Warning:** it contains the secret in clear; send it to the device alone.
    pub fn into_ext_register_payload(self) -> Zeroizing<String> {
        crate::register::issued_json(
            &self.identity.product_key(),
            &self.identity.device_name(),
            &self.device_secret,
        )
    }

    /// The success reply (`code` 200 with `data.deviceSecret`).
    pub fn into_reply(self) -> RegisterReply {
        RegisterReply::Issued {
            product_key: self.identity.product_key(),
            device_name: self.identity.device_name(),
            device_secret: self.device_secret,
        }
    }
}

impl fmt::Debug for IssuedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedSecret")
            .field("identity", &self.identity)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// A ClientID and DeviceToken issued by [`Registrar::register_client_id`]: what the device
/// is sent on `/ext/regnwl`. The token exists only here; the store keeps its digest.
pub struct IssuedClientIdToken {
    identity: Verified<DeviceIdentity>,
    client_id: IssuedClientId,
    token: DeviceToken,
}

impl IssuedClientIdToken {
    /// The device it was issued to.
    pub fn identity(&self) -> &Verified<DeviceIdentity> {
        &self.identity
    }

    /// The ClientID: the client-id CORE of the device's `connwl` logins.
    pub fn client_id(&self) -> IssuedClientId {
        self.client_id
    }

    /// The DeviceToken: the password of the device's `connwl` logins.
    pub fn token(&self) -> &DeviceToken {
        &self.token
    }

    /// The `/ext/regnwl` payload, `{"productKey","deviceName","clientId","deviceToken"}`.
    ///
    /// **Warning:** it contains the token in clear; send it to the device alone.
    pub fn into_ext_regnwl_payload(self) -> Zeroizing<String> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Payload<'a> {
            product_key: &'a str,
            device_name: &'a str,
            client_id: &'a str,
            device_token: &'a str,
        }
        crate::register::exposing_json(&Payload {
            product_key: self.identity.product_key().as_str(),
            device_name: self.identity.device_name().as_str(),
            client_id: self.client_id.as_str(),
            device_token: self.token.expose_secret(),
        })
    }
}

impl fmt::Debug for IssuedClientIdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedClientIdToken")
            .field("identity", &self.identity)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Why a registration was refused. Precise, for the operator's log; [`RegisterError::code`]
/// gives the code the device is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The request could not be parsed.
    #[error("malformed registration: {0}")]
    Malformed(#[from] ParseError),
    /// The connect is not a registration of a pre-registered device (`authType=register`).
    #[error("not a registration of a pre-registered device: authType is {got}")]
    Unsupported {
        /// What the connect asked for.
        got: ConnectKind,
    },
    /// No such product.
    #[error("unknown product")]
    UnknownProduct,
    /// The signature was not accepted.
    #[error("registration not accepted: {0}")]
    Verify(#[from] VerifyError),
    /// No such device in the product (devices must be registered in advance).
    #[error("unknown device")]
    UnknownDevice,
    /// The lifecycle refuses the issue (disabled, switch off, already issued).
    #[error(transparent)]
    Refused(#[from] TransitionError),
    /// The store failed: an outage, not a verdict.
    #[error(transparent)]
    Store(StoreError),
    /// The random source failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The product's registration rate limit is reached ([`crate::store::RegistrationLimit`]).
    #[error("throttled: the product's registration rate limit is reached")]
    Throttled,
    /// The `random` was used by an earlier registration of the device
    /// ([`crate::store::RegistrationLimit::unique_random`]).
    #[error("the registration's random was used before (a replayed registration?)")]
    RandomReused,
}

impl From<StoreError> for RegisterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::UnknownDevice,
            other => Self::Store(other),
        }
    }
}

impl RegisterError {
    /// What made the store fail, when the refusal is a store failure.
    pub fn store_failure(&self) -> Option<FailureKind> {
        match self {
            Self::Store(e) => e.failure_kind(),
            _ => None,
        }
    }

    /// The code the device is sent.
    pub fn code(&self) -> RefusalCode {
        match self {
            Self::Malformed(_) | Self::Unsupported { .. } => RefusalCode::InvalidRequest,
            Self::UnknownProduct => RefusalCode::ProductNotFound,
            Self::Verify(_) => RefusalCode::SignatureMismatch,
            Self::UnknownDevice => RefusalCode::DeviceNotFound,
            Self::Refused(TransitionError::Disabled { .. }) => RefusalCode::DeviceDisabled,
            Self::Refused(TransitionError::DynamicRegistrationOff) => {
                RefusalCode::DynamicRegistrationDisabled
            }
            Self::Refused(TransitionError::TooManyClientIds) => RefusalCode::TooManyClientIds,
            Self::Store(StoreError::QuotaReached) => RefusalCode::DeviceQuotaReached,
            Self::Refused(_) => RefusalCode::AlreadyIssued,
            Self::Store(_) | Self::Entropy(_) => RefusalCode::Unavailable,
            Self::Throttled => RefusalCode::Throttled,
            Self::RandomReused => RefusalCode::RandomReused,
        }
    }

    /// Whether the refusal is one a holder of a leaked ProductSecret (or someone guessing)
    /// causes, counted by the circuit breaker: a bad signature, an unknown device, a secret
    /// already issued, a replayed `random`.
    fn counts_for_breaker(&self) -> bool {
        matches!(
            self.code(),
            RefusalCode::SignatureMismatch
                | RefusalCode::DeviceNotFound
                | RefusalCode::AlreadyIssued
                | RefusalCode::RandomReused
        )
    }

    /// The refusal reply the device is sent.
    pub fn to_reply(&self) -> RegisterReply {
        RegisterReply::refused(self.code())
    }
}

/// Dynamic registration: hands a pre-registered device its secret, once (or per policy).
///
/// Checks, in this order: the request parses; the product exists; the signature is the
/// product secret's; the device exists; then the lifecycle (enabled, switch on, not yet
/// issued) decides, and the issue is written by compare-and-set, so of racing requests
/// exactly one wins. Only a holder of the product secret learns more than "bad signature"
/// about a product.
///
/// Every issue is also subject to the product's [`crate::store::RegistrationLimit`]: its token bucket
/// ([`RegisterError::Throttled`]), the `random` history when asked
/// ([`RegisterError::RandomReused`]); and refusals feed its circuit breaker, which switches
/// dynamic registration off with a `warn` log line ([`Registrar::breaker_trips`] counts).
pub struct Registrar<S> {
    store: S,
    policy: IssuancePolicy,
    clock: Arc<dyn Clock>,
    breaker_trips: AtomicU64,
}

impl<S: ProductStore + DeviceStore> Registrar<S> {
    /// A registrar over `store` with the default policy, [`IssuancePolicy::Once`].
    pub fn new(store: S) -> Self {
        Self {
            store,
            policy: IssuancePolicy::Once,
            clock: Arc::new(SystemClock),
            breaker_trips: AtomicU64::new(0),
        }
    }

    /// Uses another clock for the registration limits (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How many times this registrar's refusals switched a product's dynamic registration
    /// off (the metric `iotauth_registration_breaker_trips_total`).
    pub fn breaker_trips(&self) -> u64 {
        self.breaker_trips.load(Ordering::Relaxed)
    }

    /// `outcome`, after counting a refusal that counts for the product's circuit breaker
    /// (and switching the product off, logged, when it trips). A failure to count is logged
    /// and does not change the answer.
    async fn counted<T>(
        &self,
        product_key: ProductKey,
        outcome: Result<T, RegisterError>,
    ) -> Result<T, RegisterError> {
        if let Err(e) = &outcome
            && e.counts_for_breaker()
        {
            match self
                .store
                .record_registration_refusal(&product_key, self.clock.now())
                .await
            {
                Ok(true) => {
                    self.breaker_trips.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        product_key = %product_key,
                        "dynamic registration switched off: too many refused registrations \
                         (a leaked ProductSecret?); turn it back on with \
                         `iotauth product dynamic-registration {product_key} on`"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(product_key = %product_key, error = %crate::ErrorChain(&e), "a refused registration could not be counted");
                }
            }
        }
        outcome
    }

    /// The product's limits on an issue about to be written: its token bucket, then (when
    /// asked) the `random` history.
    async fn within_limits(
        &self,
        product: &ProductRecord,
        device_name: &DeviceName,
        random: &str,
    ) -> Result<(), RegisterError> {
        let now = self.clock.now();
        if !self
            .store
            .take_registration_token(&product.product_key, now)
            .await?
        {
            return Err(RegisterError::Throttled);
        }
        if product.registration_limit.unique_random()
            && !self
                .store
                .record_registration_random(&product.product_key, device_name, random)
                .await?
        {
            return Err(RegisterError::RandomReused);
        }
        Ok(())
    }

    /// Uses another issuance policy.
    #[must_use]
    pub fn with_policy(mut self, policy: IssuancePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Serves an HTTPS registration body (`POST /auth/register/device`).
    ///
    /// # Errors
    /// [`RegisterError`]; its [`RegisterError::to_reply`] is what the device is sent.
    pub async fn register_form(&self, body: &[u8]) -> Result<IssuedSecret, RegisterError> {
        let form = RegisterForm::parse(body)?;
        let issued = self
            .issue(
                form.product_key(),
                form.device_name(),
                form.random(),
                |secret| form.verify(secret),
            )
            .await;
        self.counted(form.product_key(), issued).await
    }

    /// Serves an MQTT registration connect (`authType=register`).
    ///
    /// # Errors
    /// [`RegisterError`]; an `regnwl` connect (no pre-registration) is
    /// [`RegisterError::Unsupported`].
    pub async fn register_connect(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<IssuedSecret, RegisterError> {
        let request = ConnectRequest::parse(client_id, username, password)?;
        self.register_request(&request).await
    }

    /// Serves an already parsed MQTT registration connect.
    ///
    /// # Errors
    /// As [`Registrar::register_connect`].
    pub async fn register_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<IssuedSecret, RegisterError> {
        expect_registration(request)?;
        let issued = self
            .issue(
                request.product_key(),
                request.device_name(),
                registration_random(request),
                |secret| request.verify_registration(secret),
            )
            .await;
        self.counted(request.product_key(), issued).await
    }

    /// Whether [`Registrar::register_request`] would issue now, without issuing: the checks in
    /// the same order, the lifecycle's answer on the device as it is, and no write.
    ///
    /// A broker answers the CONNECT with this and issues once the connection is established,
    /// so that a connection the broker refuses for another reason (a keep-alive out of range,
    /// say) never consumes the one issue. The issue itself may still be refused if the device
    /// changed in between (another broker issued first).
    ///
    /// # Errors
    /// As [`Registrar::register_connect`].
    pub async fn check_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Verified<DeviceIdentity>, RegisterError> {
        expect_registration(request)?;
        let checked = self.checked_request(request).await;
        self.counted(request.product_key(), checked).await
    }

    async fn checked_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Verified<DeviceIdentity>, RegisterError> {
        let (product_key, device_name) = (request.product_key(), request.device_name());
        let (identity, product) = self
            .verified_product(product_key, |secret| request.verify_registration(secret))
            .await?;
        self.issuable(&product, &device_name).await?;
        Ok(identity)
    }

    /// Serves a registration without pre-registration (`authType=regnwl`, see the [compatibility notes](crate::manual::compatibility)):
    /// checks as [`Registrar::register_request`] does, with the product's
    /// [`PreRegistrationFree`] switch on too; creates the device (a fresh secret, Inactive)
    /// when it does not exist, within the product's device quota; then issues a new ClientID
    /// and DeviceToken by compare-and-set (at most [`crate::IssuedClientId::MAX_PER_DEVICE`] per device, so
    /// of racing requests no more than that win).
    ///
    /// # Errors
    /// [`RegisterError`]: also for a connect of another `authType`
    /// ([`RegisterError::Unsupported`]), a full quota ([`RefusalCode::DeviceQuotaReached`])
    /// and a device that holds the most ClientIDs ([`RefusalCode::TooManyClientIds`]).
    pub async fn register_client_id(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<IssuedClientIdToken, RegisterError> {
        let issued = self.issue_client_id(request).await;
        self.counted(request.product_key(), issued).await
    }

    async fn issue_client_id(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<IssuedClientIdToken, RegisterError> {
        let (identity, registration, product) = self.verified_client_id_request(request).await?;
        let device_quota = product.pre_registration_free.device_quota;
        let (product_key, device_name) = (request.product_key(), request.device_name());
        let exists = self
            .store
            .device(&product_key, &device_name)
            .await?
            .is_some();
        self.within_limits(&product, &device_name, registration_random(request))
            .await?;
        let created = if exists {
            Ok(())
        } else {
            self.store
                .insert_device_within_quota(
                    DeviceRecord::new(
                        product_key,
                        device_name,
                        DeviceSecret::generate(&OsEntropy)?,
                    ),
                    device_quota,
                )
                .await
        };
        match created {
            // Registered in advance, or by a concurrent request: both are served alike.
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(RegisterError::Store(e)),
        }
        let applied = apply_event(
            &self.store,
            &product_key,
            &device_name,
            Event::IssueClientId {
                registration,
                held: 0,
            },
            self.policy,
            &OsEntropy,
            |_| Ok::<(), RegisterError>(()),
        )
        .await?;
        let (client_id, token) = applied
            .issued_client_id
            .ok_or(RegisterError::Refused(TransitionError::TooManyClientIds))?;
        Ok(IssuedClientIdToken {
            identity,
            client_id,
            token,
        })
    }

    /// Whether [`Registrar::register_client_id`] would issue now, without creating or
    /// issuing anything (see [`Registrar::check_request`] for why a broker asks first): the
    /// signature, both switches, for an existing device the lifecycle's answer, for a new one
    /// the product's quota (checked again, atomically, when the device is created).
    ///
    /// # Errors
    /// As [`Registrar::register_client_id`].
    pub async fn check_client_id_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Verified<DeviceIdentity>, RegisterError> {
        let checked = self.checked_client_id_request(request).await;
        self.counted(request.product_key(), checked).await
    }

    async fn checked_client_id_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Verified<DeviceIdentity>, RegisterError> {
        let (identity, registration, product) = self.verified_client_id_request(request).await?;
        let device_quota = product.pre_registration_free.device_quota;
        let (product_key, device_name) = (request.product_key(), request.device_name());
        match self.store.device(&product_key, &device_name).await? {
            Some(device) => {
                let event = Event::IssueClientId {
                    registration,
                    held: device.client_ids.len(),
                };
                transition(device.status, event, self.policy)?;
            }
            None if self.store.device_count(&product_key).await? >= u64::from(device_quota) => {
                return Err(RegisterError::Store(StoreError::QuotaReached));
            }
            None => {}
        }
        Ok(identity)
    }

    /// A `regnwl` request's kind, signature and the product's switches: the identity, and the
    /// switch in effect (on only while dynamic registration and registration without
    /// pre-registration are both on); the product.
    async fn verified_client_id_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<(Verified<DeviceIdentity>, DynamicRegistration, ProductRecord), RegisterError> {
        if request.kind() != ConnectKind::RegisterNoPreregistration {
            return Err(RegisterError::Unsupported {
                got: request.kind(),
            });
        }
        let (identity, product) = self
            .verified_product(request.product_key(), |secret| {
                request.verify_registration(secret)
            })
            .await?;
        match (product.dynamic_registration, product.pre_registration_free) {
            (DynamicRegistration::On, PreRegistrationFree { on: true, .. }) => {
                Ok((identity, DynamicRegistration::On, product))
            }
            _ => Err(TransitionError::DynamicRegistrationOff.into()),
        }
    }

    /// Whether the lifecycle would issue the device's secret now: the product's switch first
    /// (a product switched off tells no one which of its devices exist), then the device as it
    /// is.
    async fn issuable(
        &self,
        product: &ProductRecord,
        device_name: &DeviceName,
    ) -> Result<(), RegisterError> {
        if product.dynamic_registration == DynamicRegistration::Off {
            return Err(TransitionError::DynamicRegistrationOff.into());
        }
        let device = self
            .store
            .device(&product.product_key, device_name)
            .await?
            .ok_or(RegisterError::UnknownDevice)?;
        transition(
            device.status,
            Event::Issue(product.dynamic_registration),
            self.policy,
        )?;
        Ok(())
    }

    /// Looks the product up and verifies the request against its secret (against a dummy
    /// secret when the product is unknown, so that both cost the same).
    async fn verified_product(
        &self,
        product_key: ProductKey,
        verify: impl Fn(&ProductSecret) -> Result<Verified<DeviceIdentity>, VerifyError>,
    ) -> Result<(Verified<DeviceIdentity>, ProductRecord), RegisterError> {
        let Some(product) = self.store.product(&product_key).await? else {
            let _ = verify(&DUMMY_PRODUCT_SECRET);
            return Err(RegisterError::UnknownProduct);
        };
        Ok((verify(&product.product_secret)?, product))
    }

    /// Verifies, checks the lifecycle on the device as it is, applies the product's limits,
    /// then issues by compare-and-set. (The lifecycle is checked before the limits so that a
    /// refused request takes no token and records no `random`.)
    async fn issue(
        &self,
        product_key: ProductKey,
        device_name: DeviceName,
        random: &str,
        verify: impl Fn(&ProductSecret) -> Result<Verified<DeviceIdentity>, VerifyError>,
    ) -> Result<IssuedSecret, RegisterError> {
        let (identity, product) = self.verified_product(product_key, verify).await?;
        self.issuable(&product, &device_name).await?;
        self.within_limits(&product, &device_name, random).await?;
        let applied = apply_event(
            &self.store,
            &product_key,
            &device_name,
            Event::Issue(product.dynamic_registration),
            self.policy,
            &OsEntropy,
            |_| Ok::<(), RegisterError>(()),
        )
        .await?;
        Ok(IssuedSecret {
            identity,
            device_secret: applied.before.device_secret,
            redelivered: applied.transition.secret == SecretEffect::Redeliver,
        })
    }
}

/// The `random` of a registration connect (parsing requires one of every registration kind).
fn registration_random<'a>(request: &ConnectRequest<'a>) -> &'a str {
    request.client_id().random().unwrap_or_default()
}

/// Only `authType=register` is served here; `regnwl` has no pre-registered device.
fn expect_registration(request: &ConnectRequest<'_>) -> Result<(), RegisterError> {
    match request.kind() {
        ConnectKind::Register => Ok(()),
        got => Err(RegisterError::Unsupported { got }),
    }
}
