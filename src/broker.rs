//! The embedded MQTT broker (feature `broker`): the broker library [rmqtt] with iotauth
//! deciding every CONNECT, SUBSCRIBE and PUBLISH through the same [`Services`] as the HTTP
//! hooks, so that no rule lives in two places.
//!
//! What a device meets:
//!
//! * **Logins** are verified by [`Services::admit`]; a refusal is a CONNACK with a code
//!   (PROTOCOL.md §a.7): 4 / 0x86 for bad credentials, 5 / 0x87 for a disabled device, a
//!   refused registration, a client id held by another device, or a store outage (rmqtt 0.24
//!   lets an authentication hook answer only "bad credentials" or "not authorized", so the
//!   outage cannot be told apart as code 3; the log says which).
//! * **Dynamic registration on the same port**, as on Alibaba's endpoint: a CONNECT with
//!   `authType=register` is checked, accepted, sent its DeviceSecret on `/ext/register`
//!   (to that connection alone), and closed [`REGISTRATION_LINGER`] later. It may subscribe
//!   to `/ext/register` alone and publish nothing. The secret is issued only once the connection is established, so
//!   a connection refused for another reason never consumes the one issue.
//! * **The topic rule** ([`TopicRule`]) on every SUBSCRIBE (a refused filter gets SUBACK
//!   failure, 0x80 / 0x87), every PUBLISH (dropped in 3.1.1, PUBACK 0x87 in 5) and the will
//!   message (a CONNECT whose will topic the device may not publish to is "not authorized").
//!   Retained messages are not kept (as on Alibaba's platform); a retained PUBLISH is a
//!   PUBLISH. Each refusal is logged once with device and topic, never the payload.
//! * **Sessions belong to devices.** One live connection per device: a new good login closes
//!   the device's older connection whatever its client id (Link SDK 4.x changes `_conn=` on
//!   every connect). The broker keys sessions by MQTT client id, so a client id whose session
//!   (live, or kept for a non-clean session) belongs to one device is refused to every other
//!   device: no device can attach to or take over another's session.
//! * **Limits**: keep-alive 30–1200 s by default (Alibaba's bounds; outside them an MQTT
//!   3.1.1 CONNECT is refused with code 3 and an MQTT 5 one is told the server's value), a
//!   10 s limit on each TLS, WebSocket and CONNECT handshake, run off the accept loop, a cap on
//!   sessions, client ids of at most [`MAX_CLIENT_ID_LEN`] bytes, packets of at most 256 KiB.
//!   Accept errors (EMFILE) are retried after a 1 s pause, logged once per pause.
//! * MQTT 3.1, 3.1.1 and 5 on every listener; TCP, TLS (rustls), WebSocket and WebSocket over
//!   TLS listeners.
//! * **Revocation on this node**: a device disabled, reset or deleted through
//!   [`Services::apply_operator_event`] is disconnected at once.
//!
//! [rmqtt]: https://docs.rs/rmqtt

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::codec::types::{Publish as PublishPacket, QoS};
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::{ServerContext, ServerContextBuilder};
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::Session;
use rmqtt::types::{
    AuthResult, ConnectInfo, From as Origin, Id, LastWill, Message, Publish, PublishAclResult,
    Reason, SubscribeAclResult,
};

use crate::mqtt::MAX_CLIENT_ID_LEN;
use crate::server::{Admission, ConnectRefusal, REGISTER_TOPIC, Services};
use crate::verified::DeviceIdentity;

#[cfg(doc)]
use crate::acl::TopicRule;

/// How long a registration connection stays open after its secret was queued, so that the
/// device reads it before the close.
pub const REGISTRATION_LINGER: Duration = Duration::from_millis(500);

/// Where a broker listens and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// The listeners; at least one.
    pub listeners: Vec<ListenerConfig>,
    /// TLS for every listener: PEM certificate chain and private key (rustls).
    pub tls: Option<TlsFiles>,
    /// Keep-alive values a client may ask for, in seconds (PROTOCOL.md §a.1: 30–1200).
    pub keepalive_secs: RangeInclusive<u16>,
    /// The time a client has for its TLS and WebSocket handshakes and for its CONNECT.
    pub handshake_timeout: Duration,
    /// Sessions this broker holds at most (live and kept), over all listeners.
    pub max_sessions: usize,
}

impl Default for BrokerConfig {
    /// No listener yet; keep-alive 30–1200 s, 10 s handshakes, 10,000 sessions.
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            tls: None,
            keepalive_secs: 30..=1200,
            handshake_timeout: Duration::from_secs(10),
            max_sessions: 10_000,
        }
    }
}

impl BrokerConfig {
    /// One plain MQTT listener on `address`, and the defaults.
    pub fn new(address: SocketAddr) -> Self {
        Self::default().listener(address, Transport::Mqtt)
    }

