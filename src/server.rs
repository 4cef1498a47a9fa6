//! The HTTP side of a self-hosted platform (feature `server`): Alibaba's dynamic-registration
//! endpoint and the authentication hooks of EMQX, VerneMQ and mosquitto-go-auth, as an axum
//! [`Router`] to serve alone (`iotauth serve`) or to mount in your own service.
//!
//! | route | dialect |
//! |---|---|
//! | `POST /auth/register/device` | Alibaba's HTTPS dynamic registration (form in, JSON out) |
//! | `POST /hooks/emqx/authn`, `POST /hooks/emqx/authz` | EMQX 5 HTTP authenticator / authorizer |
//! | `POST /hooks/vernemq` | VerneMQ webhooks (`vernemq-hook` header) |
//! | `POST /hooks/go-auth/user`, `/superuser`, `/acl` | mosquitto-go-auth HTTP backend, JSON params |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness (the process answers); readiness (the store answers a round trip within [`STORE_TIMEOUT`], else 503); Prometheus text |
//!
//! A device learns nothing from a refusal beyond its kind; the log (`tracing`) says why, never
//! with a secret. A store outage is answered "ignore" / "next" / 5xx, so that the broker
//! decides, never as a bad password.

#[cfg(feature = "admin-api")]
mod admin;

#[cfg(feature = "admin-api")]
pub use admin::{
    AdminApi, AdminToken, AdminTokenError, DEFAULT_PAGE_SIZE, ErrorBody, ErrorCode, MAX_PAGE_SIZE,
    admin_router,
};

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::acl::TopicRule;
use crate::error::ErrorChain;
use crate::error::ParseError;
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceStatus, Event, IssuancePolicy};
use crate::mqtt::{ConnectKind, ConnectRequest, parse_username};
use crate::policy::Freshness;
use crate::register::{RefusalCode, percent_decode};
use crate::service::{
    Admin, AdminError, AuthError, Authenticator, IssuedClientIdToken, IssuedSecret, RegisterError,
    Registrar,
};
use crate::store::{Actor, CachedStore, FailureKind, SecretsAtRest, Store, StoreError};
use crate::verified::{DeviceIdentity, Verified};

/// Cap on any request body, in bytes (a registration form is at most 4096).
pub const MAX_BODY_LEN: usize = 16 * 1024;

/// How the server decides: the settings every front end shares (`iotauth serve`'s flags, the
/// embedded broker, the Mosquitto plugin's `plugin_opt_*`), each parsed in one place
/// ([`ServerConfig::set`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How often a secret may be delivered (`issuance`).
    pub issuance: IssuancePolicy,
    /// The timestamp window of logins (`max_skew_secs`).
    pub freshness: Freshness,
    /// The topics each device may use (`topic_template`).
    pub topics: TopicRule,
    /// How long a device read is reused ([`CachedStore`]); zero: never (`cache_ttl_secs`).
    pub cache_ttl: Duration,
    /// How the store keeps secrets (`master_key_file`, `previous_key_file`,
    /// `insecure_plaintext_secrets`).
    pub secrets: SecretsAtRest,
    /// Who the store's events name as having made the changes this process makes (`actor`):
    /// `server:HOST-PID` by default.
    pub actor: Actor,
    /// Whether `topic_template` was set: the first one replaces the defaults.
    templates_set: bool,
}

impl Default for ServerConfig {
    /// Issue once, no timestamp window, Alibaba's topics, no cache.
    fn default() -> Self {
        Self {
            issuance: IssuancePolicy::Once,
            freshness: Freshness::Unchecked,
            topics: TopicRule::alibaba(),
            cache_ttl: Duration::ZERO,
            secrets: SecretsAtRest::default(),
            actor: Actor::server(&Actor::this_node()).unwrap_or_else(|_| Actor::library()),
            templates_set: false,
        }
    }
}

/// A setting that [`ServerConfig::set`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No such setting.
    #[error("unknown setting")]
    Unknown,
    /// The value does not parse.
    #[error("expected {expected}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What it takes.
        expected: &'static str,
    },
    /// A topic template is not a valid MQTT filter.
    #[error(transparent)]
    Topic(#[from] ParseError),
}

