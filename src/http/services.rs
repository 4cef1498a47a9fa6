//! The service layer behind every front end: logins, registrations, topics, revocations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::acl::TopicRule;
use crate::error::ErrorChain;
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceStatus, Event};
use crate::mqtt::{ConnectKind, ConnectRequest};
use crate::register::RefusalCode;
use crate::service::{
    Admin, AdminError, AuthError, Authenticator, IssuedClientIdToken, IssuedSecret, RegisterError,
    Registrar,
};
use crate::store::{FailureKind, Store, StoreError};
use crate::verified::{DeviceIdentity, Verified};

use super::{Metrics, RateLimitedLog, ServerConfig};

static LOGIN_REFUSALS: RateLimitedLog = RateLimitedLog::new("login");
static REGISTRATION_REFUSALS: RateLimitedLog = RateLimitedLog::new("registration");

/// The longest a decision waits for the store; then it is an outage ("unavailable"), never a
/// hung connection or hook.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// `decision`, or `outage` of a timeout error once [`STORE_TIMEOUT`] has passed.
async fn bounded<T, E>(
    decision: impl Future<Output = Result<T, E>>,
    outage: impl FnOnce(StoreError) -> E,
) -> Result<T, E> {
    match tokio::time::timeout(STORE_TIMEOUT, decision).await {
        Ok(outcome) => outcome,
        Err(_) => Err(outage(StoreError::unavailable(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the store did not answer in time",
        )))),
    }
}

/// How long a readiness answer is reused ([`Services::readiness`]).
pub const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// `check` within [`STORE_TIMEOUT`], then `issue` to completion: an issue is never cut short,
/// since cancelled after its compare-and-set committed it would have issued what no one
/// receives (the store's own limits bound it: SQLite's busy timeout, the pool's).
async fn checked_then_issued<T>(
    check: impl Future<Output = Result<Verified<DeviceIdentity>, RegisterError>>,
    issue: impl Future<Output = Result<T, RegisterError>>,
) -> Result<T, RegisterError> {
    bounded(check, RegisterError::Store).await?;
    issue.await
}

/// Where MQTT dynamic registration delivers a DeviceSecret (see the [compatibility notes](crate::manual::compatibility)).
pub const REGISTER_TOPIC: &str = "/ext/register";

/// Where a registration without pre-registration (`regnwl`) receives its ClientID and
/// DeviceToken (see the [compatibility notes](crate::manual::compatibility)).
pub const REGNWL_TOPIC: &str = "/ext/regnwl";

/// How many revocations a slow broker may lag behind before it must resynchronize (by ending
/// every session): room for a mass disable or reset read from the event log in one go.
const REVOCATION_BACKLOG: usize = 65_536;

/// The services behind the routes, shared by every request (and by MQTT listeners).
pub struct Services {
    /// Per-device logins.
    pub(super) authenticator: Authenticator<Arc<dyn Store>>,
    /// Dynamic registration.
    pub(super) registrar: Registrar<Arc<dyn Store>>,
    /// The topic rule.
    pub(super) topics: TopicRule,
    /// Operators' changes to devices: through [`Services::apply_operator_event`] only, which
    /// also tells the brokers.
    admin: Admin<Arc<dyn Store>>,
    /// Counters for `/metrics`.
    pub(super) metrics: Metrics,
    revocations: tokio::sync::broadcast::Sender<DeviceIdentity>,
    store: Arc<dyn Store>,
    /// The last readiness check: when, and the failure's kind if it failed.
    readiness: tokio::sync::Mutex<Option<(Instant, Option<FailureKind>)>>,
}

/// What a CONNECT was admitted as ([`Services::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// A per-device login: the device is Active and may use its topics.
    Login(DeviceIdentity),
    /// A dynamic registration (`authType=register`) that may be served: the connection may
    /// receive its secret on `/ext/register` and do nothing else.
    Registration(DeviceIdentity),
    /// A registration without pre-registration (`authType=regnwl`) that may be served: the
    /// connection may receive a ClientID and DeviceToken on `/ext/regnwl` and do nothing else.
    ClientIdRegistration(DeviceIdentity),
}

impl Admission {
    /// What a CONNECT asks to be admitted as, before any check: a login (signed, or a
    /// `connwl` token login) or one of the two registrations. The one classification every
    /// front end uses.
    pub fn requested(request: &ConnectRequest<'_>) -> Self {
        let who = request.claimed_identity();
        match request.kind() {
            ConnectKind::Login | ConnectKind::TokenLogin => Self::Login(who),
            ConnectKind::Register => Self::Registration(who),
            ConnectKind::RegisterNoPreregistration => Self::ClientIdRegistration(who),
        }
    }