    /// Adds a listener.
    #[must_use]
    pub fn listener(mut self, address: SocketAddr, transport: Transport) -> Self {
        self.listeners.push(ListenerConfig { address, transport });
        self
    }

    /// Serves every listener over TLS.
    #[must_use]
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }
}

/// A listener of [`BrokerConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The address to bind (port 0: any free port, see [`Broker::local_addrs`]).
    pub address: SocketAddr,
    /// What the listener speaks.
    pub transport: Transport,
}

/// A listener's transport; with [`BrokerConfig::tls`], both run over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// MQTT over TCP (`mqtt://`, or `mqtts://` with TLS).
    Mqtt,
    /// MQTT over WebSocket (`ws://`, or `wss://` with TLS), the SDKs' browser and
    /// mini-program builds.
    WebSocket,
}

/// PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// A broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration has no listener.
    #[error("the broker needs at least one listener")]
    NoListener,
    /// A listener could not be bound or set up (address taken, unreadable TLS files).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The listener's address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A running embedded broker. Dropping it does not stop it; it runs as long as the tokio
/// runtime it was started on.
pub struct Broker {
    local_addrs: Vec<(Transport, SocketAddr)>,
    sessions: Arc<DeviceSessions>,
    scx: ServerContext,
}

impl Broker {
    /// Starts the broker on the current tokio runtime (multi-threaded), every decision taken by
    /// `services`, and disconnects devices that [`Services::revocations`] names.
    ///
    /// # Errors
    /// [`BrokerError`] when a listener cannot be set up.
    pub async fn start(
        config: &BrokerConfig,
        services: Arc<Services>,
    ) -> Result<Self, BrokerError> {
        let broker = Self::launch(config, Some(services.clone())).await?;
        let (sessions, scx) = (broker.sessions.clone(), broker.scx.clone());
        let mut revocations = services.revocations();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match revocations.recv().await {
                    Ok(device) => {
                        if let Some(id) = sessions.live(&device) {
                            tracing::info!(product_key = %device.product_key(), device_name = %device.device_name(), "revoked: disconnecting");
                            close(&scx, id, Reason::ConnectKicked(true)).await;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::error!(missed, "revocations missed: disconnecting every device");
                        for id in sessions.all_live() {
                            close(&scx, id, Reason::ConnectKicked(true)).await;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(broker)
    }

    /// The same broker with **no authentication and no topic rule**: every CONNECT is accepted.
    /// Only for measuring what authentication costs (the connect-rate benchmark's baseline).
    ///
    /// # Errors
    /// As [`Broker::start`].
    #[doc(hidden)]
    pub async fn start_without_authentication(config: &BrokerConfig) -> Result<Self, BrokerError> {
        Self::launch(config, None).await
    }

    async fn launch(
        config: &BrokerConfig,
        services: Option<Arc<Services>>,
    ) -> Result<Self, BrokerError> {
        if config.listeners.is_empty() {
            return Err(BrokerError::NoListener);
        }
        let scx = ServerContextBuilder::new()
            .mqtt_max_sessions(isize::try_from(config.max_sessions).unwrap_or(isize::MAX))
            .build()
            .await;
        let sessions = Arc::new(DeviceSessions::default());
        if let Some(services) = services.clone() {
            let hooks = Hooks {
                services,
                sessions: sessions.clone(),
                scx: scx.clone(),
            };
            let register = scx.extends.hook_mgr().register();
            for typ in [
                Type::ClientAuthenticate,
                Type::ClientConnected,
                Type::ClientDisconnected,
                Type::SessionTerminated,
                Type::ClientSubscribeCheckAcl,
                Type::MessagePublishCheckAcl,
            ] {
                register.add(typ, Box::new(hooks.clone())).await;
            }
            register.start().await;
        }
        let mut server = MqttServer::new(scx.clone());
        let mut local_addrs = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let bound = bind(config, listener, services.is_some()).map_err(|source| {
                BrokerError::Listen {
                    address: listener.address,
                    source: source.into(),
                }
            })?;
            let local = bound.local_addr().map_err(|source| BrokerError::Listen {
                address: listener.address,
                source: source.into(),
            })?;
            local_addrs.push((listener.transport, local));
            let id = u16::try_from(index + 1).unwrap_or(u16::MAX);
            server = server.listener_by_id(bound, id);
        }
        tokio::spawn(server.build().run());
        Ok(Self {
            local_addrs,
            sessions,
            scx,
        })
    }

    /// The bound addresses, in the order of [`BrokerConfig::listeners`].
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.local_addrs
    }

    /// Closes `device`'s connection, if it has one here; whether it had.
    pub async fn disconnect(&self, device: &DeviceIdentity) -> bool {
        match self.sessions.live(device) {
            Some(id) => {
                close(&self.scx, id, Reason::ConnectKicked(true)).await;
                true
            }
            None => false,
        }
    }
}

fn bind(
    config: &BrokerConfig,
    listener: &ListenerConfig,
    authenticated: bool,
) -> rmqtt::Result<rmqtt::net::Listener> {
    let tls = config.tls.as_ref();
    let builder = Builder::new()
        .name(match listener.transport {
            Transport::Mqtt => "iotauth-mqtt",
            Transport::WebSocket => "iotauth-ws",
        })
        .laddr(listener.address)
        .nodelay(true)
        .allow_anonymous(!authenticated)
        .min_keepalive(*config.keepalive_secs.start())
        .max_keepalive(*config.keepalive_secs.end())
        .allow_zero_keepalive(false)
        .handshake_timeout(config.handshake_timeout)
        .max_clientid_len(MAX_CLIENT_ID_LEN)
        .max_packet_size(256 * 1024)
        .tls_cert(tls.map(|files| files.cert.display().to_string()))
        .tls_key(tls.map(|files| files.key.display().to_string()))
        .bind()?;
    match (listener.transport, tls.is_some()) {
        (Transport::Mqtt, false) => builder.tcp(),
        (Transport::Mqtt, true) => builder.tls(),
        (Transport::WebSocket, false) => builder.ws(),
        (Transport::WebSocket, true) => builder.wss(),
    }
}

/// Ends the connection `id` names (its session stays if it was not clean).
async fn close(scx: &ServerContext, id: Id, reason: Reason) {
    let entry = scx.extends.shared().await.entry(id);
    if let Some(tx) = entry.tx() {
        let _ = tx.unbounded_send(Message::Closed(reason));
    }
}

/// Which device owns each session and which connection is each device's live one.
#[derive(Default)]
struct DeviceSessions {
    inner: Mutex<SessionTable>,
}

#[derive(Default)]
struct SessionTable {
    /// MQTT client id → the device whose session (live or kept) it names.
    owners: HashMap<String, DeviceIdentity>,
    /// Device → its live connection.
    live: HashMap<DeviceIdentity, Id>,
}

impl DeviceSessions {
    fn table(&self) -> MutexGuard<'_, SessionTable> {
        // A panic while holding the lock leaves the maps consistent (single inserts/removes).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `client_id` for `device`; false when another device's session holds it.
    fn claim(&self, client_id: &str, device: DeviceIdentity) -> bool {
        match self.table().owners.entry(client_id.to_owned()) {
            Entry::Occupied(owner) => *owner.get() == device,
            Entry::Vacant(slot) => {
                slot.insert(device);
                true
            }
        }
    }

    /// Records `id` as `device`'s live connection; the older one, if under another client id.
    fn connected(&self, device: DeviceIdentity, id: Id) -> Option<Id> {
        let mut table = self.table();
        table.owners.insert(id.client_id.to_string(), device);
        table
            .live
            .insert(device, id.clone())
            .filter(|older| older.client_id != id.client_id)
    }

    fn disconnected(&self, device: DeviceIdentity, id: &Id) {
        let mut table = self.table();
        if table.live.get(&device).is_some_and(|live| live == id) {
            table.live.remove(&device);
        }
    }

    /// The session `client_id` names is gone: the client id is free again.
    fn terminated(&self, device: DeviceIdentity, client_id: &str) {
        let mut table = self.table();
        if table.owners.get(client_id) == Some(&device) {
            table.owners.remove(client_id);
        }
    }

    fn live(&self, device: &DeviceIdentity) -> Option<Id> {
        self.table().live.get(device).cloned()
    }

    fn all_live(&self) -> Vec<Id> {
        self.table().live.values().cloned().collect()
    }
}

/// What a session's connection was admitted as, kept in the session.
const ADMISSION: &str = "iotauth.admission";

/// The hooks, one clone per hook type (every field is shared).
#[derive(Clone)]
struct Hooks {
    services: Arc<Services>,
    sessions: Arc<DeviceSessions>,
    scx: ServerContext,
}

#[async_trait]
impl Handler for Hooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => (
                false,
                Some(HookResult::AuthResult(self.authenticate(info).await)),
            ),
            Parameter::ClientConnected(session) => {
                self.connected(session).await;
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                if let Some(admission) = admission(session).await {
                    self.sessions.disconnected(admission.device(), &session.id);
                }
                (true, acc)
            }
            Parameter::SessionTerminated(session, _) => {
                if let Some(admission) = admission(session).await {
                    self.sessions
                        .terminated(admission.device(), &session.id.client_id);
                }
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let filter: &str = &subscribe.topic_filter;
                let allowed = admission(session)
                    .await
                    .is_some_and(|admission| self.services.may_subscribe(&admission, filter));
                let result = if allowed {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    refused_topic(session, "subscribe", filter).await;
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let topic: &str = &publish.topic;
                let allowed = admission(session)
                    .await
                    .is_some_and(|admission| self.services.may_publish(&admission, topic));
                let result = if allowed {
                    PublishAclResult::allow()
                } else {
                    refused_topic(session, "publish", topic).await;
                    PublishAclResult::rejected(false, None)
                };
                (false, Some(HookResult::PublishAclResult(result)))
            }
            _ => (true, acc),
        }
    }
}