impl ServerConfig {
    /// Applies one setting by name:
    ///
    /// | key | value |
    /// |---|---|
    /// | `issuance` | `once` or `redeliver-until-first-login` ([`IssuancePolicy`]) |
    /// | `max_skew_secs` | seconds: refuse logins whose timestamp is further from now |
    /// | `cache_ttl_secs` | seconds a device read is reused; 0 turns the cache off |
    /// | `topic_template` | an MQTT filter with `{pk}`/`{dn}` levels; the first replaces Alibaba's defaults, later ones add to it |
    /// | `master_key_file` | the file of the master key secrets are sealed under ([`SecretsAtRest`]) |
    /// | `previous_key_file` | a file of an older master key whose sealed secrets still open; repeatable |
    /// | `insecure_plaintext_secrets` | `true` or `false`: keep secrets in clear |
    /// | `actor` | who the event log names for this process's changes: `server:NODE` or `plugin:NODE` ([`Actor`]) |
    ///
    /// # Errors
    /// [`ConfigError`]: an unknown key, or a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let seconds = |key: &'static str| {
            value.parse::<u64>().map_err(|_| ConfigError::Invalid {
                key,
                expected: "a number of seconds",
            })
        };
        match key {
            "issuance" => {
                self.issuance = value.parse().map_err(|_| ConfigError::Invalid {
                    key: "issuance",
                    expected: "once or redeliver-until-first-login",
                })?;
            }
            "max_skew_secs" => {
                self.freshness = Freshness::Window {
                    max_skew_secs: seconds("max_skew_secs")?,
                };
            }
            "cache_ttl_secs" => self.cache_ttl = Duration::from_secs(seconds("cache_ttl_secs")?),
            "master_key_file" => self.secrets.master_key_file = Some(value.into()),
            "actor" => {
                self.actor = Actor::parse(value)
                    .ok()
                    .filter(|actor| actor.as_str().contains(':'))
                    .ok_or(ConfigError::Invalid {
                        key: "actor",
                        expected: "server:NODE or plugin:NODE (NODE: 1-64 of A-Za-z0-9._-)",
                    })?;
            }
            "previous_key_file" => self.secrets.previous_key_files.push(value.into()),
            "insecure_plaintext_secrets" => {
                self.secrets.insecure_plaintext =
                    value.parse().map_err(|_| ConfigError::Invalid {
                        key: "insecure_plaintext_secrets",
                        expected: "true or false",
                    })?;
            }
            "topic_template" => {
                let current = if self.templates_set {
                    self.topics.templates()
                } else {
                    &[][..]
                };
                let templates = current.iter().map(String::as_str).chain([value]);
                self.topics = TopicRule::new(templates)?;
                self.templates_set = true;
            }
            _ => return Err(ConfigError::Unknown),
        }
        Ok(())
    }

    /// The store at `url` ([`crate::store::open_with`] with [`ServerConfig::secrets`] and
    /// [`ServerConfig::actor`]); [`Services::new`] puts the cache in front of it.
    ///
    /// # Errors
    /// As [`crate::store::open`].
    pub async fn open_store(&self, url: &str) -> Result<Arc<dyn Store>, StoreError> {
        crate::store::open_with(url, &self.secrets, self.actor.clone()).await
    }

    /// `store` as the services use it: logins through a cache of [`ServerConfig::cache_ttl`]
    /// (none when zero), registrations and operators' changes reading the store itself (see
    /// [`CachedStore::with_fresh_reads`]).
    pub fn service_stores(&self, store: Arc<dyn Store>) -> ServiceStores {
        if self.cache_ttl.is_zero() {
            return ServiceStores {
                logins: store.clone(),
                decisions: store,
            };
        }
        let cached = CachedStore::new(store, self.cache_ttl);
        ServiceStores {
            decisions: Arc::new(cached.with_fresh_reads()),
            logins: Arc::new(cached),
        }
    }
}

/// A store as the services use it ([`ServerConfig::service_stores`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceStores {
    /// For logins: cached. It is the handle to follow the event log with
    /// ([`crate::store::follow`]), so that the cache drops what changed.
    pub logins: Arc<dyn Store>,
    /// For registrations and operators' changes: reading the store itself, dropping the
    /// cache's entries when writing.
    pub decisions: Arc<dyn Store>,
}

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