    /// The device the CONNECT is for.
    pub fn device(&self) -> DeviceIdentity {
        match *self {
            Self::Login(who) | Self::Registration(who) | Self::ClientIdRegistration(who) => who,
        }
    }
}

/// Why a CONNECT was refused, as an MQTT CONNACK tells it (see the [compatibility notes](crate::manual::compatibility)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectRefusal {
    /// Unknown device, bad signature, stale timestamp, malformed credentials: MQTT 3.1.1
    /// return code 4, MQTT 5 reason 0x86.
    BadCredentials,
    /// A disabled device or a refused registration: 3.1.1 code 5, MQTT 5 reason 0x87.
    NotAuthorized,
    /// The store failed or did not answer within [`STORE_TIMEOUT`]: 3.1.1 code 3, MQTT 5
    /// reason 0x88; the device should retry later. (The embedded broker can only send 5 /
    /// 0x87 for it: rmqtt 0.24's authentication hook has no "unavailable" answer.)
    Unavailable,
}

impl ConnectRefusal {
    /// The refusal of a failed login.
    pub fn from_login(e: &AuthError) -> Self {
        match e {
            _ if e.is_outage() => Self::Unavailable,
            AuthError::Disabled => Self::NotAuthorized,
            _ => Self::BadCredentials,
        }
    }

    /// The refusal of a failed registration (a refused registration is "not authorized", as
    /// on Alibaba's platform; an outage is "unavailable").
    pub fn from_registration(e: &RegisterError) -> Self {
        match e.code() {
            RefusalCode::Unavailable | RefusalCode::Throttled => Self::Unavailable,
            _ => Self::NotAuthorized,
        }
    }
}

impl Services {
    /// The services over `store`, behind the cache `config` asks for
    /// ([`ServerConfig::service_stores`]).
    pub fn new(store: Arc<dyn Store>, config: ServerConfig) -> Self {
        let stores = config.service_stores(store);
        Self {
            authenticator: Authenticator::new(stores.logins.clone())
                .with_freshness(config.freshness),
            registrar: Registrar::new(stores.decisions.clone()).with_policy(config.issuance),
            admin: Admin::new(stores.decisions),
            store: stores.logins,
            topics: config.topics,
            metrics: Metrics::default(),
            revocations: tokio::sync::broadcast::channel(REVOCATION_BACKLOG).0,
            readiness: tokio::sync::Mutex::new(None),
        }
    }