impl Hooks {
    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let client_id: &str = &info.id().client_id;
        let username = info.username().map_or("", |name| name);
        let Some(password) = info.password().and_then(|p| std::str::from_utf8(p).ok()) else {
            tracing::warn!("login refused: missing or non-UTF-8 password");
            return AuthResult::BadUsernameOrPassword;
        };
        let admission = match self.services.admit(client_id, username, password).await {
            Ok(admission) => admission,
            Err(ConnectRefusal::BadCredentials) => return AuthResult::BadUsernameOrPassword,
            Err(_) => return AuthResult::NotAuthorized,
        };
        let device = admission.device();
        if let Some(will) = info.last_will() {
            let topic: &str = match &will {
                LastWill::V3(will) => &will.topic,
                LastWill::V5(will) => &will.topic,
            };
            let allowed = self.services.may_publish(&admission, topic);
            if !allowed {
                tracing::warn!(product_key = %device.product_key(), device_name = %device.device_name(), topic = %capped(topic), "CONNECT refused: will topic not allowed");
                return AuthResult::NotAuthorized;
            }
        }
        if !self.sessions.claim(client_id, device) {
            tracing::warn!(product_key = %device.product_key(), device_name = %device.device_name(), "CONNECT refused: the client id names another device's session");
            return AuthResult::NotAuthorized;
        }
        AuthResult::Allow(false, None)
    }

    async fn connected(&self, session: &Session) {
        let Ok(info) = session.connect_info().await else {
            return;
        };
        let client_id: &str = &info.id().client_id;
        let username = info.username().map_or("", |name| name);
        let password = info
            .password()
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or_default();
        // The CONNECT was admitted moments ago; classify it again without a store call.
        let registration = crate::mqtt::ConnectRequest::parse(client_id, username, password)
            .map(|request| (request.kind(), request.claimed_identity()));
        let Ok((kind, device)) = registration else {
            return;
        };
        let admission = match kind {
            crate::mqtt::ConnectKind::Register => Admission::Registration(device),
            _ => Admission::Login(device),
        };
        session
            .extra_attrs
            .write()
            .await
            .insert(ADMISSION.into(), admission);
        if let Some(older) = self.sessions.connected(device, session.id.clone()) {
            tracing::info!(product_key = %device.product_key(), device_name = %device.device_name(), "a newer login of the device: closing the older connection");
            close(&self.scx, older, Reason::ConnectKicked(false)).await;
        }
        if let Admission::Registration(_) = admission {
            let services = self.services.clone();
            let (scx, id) = (self.scx.clone(), session.id.clone());
            let (client_id, username, password) = (
                client_id.to_owned(),
                username.to_owned(),
                zeroize::Zeroizing::new(password.to_owned()),
            );
            tokio::spawn(async move {
                let issued = services
                    .register_connect(&client_id, &username, &password)
                    .await;
                if let Ok(issued) = issued {
                    let packet = PublishPacket {
                        dup: false,
                        retain: false,
                        qos: QoS::AtMostOnce,
                        topic: REGISTER_TOPIC.into(),
                        packet_id: None,
                        payload: issued.to_ext_register_payload().into(),
                        properties: None,
                    };
                    let entry = scx.extends.shared().await.entry(id.clone());
                    if let Some(tx) = entry.tx() {
                        let message = Message::Forward(
                            Origin::from_system(id.clone()),
                            Publish::from(packet),
                        );
                        let _ = tx.unbounded_send(message);
                    }
                    tokio::time::sleep(REGISTRATION_LINGER).await;
                }
                close(&scx, id, Reason::from_static("registration served")).await;
            });
        }
    }
}

async fn admission(session: &Session) -> Option<Admission> {
    session
        .extra_attrs
        .read()
        .await
        .get::<Admission>(ADMISSION)
        .copied()
}

async fn refused_topic(session: &Session, action: &'static str, topic: &str) {
    match admission(session).await {
        Some(admission) => {
            let device = admission.device();
            tracing::warn!(product_key = %device.product_key(), device_name = %device.device_name(), action, topic = %capped(topic), "topic refused");
        }
        None => tracing::warn!(action, topic = %capped(topic), "topic refused"),
    }
}

/// A network-supplied string for a log line: at most 128 bytes, then an ellipsis.
fn capped(text: &str) -> &str {
    const MAX: usize = 128;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