/// Where MQTT dynamic registration delivers a DeviceSecret (PROTOCOL.md §c.2).
pub const REGISTER_TOPIC: &str = "/ext/register";

/// Where a registration without pre-registration (`regnwl`) receives its ClientID and
/// DeviceToken (PROTOCOL.md §c).
pub const REGNWL_TOPIC: &str = "/ext/regnwl";

/// How many revocations a slow broker may lag behind before it must resynchronize (by ending
/// every session): room for a mass disable or reset read from the event log in one go.
const REVOCATION_BACKLOG: usize = 65_536;

/// The services behind the routes, shared by every request (and by MQTT listeners).
pub struct Services {
    /// Per-device logins.
    pub authenticator: Authenticator<Arc<dyn Store>>,
    /// Dynamic registration.
    pub registrar: Registrar<Arc<dyn Store>>,
    /// The topic rule.
    pub topics: TopicRule,
    /// Operators' changes to devices: through [`Services::apply_operator_event`] only, which
    /// also tells the brokers.
    admin: Admin<Arc<dyn Store>>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
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

/// Why a CONNECT was refused, as an MQTT CONNACK tells it (PROTOCOL.md §a.7).
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
                self.metrics.logins_ok.fetch_add(1, Ordering::Relaxed);
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
                self.metrics
                    .registrations_issued
                    .fetch_add(1, Ordering::Relaxed);
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
                self.metrics
                    .registrations_issued
                    .fetch_add(1, Ordering::Relaxed);
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

/// Counters and a latency histogram, rendered in Prometheus text format.
#[derive(Debug, Default)]
pub struct Metrics {
    logins_ok: AtomicU64,
    logins_refused: [AtomicU64; LOGIN_REASONS.len()],
    registrations_issued: AtomicU64,
    registrations_refused: [AtomicU64; RefusalCode::ALL.len()],
    hook_latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    hook_latency_sum_us: AtomicU64,
    store_failures: [AtomicU64; FailureKind::ALL.len()],
}

const LOGIN_REASONS: [&str; 5] = [
    "malformed",
    "unknown_device",
    "bad_credentials",
    "disabled",
    "outage",
];
const LATENCY_BUCKETS_US: [u64; 9] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

impl Metrics {
    fn count_login_refusal(&self, e: &AuthError) {
        let reason = match e {
            AuthError::Malformed(_) => 0,
            AuthError::UnknownDevice => 1,
            AuthError::Verify(_) => 2,
            AuthError::Disabled => 3,
            _ => 4,
        };
        self.logins_refused[reason].fetch_add(1, Ordering::Relaxed);
    }