    /// Decides a broker's CONNECT: a per-device login, or a dynamic registration
    /// (`authType=register`) checked but not yet issued (see [`Registrar::check_request`]).
    /// Counted and logged (never a secret).
    ///
    /// # Errors
    /// The [`ConnectRefusal`] a broker answers with, already logged.
    pub async fn admit(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Admission, ConnectRefusal> {
        let request = match ConnectRequest::parse(client_id, username, password) {
            Ok(request) => request,
            Err(e) => {
                let e = AuthError::from(e);
                self.record_login(&Err(e));
                return Err(ConnectRefusal::BadCredentials);
            }
        };
        let admission = self.admit_request(&request).await?;
        // Only once the CONNECT is proven: a refusal before would tell anyone which device
        // names exist (another code than a bad password's).
        if let Some(named) = self.client_id_names_another_device(&request).await {
            tracing::warn!(product_key = %request.product_key(), device_name = %request.device_name(), named_product_key = %named.product_key(), named_device_name = %named.device_name(), "CONNECT refused: the client id is another device's");
            return Err(ConnectRefusal::NotAuthorized);
        }
        Ok(admission)
    }

    async fn admit_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Admission, ConnectRefusal> {
        match Admission::requested(request) {
            Admission::Login(_) => {
                let outcome = bounded(
                    self.authenticator.authenticate_request(request),
                    AuthError::Store,
                )
                .await;
                self.record_login(&outcome);
                outcome
                    .map(|who| Admission::Login(who.into_inner()))
                    .map_err(|e| ConnectRefusal::from_login(&e))
            }
            Admission::Registration(_) => {
                let checked =
                    bounded(self.registrar.check_request(request), RegisterError::Store).await;
                self.admitted_registration(checked, Admission::Registration)
            }
            Admission::ClientIdRegistration(_) => {
                let checked = bounded(
                    self.registrar.check_client_id_request(request),
                    RegisterError::Store,
                )
                .await;
                self.admitted_registration(checked, Admission::ClientIdRegistration)
            }
        }
    }

    fn admitted_registration(
        &self,
        checked: Result<Verified<DeviceIdentity>, RegisterError>,
        admission: fn(DeviceIdentity) -> Admission,
    ) -> Result<Admission, ConnectRefusal> {
        match checked {
            Ok(who) => Ok(admission(who.into_inner())),
            Err(e) => {
                let refusal = ConnectRefusal::from_registration(&e);
                self.record_registration(&Err(e));
                Err(refusal)
            }
        }
    }

    /// The registered device, other than the one logging in, that the client id's CORE names
    /// the way Alibaba's SDKs build it (`{pk}.{dn}`, `{pk}&{dn}`, `{dn}.{pk}`, the Node SDK's
    /// `{pk}&{dn}_aliyun-iot-device-sdk-js`): that client id is reserved to that device, so
    /// that no other device can hold its session while it is offline and lock it out. Reads
    /// the store only for a CORE of that shape that does not name the device itself.
    async fn client_id_names_another_device(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Option<DeviceIdentity> {
        let me = request.claimed_identity();
        let core = request.client_id().core();
        let core = core
            .strip_suffix("_aliyun-iot-device-sdk-js")
            .unwrap_or(core);
        let identity = |pk: &str, dn: &str| {
            Some(DeviceIdentity::new(
                ProductKey::new(pk).ok()?,
                DeviceName::new(dn).ok()?,
            ))
        };
        let candidates = [
            core.split_once('.').and_then(|(pk, dn)| identity(pk, dn)),
            core.split_once('&').and_then(|(pk, dn)| identity(pk, dn)),
            core.rsplit_once('.').and_then(|(dn, pk)| identity(pk, dn)),
        ];
        for named in candidates.into_iter().flatten() {
            if named == me {
                continue;
            }
            let (pk, dn) = (named.product_key(), named.device_name());
            let lookup = self.store.device(&pk, &dn);
            if let Ok(Ok(Some(_))) = tokio::time::timeout(STORE_TIMEOUT, lookup).await {
                return Some(named);
            }
        }
        None
    }

    /// Whether a connection admitted as `admission` may subscribe to `filter`: a login, inside
    /// the device's topics ([`TopicRule`]); a registration, to [`REGISTER_TOPIC`] alone
    /// (where nothing but its own secret ever reaches it).
    pub fn may_subscribe(&self, admission: &Admission, filter: &str) -> bool {
        match admission {
            Admission::Login(device) => self.topics.may_subscribe(device, filter),
            Admission::Registration(_) => filter == REGISTER_TOPIC,
            Admission::ClientIdRegistration(_) => filter == REGNWL_TOPIC,
        }
    }

    /// Whether a connection admitted as `admission` may publish to `topic` (a registration:
    /// never).
    pub fn may_publish(&self, admission: &Admission, topic: &str) -> bool {
        match admission {
            Admission::Login(device) => self.topics.may_publish(device, topic),
            Admission::Registration(_) | Admission::ClientIdRegistration(_) => false,
        }
    }

    /// Authenticates a login, counting and logging the outcome (never a secret).
    ///
    /// # Errors
    /// The [`AuthError`], already logged.
    pub async fn login(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Verified<DeviceIdentity>, AuthError> {
        let outcome = bounded(
            self.authenticator
                .authenticate(client_id, username, password),
            AuthError::Store,
        )
        .await;
        self.record_login(&outcome);
        outcome
    }

    fn record_login(&self, outcome: &Result<Verified<DeviceIdentity>, AuthError>) {
        match outcome {
            Ok(who) => {
                self.metrics.count_login();
                tracing::info!(product_key = %who.product_key(), device_name = %who.device_name(), "login accepted");
            }
            Err(e) => {
                self.metrics.count_login_refusal(e);
                self.metrics.count_store_failure(e.store_failure());
                if LOGIN_REFUSALS.admit() {
                    tracing::warn!(reason = %ErrorChain(e), "login refused");
                }
            }
        }
    }

    /// Serves an MQTT registration connect (`authType=register`), counting and logging the
    /// outcome (never the secret).
    ///
    /// # Errors
    /// The [`RegisterError`], already logged.
    pub async fn register_connect(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<IssuedSecret, RegisterError> {
        let outcome = match ConnectRequest::parse(client_id, username, password) {
            Ok(request) => {
                checked_then_issued(
                    self.registrar.check_request(&request),
                    self.registrar.register_request(&request),
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        self.record_registration(&outcome);
        outcome
    }

    /// Serves an MQTT registration without pre-registration (`authType=regnwl`): creates the
    /// device if need be and issues a ClientID and DeviceToken, counting and logging the
    /// outcome (never the token).
    ///
    /// # Errors
    /// The [`RegisterError`], already logged.
    pub async fn register_client_id_connect(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<IssuedClientIdToken, RegisterError> {
        let outcome = match ConnectRequest::parse(client_id, username, password) {
            Ok(request) => {
                checked_then_issued(
                    self.registrar.check_client_id_request(&request),
                    self.registrar.register_client_id(&request),
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        match &outcome {
            Ok(issued) => {
                self.metrics.count_registration();
                tracing::info!(
                    product_key = %issued.identity().product_key(),
                    device_name = %issued.identity().device_name(),
                    client_id = %issued.client_id(),
                    "ClientID and DeviceToken issued"
                );
            }
            Err(e) => self.record_registration_refusal(e),
        }
        outcome
    }

    /// Applies an operator's event ([`Event::Disable`], [`Event::Enable`], [`Event::Reset`],
    /// [`Event::Delete`]) and, when it takes a device's right to stay connected away
    /// (all but Enable), tells every broker of these services ([`Services::revocations`]),
    /// which disconnects the device at once.
    ///
    /// # Errors
    /// As [`Admin::apply`].
    pub async fn apply_operator_event(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        event: Event,
    ) -> Result<Option<DeviceStatus>, AdminError> {
        let status = self.admin.apply(product_key, device_name, event).await?;
        if !matches!(event, Event::Enable) {
            // No receiver (no broker) is not an error.
            let _ = self
                .revocations
                .send(DeviceIdentity::new(*product_key, *device_name));
        }
        Ok(status)
    }

    /// The topic rule every front end enforces.
    pub fn topics(&self) -> &TopicRule {
        &self.topics
    }

    /// The counters `/metrics` renders.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Operators' changes that do not end sessions (products, registration, imports) and
    /// their reads, on the store itself: what the admin API and the CLI share. Disable,
    /// enable, reset and delete go through [`Services::apply_operator_event`], which also
    /// tells this process's brokers at once (through [`Admin::apply`] they learn of it from
    /// the event log, within its polling period).
    pub fn admin(&self) -> &Admin<Arc<dyn Store>> {
        &self.admin
    }

    /// Whether the store serves requests now ([`crate::store::DeviceStore::check_ready`]),
    /// within [`STORE_TIMEOUT`]: what `/readyz` answers.
    ///
    /// # Errors
    /// The store's failure, of the kind that says why.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        bounded(self.store.check_ready(), |e| e).await
    }

    /// [`Services::check_ready`]'s answer, at most [`READINESS_INTERVAL`] old: what
    /// `/readyz` answers, so that a flood of probes (anyone may send them) costs the store one
    /// round trip per interval. `None` when ready, else the failure's kind.
    pub async fn readiness(&self) -> Option<FailureKind> {
        // Held across the check: concurrent probes wait for one round trip, not one each.
        let mut last = self.readiness.lock().await;
        if let Some((at, failure)) = *last
            && at.elapsed() < READINESS_INTERVAL
        {
            return failure;
        }
        let failure = self
            .check_ready()
            .await
            .err()
            .map(|e| e.failure_kind().unwrap_or(FailureKind::Unavailable));
        *last = Some((Instant::now(), failure));
        failure
    }

    /// Follows the store's event log ([`crate::store::follow`]) for as long as the process
    /// runs: each change made by any process of the store (the admin CLI, another node) drops
    /// the device's cache entry here, and a device disabled, reset or deleted is named on
    /// [`Services::revocations`], so that every broker of these services disconnects it.
    pub fn follow_store_events(&self) -> tokio::task::JoinHandle<()> {
        let revocations = self.revocations.clone();
        crate::store::follow(self.store.clone(), move |event| {
            if event.kind.revokes()
                && let Some(device_name) = event.device_name
            {
                // No receiver (no broker) is not an error.
                let _ = revocations.send(DeviceIdentity::new(event.product_key, device_name));
            }
        })
    }

    /// Devices whose connections must end now (disabled, reset or deleted through
    /// [`Services::apply_operator_event`], or by any process of the store while
    /// [`Services::follow_store_events`] runs), for a broker to act on.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<DeviceIdentity> {
        self.revocations.subscribe()
    }

    /// Counts and logs a registration's outcome (never the secret).
    pub fn record_registration(&self, outcome: &Result<IssuedSecret, RegisterError>) {
        match outcome {
            Ok(issued) => {
                self.metrics.count_registration();
                tracing::info!(
                    product_key = %issued.identity().product_key(),
                    device_name = %issued.identity().device_name(),
                    redelivered = issued.redelivered(),
                    "device secret issued"
                );
            }
            Err(e) => self.record_registration_refusal(e),
        }
    }

    fn record_registration_refusal(&self, e: &RegisterError) {
        self.metrics.count_registration_refusal(e.code());
        self.metrics.count_store_failure(e.store_failure());
        if REGISTRATION_REFUSALS.admit() {
            tracing::warn!(reason = %ErrorChain(e), code = e.code().code(), "registration refused");
        }
    }
}
