use std::sync::{Arc, LazyLock};

use crate::error::ParseError;
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{Event, IssuancePolicy, TransitionError};
use crate::mqtt::{ConnectKind, ConnectRequest};
use crate::policy::{Clock, Freshness, SystemClock, UnixMillis};
use crate::random::{EntropyError, OsEntropy};
use crate::secret::DeviceSecret;
use crate::sign::VerifyError;
use crate::store::{DeviceRecord, DeviceStore, FailureKind, StoreError};
use crate::verified::{DeviceIdentity, Verified};

use super::apply_event;

/// What a login for an unknown device is checked against, so that it costs what a login for a
/// known device costs: otherwise the time of a refusal tells which device names exist.
static UNKNOWN_DEVICE: LazyLock<DeviceRecord> = LazyLock::new(|| {
    DeviceRecord::new(
        ProductKey::new("a1Unknown00").unwrap_or_else(|_| unreachable!()),
        DeviceName::new("unknown-device").unwrap_or_else(|_| unreachable!()),
        DeviceSecret::new("iotauth-unknown-device-timing-key").unwrap_or_else(|_| unreachable!()),
    )
});

/// Why a login was refused. Precise, for the operator's log; a device should be told only
/// "not authorized" (see [`AuthError::is_outage`] for the one distinction that matters to it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The credentials could not be parsed.
    #[error("malformed credentials: {0}")]
    Malformed(#[from] ParseError),
    /// No such device.
    #[error("unknown device")]
    UnknownDevice,
    /// The signature, token or timestamp was not accepted.
    #[error("credentials not accepted: {0}")]
    Verify(#[from] VerifyError),
    /// The device is disabled.
    #[error("the device is disabled")]
    Disabled,
    /// The store failed: an outage, not a verdict on the device.
    #[error(transparent)]
    Store(StoreError),
    /// The random source failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

impl AuthError {
    /// Whether the refusal is an outage (the device should retry later) rather than a verdict.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Entropy(_))
    }

    /// What made the store fail, when the refusal is a store failure.
    pub fn store_failure(&self) -> Option<FailureKind> {
        match self {
            Self::Store(e) => e.failure_kind(),
            _ => None,
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::UnknownDevice,
            other => Self::Store(other),
        }
    }
}

impl From<TransitionError> for AuthError {
    fn from(_: TransitionError) -> Self {
        // LoginOk is refused only for a disabled device.
        Self::Disabled
    }
}

/// Verifies per-device logins and marks a device Active on its first good one.
///
/// ```
/// # use iotauth::{*, store::*, service::*};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = std::sync::Arc::new(MemoryStore::new());
/// let admin = Admin::new(store.clone());
/// let product = admin.create_product(None, DynamicRegistration::Off).await?;
/// let device = admin.register_device(product.product_key, DeviceName::new("meter-01")?).await?;
///
/// // The device signs...
/// let cert = DeviceCertificate::new(device.product_key, device.device_name, device.device_secret);
/// let creds = build_login(&cert, &LoginOptions::default())?;
/// // ...and the broker asks the authenticator.
/// let auth = Authenticator::new(store.clone());
/// let who = auth.authenticate(creds.client_id(), creds.username(), &creds.expose_password()).await?;
/// assert_eq!(who.device_name().as_str(), "meter-01");
/// let stored = store.device(&who.product_key(), &who.device_name()).await?.unwrap();
/// assert_eq!(stored.status.state, DeviceState::Active);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Authenticator<S> {
    store: S,
    freshness: Freshness,
    clock: Arc<dyn Clock>,
}

impl<S: DeviceStore> Authenticator<S> {
    /// An authenticator over `store`, without a freshness window, on the system clock.
    pub fn new(store: S) -> Self {
        Self {
            store,
            freshness: Freshness::Unchecked,
            clock: Arc::new(SystemClock),
        }
    }

    /// Enforces a freshness policy on login timestamps.
    #[must_use]
    pub fn with_freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = freshness;
        self
    }

    /// Uses another clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Authenticates the three CONNECT fields of a per-device login.
    ///
    /// # Errors
    /// [`AuthError`]: malformed, unknown device, bad signature or timestamp, disabled, or an
    /// outage of the store.
    pub async fn authenticate(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Verified<DeviceIdentity>, AuthError> {
        let request = ConnectRequest::parse(client_id, username, password)?;
        self.authenticate_request(&request).await
    }

    /// Authenticates an already parsed login: a signed one (`authType` absent), or a token
    /// login (`authType=connwl`) with a ClientID the device holds.
    ///
    /// The signature is checked before the disabled flag, so that only a holder of the
    /// device's secret learns that the device is disabled.
    ///
    /// # Errors
    /// As [`Authenticator::authenticate`]; a registration or token connect is
    /// [`VerifyError::WrongKind`].
    pub async fn authenticate_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Verified<DeviceIdentity>, AuthError> {
        let kind = request.kind();
        if !matches!(kind, ConnectKind::Login | ConnectKind::TokenLogin) {
            return Err(VerifyError::WrongKind {
                expected: ConnectKind::Login,
                got: kind,
            }
            .into());
        }
        let (pk, dn) = (request.product_key(), request.device_name());
        // The clock is read only when a window is enforced: it costs a system call's worth
        // of time on every login otherwise.
        let now = match self.freshness {
            Freshness::Unchecked => UnixMillis(0),
            Freshness::Window { .. } => self.clock.now(),
        };
        let check = |device: &DeviceRecord| {
            match kind {
                ConnectKind::TokenLogin => request.verify_issued_token(&device.client_ids),
                _ => request.verify_login(&device.device_secret, self.freshness, now),
            }
            .map_err(AuthError::from)
        };
        let outcome = apply_event(
            &self.store,
            &pk,
            &dn,
            Event::LoginOk,
            IssuancePolicy::default(),
            &OsEntropy,
            check,
        )
        .await;
        match outcome {
            Ok(applied) => Ok(applied.checked),
            Err(AuthError::UnknownDevice) => {
                // The work a known device costs, then the refusal: a record copied (as a
                // read returns one), checked by the same code, and wiped.
                let _ = check(&UNKNOWN_DEVICE.clone_record());
                Err(AuthError::UnknownDevice)
            }
            Err(e) => Err(e),
        }
    }
}