    fn count_store_failure(&self, kind: Option<FailureKind>) {
        if let Some(i) = kind.and_then(|kind| FailureKind::ALL.iter().position(|k| *k == kind)) {
            self.store_failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_registration_refusal(&self, code: RefusalCode) {
        if let Some(i) = RefusalCode::ALL.iter().position(|c| *c == code) {
            self.registrations_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn observe_hook(&self, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&le| micros <= le)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.hook_latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.hook_latency_sum_us
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE iotauth_logins_total counter");
        let _ = writeln!(
            out,
            "iotauth_logins_total{{result=\"ok\"}} {}",
            get(&self.logins_ok)
        );
        for (reason, count) in LOGIN_REASONS.iter().zip(&self.logins_refused) {
            let _ = writeln!(
                out,
                "iotauth_logins_total{{result=\"refused\",reason=\"{reason}\"}} {}",
                get(count)
            );
        }
        let _ = writeln!(out, "# TYPE iotauth_registrations_total counter");
        let _ = writeln!(
            out,
            "iotauth_registrations_total{{result=\"issued\"}} {}",
            get(&self.registrations_issued)
        );
        for (code, count) in RefusalCode::ALL.iter().zip(&self.registrations_refused) {
            let _ = writeln!(
                out,
                "iotauth_registrations_total{{result=\"refused\",code=\"{}\"}} {}",
                code.code(),
                get(count)
            );
        }
        let _ = writeln!(out, "# TYPE iotauth_store_failures_total counter");
        for (kind, count) in FailureKind::ALL.iter().zip(&self.store_failures) {
            let _ = writeln!(
                out,
                "iotauth_store_failures_total{{kind=\"{kind}\"}} {}",
                get(count)
            );
        }
        let _ = writeln!(out, "# TYPE iotauth_hook_duration_seconds histogram");
        let mut cumulative = 0;
        for (le, count) in LATENCY_BUCKETS_US.iter().zip(&self.hook_latency) {
            cumulative += get(count);
            let _ = writeln!(
                out,
                "iotauth_hook_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *le as f64 / 1e6
            );
        }
        cumulative += self.hook_latency.last().map(get).unwrap_or_default();
        let _ = writeln!(
            out,
            "iotauth_hook_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "iotauth_hook_duration_seconds_sum {}",
            get(&self.hook_latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "iotauth_hook_duration_seconds_count {cumulative}");
        out
    }
}

/// The routes of the table above, over `services`.
pub fn router(services: Arc<Services>) -> Router {
    // Hooks answer every method a broker may be configured with, and an unreadable request
    // with a deny ([`UnreadBody`]); the other routes refuse it with its status.
    let any = MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT);
    let hooks = Router::new()
        .route("/hooks/emqx/authn", on(any, emqx_authn))
        .route("/hooks/emqx/authz", on(any, emqx_authz))
        .route("/hooks/vernemq", post(vernemq))
        .route("/hooks/go-auth/user", on(any, go_auth_user))
        .route("/hooks/go-auth/superuser", on(any, go_auth_superuser))
        .route("/hooks/go-auth/acl", on(any, go_auth_acl));
    Router::new()
        .route("/auth/register/device", post(register_device))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn(refuse_unread_body))
        .merge(hooks)
        .layer(DefaultBodyLimit::max(MAX_BODY_LEN))
        .with_state(services)
}

type Shared = State<Arc<Services>>;

async fn metrics(State(services): Shared) -> Response {
    let mut text = services.metrics.render();
    // Counted by the registrar, which switches the products off.
    let _ = writeln!(
        text,
        "# TYPE iotauth_registration_breaker_trips_total counter\n\
         iotauth_registration_breaker_trips_total {}",
        services.registrar.breaker_trips()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// 200 when the store answers a round trip within [`STORE_TIMEOUT`]; otherwise 503 and the
/// failure's kind (never its cause: this route needs no credentials). Not logged: a probe
/// repeats, and anyone may call it; for the same reason the answer is reused for
/// [`READINESS_INTERVAL`].
async fn readyz(State(services): Shared) -> Response {
    match services.readiness().await {
        None => "ok\n".into_response(),
        Some(kind) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store failed ({kind})\n"),
        )
            .into_response(),
    }
}

/// Alibaba's reply: HTTP 200 with a JSON `code` (one C SDK needs status 200 and a short body
/// with `Content-Length`, which axum sets for a complete body).
async fn register_device(State(services): Shared, body: axum::body::Bytes) -> Response {
    let outcome = services.registrar.register_form(&body).await;
    services.record_registration(&outcome);
    let reply = match outcome {
        Ok(issued) => issued.into_reply(),
        Err(e) => e.to_reply(),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_json_exposing_secret(),
    )
        .into_response()
}

/// A request body the HTTP listener did not read in full (too large, too slow, cut short):
/// the request reaches the router with an empty body and this extension, so that each route
/// answers in its own dialect — a hook with a deny (a status other than 200/204 would read as
/// "no opinion" to EMQX), the others with [`UnreadBody::status`] — and the listener closes the
/// connection after the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadBody {
    /// 413, 408 or 400.
    pub status: StatusCode,
    /// Why, for the reply and the log (one line, no line break).
    pub reason: &'static str,
}

/// Answers a request whose body was not read ([`UnreadBody`]) with its status, for the routes
/// that are not hooks.
async fn refuse_unread_body(request: axum::extract::Request, next: Next) -> Response {
    match request.extensions().get::<UnreadBody>() {
        Some(unread) => (unread.status, format!("{}\n", unread.reason)).into_response(),
        None => next.run(request).await,
    }
}

/// Refusals logged per second at most, in each kind (logins, registrations, hook requests,
/// the broker's topics): anyone who reaches a port can be refused, and one SUBSCRIBE may carry
/// thousands of filters. The metrics count every refusal.
pub const REFUSAL_LINES_PER_SECOND: u32 = 20;

/// A log line budget per one-second window, for one kind of refusal.
pub(crate) struct RateLimitedLog {
    /// What the lines are, for the line that says how many were left out.
    kind: &'static str,
    /// (window start, lines in it, lines suppressed since the last logged one).
    window: std::sync::Mutex<Option<(Instant, u32, u64)>>,
}

impl RateLimitedLog {
    pub(crate) const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            window: std::sync::Mutex::new(None),
        }
    }

    /// Whether a line may be logged now. The first line refused in a second says so at once;
    /// the next line logged says how many were left out.
    pub(crate) fn admit(&self) -> bool {
        let now = Instant::now();
        let (admitted, first_refused, suppressed) = {
            let mut window = self
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (start, lines, suppressed) = window.get_or_insert((now, 0, 0));
            if now.duration_since(*start) >= Duration::from_secs(1) {
                (*start, *lines) = (now, 0);
            }
            if *lines >= REFUSAL_LINES_PER_SECOND {
                let first_refused = *lines == REFUSAL_LINES_PER_SECOND;
                *lines += u32::from(first_refused);
                *suppressed += 1;
                (false, first_refused, 0)
            } else {
                *lines += 1;
                (true, false, std::mem::take(suppressed))
            }
        };
        if first_refused {
            tracing::warn!(
                kind = self.kind,
                "refusals over the rate limit: the rest of this second's are not logged"
            );
        }
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                kind = self.kind,
                "refusals not logged (over the rate limit)"
            );
        }
        admitted
    }
}

static LOGIN_REFUSALS: RateLimitedLog = RateLimitedLog::new("login");
static REGISTRATION_REFUSALS: RateLimitedLog = RateLimitedLog::new("registration");
static HOOK_REFUSALS: RateLimitedLog = RateLimitedLog::new("hook request");

/// What a hook decides.
enum Verdict {
    Allow(Option<DeviceIdentity>),
    Deny,
    /// An outage: the broker should decide (or ask its next source).
    Undecided,
}

impl Verdict {
    fn all(verdicts: impl IntoIterator<Item = Self>) -> Self {
        let mut all = Self::Allow(None);
        for verdict in verdicts {
            match verdict {
                Self::Deny => return Self::Deny,
                Self::Undecided => all = Self::Undecided,
                Self::Allow(_) => {}
            }
        }
        all
    }
}

/// Why a hook request could not be understood: answered as a deny in the broker's dialect.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum Unreadable {
    #[error("the request body was not read: {0}")]
    Body(&'static str),
    #[error("the parameters are neither a JSON object nor a form")]
    Encoding,
    #[error("parameter {0} appears more than once")]
    Duplicate(&'static str),
    #[error("parameter {0} has the wrong type")]
    Type(&'static str),
    #[error("parameter {0} has a value the hook does not know")]
    Value(&'static str),
}

/// The parameters of a hook request, whichever way its broker sends them: the query string
/// (EMQX's GET; any broker's configured URL), and a JSON object or a form body, told apart by
/// the body's first byte rather than the content type (EMQX 5.0–5.6 sends JSON labelled as a
/// form). A JSON `null` (VerneMQ's absent user name and password) is an absent parameter.
/// Never rejects: a request that cannot be understood is a deny, decided by the hook.
struct HookParams(Result<serde_json::Map<String, Value>, Unreadable>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for HookParams {
    type Rejection = std::convert::Infallible;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        if let Some(unread) = request.extensions().get::<UnreadBody>() {
            return Ok(Self(Err(Unreadable::Body(unread.reason))));
        }
        let query = request.uri().query().unwrap_or_default().to_owned();
        let body = axum::body::Bytes::from_request(request, state).await;
        Ok(Self(match body {
            Ok(body) => Self::parse(&query, &body),
            Err(_) => Err(Unreadable::Body("over the size limit or cut short")),
        }))
    }
}

/// The parameter names the hooks read: a repeated one is refused by name (a value is never
/// echoed).
const HOOK_PARAMETERS: [&str; 11] = [
    "clientid",
    "client_id",
    "username",
    "password",
    "topic",
    "topics",
    "action",
    "access",
    "acc",
    "response_mode",
    "mountpoint",
];

fn parameter_name(key: &str) -> &'static str {
    HOOK_PARAMETERS
        .iter()
        .find(|name| **name == key)
        .copied()
        .unwrap_or("(another)")
}

impl HookParams {
    fn parse(query: &str, body: &[u8]) -> Result<serde_json::Map<String, Value>, Unreadable> {
        let mut params = serde_json::Map::new();
        let mut add = |key: String, value: Value| {
            if value.is_null() {
                return Ok(());
            }
            match params.entry(key) {
                serde_json::map::Entry::Occupied(taken) => {
                    Err(Unreadable::Duplicate(parameter_name(taken.key())))
                }
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                    Ok(())
                }
            }
        };
        for (key, value) in form_pairs(query.as_bytes())? {
            add(key, Value::String(value))?;
        }
        if body.trim_ascii_start().starts_with(b"{") {
            let object: JsonObject =
                serde_json::from_slice(body).map_err(|_| Unreadable::Encoding)?;
            if let Some(repeated) = object.repeated {
                return Err(Unreadable::Duplicate(repeated));
            }
            for (key, value) in object.members {
                add(key, value)?;
            }
        } else {
            for (key, value) in form_pairs(body)? {
                add(key, Value::String(value))?;
            }
        }
        Ok(params)
    }
}

/// A JSON object as its members, and the first key it repeats, if any (`serde_json::Map`
/// keeps the last of repeated keys silently).
struct JsonObject {
    members: serde_json::Map<String, Value>,
    repeated: Option<&'static str>,
}

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                let mut object = JsonObject {
                    members: serde_json::Map::new(),
                    repeated: None,
                };
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if object.repeated.is_none() && object.members.contains_key(&key) {
                        object.repeated = Some(parameter_name(&key));
                    }
                    object.members.insert(key, value);
                }
                Ok(object)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The pairs of a form (`application/x-www-form-urlencoded`), decoded as strictly as a
/// registration form.
fn form_pairs(form: &[u8]) -> Result<Vec<(String, String)>, Unreadable> {
    let form = form.trim_ascii();
    if form.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs = Vec::new();
    for pair in form.split(|b| *b == b'&').filter(|pair| !pair.is_empty()) {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let decode = |part| {
            percent_decode(part, "form")
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| Unreadable::Encoding)
        };
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

/// A parameter as text: absent (or null) is empty; a number or a boolean is its JSON text
/// (EMQX sends every value as a string, go-auth's `acc` and VerneMQ's `qos` are numbers).
fn param<'a>(
    params: &'a serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<std::borrow::Cow<'a, str>, Unreadable> {
    match params.get(name) {
        None => Ok("".into()),
        Some(Value::String(text)) => Ok(text.as_str().into()),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => Ok(value.to_string().into()),
        Some(_) => Err(Unreadable::Type(name)),
    }
}

/// What a topic request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Publish,
    Subscribe,
    PublishAndSubscribe,
}

impl Access {
    /// EMQX 5's `action` (`publish`, `subscribe`), else its v4-compatible `access` (1
    /// subscribe, 2 publish).
    fn of_emqx(params: &serde_json::Map<String, Value>) -> Result<Self, Unreadable> {
        match (&*param(params, "action")?, &*param(params, "access")?) {
            ("publish", _) | ("", "2") => Ok(Self::Publish),
            ("subscribe", _) | ("", "1") => Ok(Self::Subscribe),
            ("", "") => Err(Unreadable::Value("action")),
            ("", _) => Err(Unreadable::Value("access")),
            _ => Err(Unreadable::Value("action")),
        }
    }

    /// mosquitto-go-auth's `acc`: 1 read (receive on a subscription), 4 subscribe, 2 write
    /// (publish), 3 read and write.
    fn of_go_auth(params: &serde_json::Map<String, Value>) -> Result<Self, Unreadable> {
        match &*param(params, "acc")? {
            "1" | "4" => Ok(Self::Subscribe),
            "2" => Ok(Self::Publish),
            "3" => Ok(Self::PublishAndSubscribe),
            _ => Err(Unreadable::Value("acc")),
        }
    }
}

fn login_verdict_of(
    services: &Services,
    params: &Result<serde_json::Map<String, Value>, Unreadable>,
    client_id_name: &'static str,
) -> impl Future<Output = Verdict> {
    let fields = params.as_ref().map_err(|e| *e).and_then(|params| {
        Ok((
            param(params, client_id_name)?.into_owned(),
            param(params, "username")?.into_owned(),
            Zeroizing::new(param(params, "password")?.into_owned()),
        ))
    });
    async move {
        match fields {
            Ok((client_id, username, password)) => {
                login_verdict(services, &client_id, &username, &password).await
            }
            Err(e) => unreadable(e),
        }
    }
}

fn unreadable(e: Unreadable) -> Verdict {
    if HOOK_REFUSALS.admit() {
        tracing::warn!(reason = %e, "hook request not understood: denied");
    }
    Verdict::Deny
}

async fn login_verdict(
    services: &Services,
    client_id: &str,
    username: &str,
    password: &str,
) -> Verdict {
    match services.login(client_id, username, password).await {
        Ok(who) => Verdict::Allow(Some(who.into_inner())),
        Err(e) if e.is_outage() => Verdict::Undecided,
        Err(_) => Verdict::Deny,
    }
}

/// The ACL verdict for the device a user name names (the broker authenticated it already).
fn topic_verdict(services: &Services, username: &str, topic: &str, access: Access) -> Verdict {
    let Ok((dn, pk)) = parse_username(username) else {
        if HOOK_REFUSALS.admit() {
            tracing::warn!("topic refused: the user name is not a device's");
        }
        return Verdict::Deny;
    };
    let who = DeviceIdentity::new(pk, dn);
    let (publish, subscribe) = match access {
        Access::Publish => (true, false),
        Access::Subscribe => (false, true),
        Access::PublishAndSubscribe => (true, true),
    };
    let allowed = (!publish || services.topics.may_publish(&who, topic))
        && (!subscribe || services.topics.may_subscribe(&who, topic));
    if allowed {
        Verdict::Allow(None)
    } else {
        if HOOK_REFUSALS.admit() {
            tracing::warn!(product_key = %pk, device_name = %dn, ?access, "topic refused");
        }
        Verdict::Deny
    }
}

/// The topic verdict of a request's `username` and `topic`.
fn topic_verdict_of(
    services: &Services,
    params: &serde_json::Map<String, Value>,
    access: Access,
) -> Result<Verdict, Unreadable> {
    Ok(topic_verdict(
        services,
        &param(params, "username")?,
        &param(params, "topic")?,
        access,
    ))
}

/// EMQX 5's HTTP authenticator: POST (JSON or form) or GET (query). 200 with `allow` (and the
/// device as `client_attrs`), `deny`, or `ignore` for an outage.
async fn emqx_authn(State(services): Shared, HookParams(params): HookParams) -> Json<Value> {
    let started = Instant::now();
    let verdict = login_verdict_of(&services, &params, "clientid").await;
    services.metrics.observe_hook(started);
    Json(match verdict {
        Verdict::Allow(who) => {
            let attrs =
                who.map(|w| json!({"productKey": w.product_key(), "deviceName": w.device_name()}));
            json!({"result": "allow", "is_superuser": false, "client_attrs": attrs.unwrap_or_default()})
        }
        Verdict::Deny => json!({"result": "deny"}),
        Verdict::Undecided => json!({"result": "ignore"}),
    })
}

/// EMQX 5's HTTP authorizer: POST (JSON or form, also JSON labelled as a form) or GET
/// (query). Always 200 with `allow` or `deny`: any other status, or `ignore`, would let EMQX
/// fall through to `no_match`, which allows by default.
async fn emqx_authz(State(services): Shared, HookParams(params): HookParams) -> Json<Value> {
    let started = Instant::now();
    let verdict = params
        .and_then(|params| topic_verdict_of(&services, &params, Access::of_emqx(&params)?))
        .unwrap_or_else(unreadable);
    services.metrics.observe_hook(started);
    Json(json!({"result": if matches!(verdict, Verdict::Allow(_)) { "allow" } else { "deny" }}))
}

/// VerneMQ's webhooks (`vernemq-hook` header; JSON POST). Always 200 with `ok`, an error (a
/// deny), or `next` for an outage: VerneMQ reads any other status, and a missing `result`, as
/// a failure.
async fn vernemq(
    State(services): Shared,
    headers: HeaderMap,
    HookParams(params): HookParams,
) -> Json<Value> {
    let started = Instant::now();
    let hook = headers
        .get("vernemq-hook")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let verdict = match hook {
        "auth_on_register" | "auth_on_register_m5" => {
            login_verdict_of(&services, &params, "client_id").await
        }
        "auth_on_publish" | "auth_on_publish_m5" => params
            .and_then(|params| topic_verdict_of(&services, &params, Access::Publish))
            .unwrap_or_else(unreadable),
        "auth_on_subscribe" | "auth_on_subscribe_m5" => params
            .and_then(|params| vernemq_subscribe(&services, &params))
            .unwrap_or_else(unreadable),
        _ => unreadable(Unreadable::Value("vernemq-hook")),
    };
    services.metrics.observe_hook(started);
    Json(match verdict {
        Verdict::Allow(_) => json!({"result": "ok"}),
        Verdict::Deny => json!({"result": {"error": "not_allowed"}}),
        Verdict::Undecided => json!({"result": "next"}),
    })
}

/// Every topic of a subscribe (`topics: [{"topic": …, "qos": …}]`) must be allowed.
fn vernemq_subscribe(
    services: &Services,
    params: &serde_json::Map<String, Value>,
) -> Result<Verdict, Unreadable> {
    let username = param(params, "username")?;
    let Some(Value::Array(topics)) = params.get("topics") else {
        return Err(Unreadable::Type("topics"));
    };
    if topics.is_empty() {
        return Err(Unreadable::Value("topics"));
    }
    let verdicts = topics
        .iter()
        .map(|entry| match entry.get("topic") {
            Some(Value::String(topic)) => {
                Ok(topic_verdict(services, &username, topic, Access::Subscribe))
            }
            _ => Err(Unreadable::Type("topics")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verdict::all(verdicts))
}

/// mosquitto-go-auth's reply in each of its `http_response_mode`s, which it cannot tell us
/// except through the URI: `?response_mode=json` for `json`; `status` and `text` (the default)
/// share one reply. Allowed: 200 with the body `ok` (text mode wants exactly that) or
/// `{"ok":true}`; denied: 403 (go-auth denies any 4xx cleanly); an outage: 503 (an error:
/// go-auth retries, then lets mosquitto decide).
fn go_auth_reply(verdict: Verdict, query: Option<&str>) -> Response {
    // Read from the query alone: a request whose body cannot be read still asked for JSON.
    let json_mode = form_pairs(query.unwrap_or_default().as_bytes()).is_ok_and(|pairs| {
        pairs
            .iter()
            .any(|(k, v)| k == "response_mode" && v == "json")
    });
    let (status, text, ok) = match verdict {
        Verdict::Allow(_) => (StatusCode::OK, "ok", true),
        Verdict::Deny => (StatusCode::FORBIDDEN, "denied", false),
        Verdict::Undecided => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", false),
    };
    if json_mode {
        let body = if ok {
            json!({"ok": true})
        } else {
            json!({"ok": false, "error": text})
        };
        (status, Json(body)).into_response()
    } else {
        (status, text).into_response()
    }
}

/// go-auth's user check: JSON (POST, PUT or GET) or form (POST).
async fn go_auth_user(
    State(services): Shared,
    RawQuery(query): RawQuery,
    HookParams(params): HookParams,
) -> Response {
    let started = Instant::now();
    let verdict = login_verdict_of(&services, &params, "clientid").await;
    services.metrics.observe_hook(started);
    go_auth_reply(verdict, query.as_deref())
}

/// Devices are never superusers.
async fn go_auth_superuser(RawQuery(query): RawQuery) -> Response {
    go_auth_reply(Verdict::Deny, query.as_deref())
}

/// go-auth's ACL check (`acc`: 1 read, 2 write, 3 read and write, 4 subscribe).
async fn go_auth_acl(
    State(services): Shared,
    RawQuery(query): RawQuery,
    HookParams(params): HookParams,
) -> Response {
    let started = Instant::now();
    let verdict = params
        .as_ref()
        .map_err(|e| *e)
        .and_then(|params| topic_verdict_of(&services, params, Access::of_go_auth(params)?))
        .unwrap_or_else(unreadable);
    services.metrics.observe_hook(started);
    go_auth_reply(verdict, query.as_deref())
}
