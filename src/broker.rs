//! The embedded MQTT broker (feature `broker`): the broker library [rmqtt] with iotauth
//! deciding every CONNECT, SUBSCRIBE and PUBLISH through the same [`Services`] as the HTTP
//! hooks, so that no rule lives in two places.
//!
//! What a device meets:
//!
//! * **Logins** are verified by [`Services::admit`]; a refusal is a CONNACK with a code
//!   (see the [compatibility notes](crate::manual::compatibility)): 4 / 0x86 for bad credentials, 5 / 0x87 for a disabled device, a
//!   refused registration, a client id held by another device, or a store outage (rmqtt 0.24
//!   lets an authentication hook answer only "bad credentials" or "not authorized", so the
//!   outage cannot be told apart as code 3; the log says which).
//! * **Registration without pre-registration** (`authType=regnwl`, where the product allows
//!   it) the same way: checked at CONNECT, then the device created within the product's quota
//!   and a new ClientID and DeviceToken sent on `/ext/regnwl` to that connection alone before
//!   it closes; `connwl` logins present them.
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
//!   sessions, client ids of at most [`ConnectRequest::MAX_CLIENT_ID_LEN`] bytes, packets of at most 256 KiB.
//!   On a plain listener, accept errors (EMFILE) are retried after a 1 s pause, logged once per
//!   pause; a TLS listener holds at most [`BrokerConfig::max_sessions`] connections and backs
//!   off and logs as [`crate::listener`] says.
//! * **TLS** ([`BrokerConfig::tls`]) is OpenSSL's, terminated in this process, which relays
//!   the plain stream to rmqtt on a loopback port behind a PROXY protocol header (rmqtt's own
//!   TLS is rustls, without the suites Alibaba's C SDKs need). Any local process can connect to
//!   that port: it reaches the same authentication without TLS, may claim any source address
//!   in the header (used in logs only), and can delay the TLS listeners' hand-over by 1 s per
//!   silent connection.
//! * MQTT 3.1, 3.1.1 and 5 on every listener; TCP, TLS (OpenSSL), WebSocket and WebSocket over
//!   TLS listeners.
//! * **Revocation on this node**: a device disabled, reset or deleted through
//!   [`Services::apply_operator_event`] is disconnected at once.
//!
//! [rmqtt]: https://docs.rs/rmqtt

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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

pub use crate::http::REFUSAL_LINES_PER_SECOND;
use zeroize::Zeroizing;

use crate::http::{
    Admission, ConnectRefusal, REGISTER_TOPIC, REGNWL_TOPIC, RateLimitedLog, Services,
};
pub use crate::listener::TlsFiles;
use crate::listener::{Gate, LogGate, SEND_TIMEOUT, TlsAcceptor};
use crate::mqtt::ConnectRequest;
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
    /// TLS for every listener (OpenSSL, see [`crate::listener`]): PEM certificate chain,
    /// private key, and whether the legacy suites of Alibaba's C SDKs are offered.
    pub tls: Option<TlsFiles>,
    /// Keep-alive values a client may ask for, in seconds (see the [compatibility notes](crate::manual::compatibility): 30–1200).
    pub keepalive_secs: RangeInclusive<u16>,
    /// The time a client has for its TLS and WebSocket handshakes and for its CONNECT.
    pub handshake_timeout: Duration,
    /// Sessions this broker holds at most (live and kept), over all listeners; also the most
    /// connections one TLS listener holds (beyond, new ones wait in the kernel's backlog).
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
/// A listener of [`BrokerConfig`] ([`BrokerConfig::listener`] adds one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// MQTT over WebSocket (`ws://`, or `wss://` with TLS; subprotocol `mqtt`), the SDKs'
    /// browser and mini-program builds.
    WebSocket,
}

/// A broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration has no listener.
    #[error("the broker needs at least one listener")]
    NoListener,
    /// TLS could not be set up (unreadable or mismatched PEM files).
    #[error(transparent)]
    Tls(crate::listener::TlsError),
    /// A listener could not be bound or set up (address taken).
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

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts the broker on the current tokio runtime (multi-threaded), every decision taken by
    /// `services`, and ends the sessions of devices that [`Services::revocations`] names.
    ///
    /// The broker library logs through the `log` crate under the targets `rmqtt`,
    /// `rmqtt_net` and `rmqtt_codec`; at debug level and below it prints whole packets, a
    /// `connwl` password (a DeviceToken) and a registration's secret among them: keep those
    /// targets at `info` or above (`iotauth serve` caps them so, whatever `RUST_LOG` says).
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
                        if let Some(id) = sessions.revoked(device, Instant::now()) {
                            tracing::info!(product_key = %device.product_key(), device_name = %device.device_name(), "revoked: ending the device's session");
                            end_session(&scx, &sessions, device, id).await;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        // Which devices were revoked is lost: every session is suspect.
                        tracing::error!(
                            missed,
                            "revocations missed: ending every device's session"
                        );
                        for (device, id) in sessions.all() {
                            end_session(&scx, &sessions, device, id).await;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(broker)
    }

    /// The same broker with **no authentication and no topic rule**: every CONNECT is accepted
    /// and every device may use every topic. Only for measuring what authentication costs
    /// (the connect-rate benchmark's baseline), hence the feature's name.
    ///
    /// # Errors
    /// As [`Broker::start`].
    #[cfg(feature = "danger-unauthenticated-broker")]
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
            // rmqtt otherwise refuses every CONNECT (code 3) while the machine's CPU is above
            // 90 % or its load above 80: a reconnect storm, or any other process, would lock
            // every device out. The session cap and the handshake limits bound the work.
            .busy_check_enable(false)
            .build()
            .await;
        let sessions = Arc::new(DeviceSessions::new(config.handshake_timeout));
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
                Type::SessionTerminated,
                Type::ClientSubscribeCheckAcl,
                Type::MessagePublishCheckAcl,
            ] {
                register.add(typ, Box::new(hooks.clone())).await;
            }
            register.start().await;
        }
        let tls = config
            .tls
            .as_ref()
            .map(TlsFiles::acceptor)
            .transpose()
            .map_err(BrokerError::Tls)?;
        let mut server = MqttServer::new(scx.clone());
        let mut local_addrs = Vec::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let listen_error =
                |source: Box<dyn std::error::Error + Send + Sync>| BrokerError::Listen {
                    address: listener.address,
                    source,
                };
            let bound =
                bind(config, listener, services.is_some()).map_err(|e| listen_error(e.into()))?;
            let mut local = bound.local_addr().map_err(|e| listen_error(e.into()))?;
            if let Some(tls) = &tls {
                let public = tokio::net::TcpListener::bind(listener.address)
                    .await
                    .map_err(|e| listen_error(e.into()))?;
                let inner = local;
                local = public.local_addr().map_err(|e| listen_error(e.into()))?;
                let name = match listener.transport {
                    Transport::Mqtt => "mqtts",
                    Transport::WebSocket => "wss",
                };
                let gate = Gate::new(public, name, config.max_sessions);
                tokio::spawn(terminate_tls(
                    gate,
                    tls.clone(),
                    inner,
                    config.handshake_timeout,
                ));
            }
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

    /// Ends `device`'s session (its connection, and what a non-clean session kept), if it has
    /// one here; whether it had.
    pub async fn disconnect(&self, device: &DeviceIdentity) -> bool {
        match self.sessions.of(device) {
            Some(id) => {
                end_session(&self.scx, &self.sessions, *device, id).await;
                true
            }
            None => false,
        }
    }
}

/// Subscriptions one session may hold; beyond, a SUBSCRIBE is refused. Bounds what one
/// device's filters cost the broker's memory.
pub const MAX_SUBSCRIPTIONS: usize = 100;

/// The longest a session outlives its connection (MQTT 5 clients asking for more get this):
/// rmqtt's default for MQTT 3.1.1 non-clean sessions.
const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(2 * 60 * 60);

/// An rmqtt listener for `listener`. With TLS, it is a plain one on a loopback port that
/// [`terminate_tls`] feeds, which expects a PROXY protocol header first.
fn bind(
    config: &BrokerConfig,
    listener: &ListenerConfig,
    authenticated: bool,
) -> rmqtt::Result<rmqtt::net::Listener> {
    let behind_tls = config.tls.is_some();
    let address = if behind_tls {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        listener.address
    };
    let builder = Builder::new()
        .name(match listener.transport {
            Transport::Mqtt => "iotauth-mqtt",
            Transport::WebSocket => "iotauth-ws",
        })
        .laddr(address)
        // A restarted server binds at once, even while its old connections are in TIME_WAIT.
        .reuseaddr(Some(true))
        .nodelay(true)
        .proxy_protocol(behind_tls)
        // Only this process's relay connects there, and it sends the header at once; a local
        // process that connects and says nothing stalls rmqtt's accept loop this long.
        .proxy_protocol_timeout(Duration::from_secs(1))
        .allow_anonymous(!authenticated)
        .min_keepalive(*config.keepalive_secs.start())
        .max_keepalive(*config.keepalive_secs.end())
        .allow_zero_keepalive(false)
        .handshake_timeout(config.handshake_timeout)
        .max_clientid_len(ConnectRequest::MAX_CLIENT_ID_LEN)
        .max_packet_size(256 * 1024)
        .max_subscriptions(MAX_SUBSCRIPTIONS)
        .session_expiry_interval(MAX_SESSION_EXPIRY)
        .max_session_expiry_interval(MAX_SESSION_EXPIRY)
        .bind()?;
    match listener.transport {
        Transport::Mqtt => builder.tcp(),
        Transport::WebSocket => builder.ws(),
    }
}

/// A TLS listener in front of a plain rmqtt one on loopback (`inner`): OpenSSL terminates
/// TLS (rmqtt's own TLS is rustls, which has none of the suites Alibaba's C SDKs offer), and
/// the plain stream goes on behind a PROXY protocol v1 header, so that the broker sees the
/// device's address. The device's side stays bounded: its TLS handshake by
/// `handshake_timeout`, then rmqtt's own limits on the CONNECT and the keep-alive; a write to
/// a device that stops reading by [`SEND_TIMEOUT`]. When either side closes or stalls, both
/// connections end.
async fn terminate_tls(
    gate: Gate,
    tls: TlsAcceptor,
    inner: SocketAddr,
    handshake_timeout: Duration,
) {
    let unreachable_log = Arc::new(LogGate::default());
    loop {
        let (stream, peer, slot) = gate.accept().await;
        let (tls, unreachable_log) = (tls.clone(), unreachable_log.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let device = match tls.accept(stream, handshake_timeout).await {
                Ok(device) => device,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let connected =
                tokio::time::timeout(handshake_timeout, tokio::net::TcpStream::connect(inner));
            let broker = match connected.await {
                Ok(Ok(broker)) => broker,
                Ok(Err(_)) | Err(_) => {
                    if unreachable_log.due() {
                        tracing::error!(%peer, "the broker's loopback listener is unreachable");
                    }
                    return;
                }
            };
            relay(device, broker, proxy_header(peer, local)).await;
        });
    }
}

/// Copies between a device and the broker, after sending `header` to the broker, until either
/// side closes or a write to the device stalls for [`SEND_TIMEOUT`].
async fn relay<D>(device: D, mut broker: tokio::net::TcpStream, header: String)
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    use tokio::io::AsyncWriteExt;
    let _ = broker.set_nodelay(true);
    if broker.write_all(header.as_bytes()).await.is_err() {
        return;
    }
    let mut device = tokio_io_timeout::TimeoutStream::new(device);
    device.set_write_timeout(Some(SEND_TIMEOUT));
    let (mut from_device, mut to_device) = tokio::io::split(Box::pin(device));
    let (mut from_broker, mut to_broker) = broker.split();
    let closed_by_broker = tokio::select! {
        _ = tokio::io::copy(&mut from_device, &mut to_broker) => false,
        copied = tokio::io::copy(&mut from_broker, &mut to_device) => copied.is_ok(),
    };
    if closed_by_broker {
        // TLS close_notify, then FIN; a device that does not read is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(1), to_device.shutdown()).await;
    }
}

/// A PROXY protocol v1 header: the connection came from `peer` to `local`.
fn proxy_header(peer: SocketAddr, local: SocketAddr) -> String {
    let family = if peer.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        peer.ip(),
        local.ip(),
        peer.port(),
        local.port()
    )
}

/// Ends `device`'s session `id` for good: its connection is closed and nothing it kept
/// (subscriptions, queued messages) survives; nothing happens when the client id has moved on
/// to a newer session meanwhile. The table forgets the session here: rmqtt runs no
/// SessionTerminated hook for a session it was told to end.
async fn end_session(
    scx: &ServerContext,
    sessions: &DeviceSessions,
    device: DeviceIdentity,
    id: Id,
) {
    let entry = scx.extends.shared().await.entry(id.clone());
    if entry.id_same() != Some(true) {
        sessions.terminated(device, &id);
        return;
    }
    match entry.try_lock().await {
        Ok(mut entry) => match entry.kick(true, true, true).await {
            Ok(_) => sessions.terminated(device, &id),
            Err(e) => tracing::warn!(error = %e, "a session could not be ended"),
        },
        // A handshake with the same client id holds it: that one replaces the session anyway.
        Err(e) => tracing::debug!(error = %e, "a session being replaced was not ended"),
    }
}

/// Which device owns each session, and each device's one session.
///
/// rmqtt keys sessions by MQTT client id, and a device signs whatever client-id CORE it
/// likes, so ownership is kept here:
/// * a client id is *claimed* for a device when its CONNECT is admitted, before rmqtt may
///   hand an existing session over; a claim that no connection confirms within the handshake
///   limit (rmqtt refused the CONNECT after authentication) lapses;
/// * it is *held* from the connection on, until that very session terminates;
/// * each device has one session: a newer one under another client id ends the older one.
struct DeviceSessions {
    inner: Mutex<SessionTable>,
    /// How long an unconfirmed claim, or a revocation, is remembered.
    window: Duration,
}

#[derive(Default)]
struct SessionTable {
    /// MQTT client id → the device its session belongs to.
    owners: HashMap<String, Owner>,
    /// Claims not yet confirmed, oldest first.
    claims: VecDeque<(String, Instant)>,
    /// Device → its session (live, or kept after a non-clean connection).
    sessions: HashMap<DeviceIdentity, Id>,
    /// Devices revoked within the window, oldest first.
    revoked: VecDeque<(DeviceIdentity, Instant)>,
    /// Client id → when its pending CONNECT's admission began (before its store read), until
    /// the connection is confirmed or the claim lapses.
    admissions: HashMap<String, Instant>,
}

struct Owner {
    device: DeviceIdentity,
    hold: Hold,
}

#[derive(PartialEq)]
enum Hold {
    /// Admitted at that time; no connection yet.
    Claimed(Instant),
    /// The session of this connection.
    Session(Id),
}

impl DeviceSessions {
    fn new(window: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            window,
        }
    }

    fn table(&self) -> MutexGuard<'_, SessionTable> {
        // Every update below is a few inserts and removes that cannot panic half-way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `client_id` for `device`, whose CONNECT began to be admitted at `now`; false
    /// when another device's session or claim holds it.
    fn claim(&self, client_id: &str, device: DeviceIdentity, now: Instant) -> bool {
        let mut table = self.table();
        table.forget_before(now.checked_sub(self.window));
        let claimed = table
            .owners
            .get(client_id)
            .is_none_or(|owner| owner.device == device);
        if claimed {
            // Two CONNECTs in flight on one client id: the earlier admission counts (the later
            // one's connection ends the earlier one's anyway).
            table
                .admissions
                .entry(client_id.to_owned())
                .and_modify(|began| *began = (*began).min(now))
                .or_insert(now);
            table.claims.push_back((client_id.to_owned(), now));
        }
        match table.owners.get(client_id) {
            Some(owner) => owner.device == device,
            None => {
                table.owners.insert(
                    client_id.to_owned(),
                    Owner {
                        device,
                        hold: Hold::Claimed(now),
                    },
                );
                true
            }
        }
    }

    /// Records `id` as held by `device`, and for a `login` as the device's session. Returns
    /// the sessions to end: for a login, the device's older session under another client id,
    /// and this one if the device was revoked since its CONNECT began to be admitted (the
    /// admission may have read the device before the revocation; one that began after it read
    /// the change). A registration connection (closed moments later) ends nothing: a `regnwl`
    /// for a device that is logged in must not take its connection.
    fn connected(&self, device: DeviceIdentity, id: &Id, login: bool, now: Instant) -> Vec<Id> {
        let mut table = self.table();
        table.forget_before(now.checked_sub(self.window));
        // Unknown (the claim lapsed): every revocation within the window counts.
        let admitted = table.admissions.remove(&*id.client_id);
        table.owners.insert(
            id.client_id.to_string(),
            Owner {
                device,
                hold: Hold::Session(id.clone()),
            },
        );
        if !login {
            return Vec::new();
        }
        let mut ended: Vec<Id> = table
            .sessions
            .insert(device, id.clone())
            .filter(|older| older.client_id != id.client_id)
            .into_iter()
            .collect();
        if table
            .revoked
            .iter()
            .any(|(revoked, at)| *revoked == device && admitted.is_none_or(|began| *at >= began))
        {
            ended.push(id.clone());
        }
        ended
    }

    /// The session `id` is gone: its client id is free, and the device has no session.
    fn terminated(&self, device: DeviceIdentity, id: &Id) {
        let mut table = self.table();
        let client_id: &str = &id.client_id;
        if table
            .owners
            .get(client_id)
            .is_some_and(|owner| owner.hold == Hold::Session(id.clone()))
        {
            table.owners.remove(client_id);
        }
        if table.sessions.get(&device) == Some(id) {
            table.sessions.remove(&device);
        }
    }

    /// Remembers that `device` was revoked; its session, to end.
    fn revoked(&self, device: DeviceIdentity, now: Instant) -> Option<Id> {
        let mut table = self.table();
        table.forget_before(now.checked_sub(self.window));
        table.revoked.push_back((device, now));
        table.sessions.get(&device).cloned()
    }

    fn of(&self, device: &DeviceIdentity) -> Option<Id> {
        self.table().sessions.get(device).cloned()
    }

    fn all(&self) -> Vec<(DeviceIdentity, Id)> {
        self.table()
            .sessions
            .iter()
            .map(|(device, id)| (*device, id.clone()))
            .collect()
    }
}

impl SessionTable {
    /// Drops the claims and revocations made before `horizon`.
    fn forget_before(&mut self, horizon: Option<Instant>) {
        let Some(horizon) = horizon else { return };
        while let Some((client_id, at)) = self.claims.front() {
            if *at >= horizon {
                break;
            }
            if self
                .owners
                .get(client_id)
                .is_some_and(|owner| owner.hold == Hold::Claimed(*at))
            {
                self.owners.remove(client_id);
            }
            if self.admissions.get(client_id) == Some(at) {
                self.admissions.remove(client_id);
            }
            self.claims.pop_front();
        }
        while self.revoked.front().is_some_and(|(_, at)| *at < horizon) {
            self.revoked.pop_front();
        }
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
            Parameter::SessionTerminated(session, _) => {
                if let Some(admission) = admission(session).await {
                    self.sessions.terminated(admission.device(), &session.id);
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

/// The three CONNECT strings of a connection (a non-UTF-8 password reads as `None`).
fn credentials(info: &ConnectInfo) -> (&str, &str, Option<&str>) {
    (
        &info.id().client_id,
        info.username().map_or("", |name| name),
        info.password().and_then(|p| std::str::from_utf8(p).ok()),
    )
}

impl Hooks {
    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let (client_id, username, password) = credentials(info);
        let Some(password) = password else {
            tracing::warn!("login refused: missing or non-UTF-8 password");
            return AuthResult::BadUsernameOrPassword;
        };
        // Before the store is read: a revocation from now on may not be in what it reads.
        let began = Instant::now();
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
            if !self.services.may_publish(&admission, topic) {
                tracing::warn!(product_key = %device.product_key(), device_name = %device.device_name(), topic = ?capped(topic), "CONNECT refused: will topic not allowed");
                return AuthResult::NotAuthorized;
            }
        }
        if !self.sessions.claim(client_id, device, began) {
            tracing::warn!(product_key = %device.product_key(), device_name = %device.device_name(), "CONNECT refused: the client id names another device's session");
            return AuthResult::NotAuthorized;
        }
        AuthResult::Allow(false, None)
    }

    async fn connected(&self, session: &Session) {
        let Ok(info) = session.connect_info().await else {
            return;
        };
        let (client_id, username, password) = credentials(&info);
        let password = password.unwrap_or_default();
        // The CONNECT was admitted moments ago: classify it again, by the same rule, without
        // a store call.
        let Some(admission) = ConnectRequest::parse(client_id, username, password)
            .ok()
            .as_ref()
            .map(Admission::requested)
        else {
            return;
        };
        session
            .extra_attrs
            .write()
            .await
            .insert(ADMISSION.into(), admission);
        let device = admission.device();
        let login = matches!(admission, Admission::Login(_));
        let now = Instant::now();
        for ended in self.sessions.connected(device, &session.id, login, now) {
            tracing::info!(product_key = %device.product_key(), device_name = %device.device_name(), "ending a session of the device (a newer login, or a revocation)");
            if ended == session.id {
                // This connection's own handshake holds its entry: close it from inside.
                let entry = self.scx.extends.shared().await.entry(ended);
                if let Some(tx) = entry.tx() {
                    let _ = tx.unbounded_send(Message::Closed(Reason::ConnectKicked(true)));
                }
            } else {
                end_session(&self.scx, &self.sessions, device, ended).await;
            }
        }
        if let Admission::Registration(_) | Admission::ClientIdRegistration(_) = admission {
            let (services, sessions) = (self.services.clone(), self.sessions.clone());
            let (scx, id) = (self.scx.clone(), session.id.clone());
            let (client_id, username, password) = (
                client_id.to_owned(),
                username.to_owned(),
                zeroize::Zeroizing::new(password.to_owned()),
            );
            tokio::spawn(async move {
                let delivery = match admission {
                    Admission::Registration(_) => services
                        .register_connect(&client_id, &username, &password)
                        .await
                        .map(|issued| (REGISTER_TOPIC, issued.into_ext_register_payload())),
                    _ => services
                        .register_client_id_connect(&client_id, &username, &password)
                        .await
                        .map(|issued| (REGNWL_TOPIC, issued.into_ext_regnwl_payload())),
                };
                if let Ok((topic, payload)) = delivery {
                    deliver(&scx, &id, topic, payload).await;
                    tokio::time::sleep(REGISTRATION_LINGER).await;
                }
                end_session(&scx, &sessions, device, id).await;
            });
        }
    }
}

/// Sends `payload` on `topic` ([`REGISTER_TOPIC`] or [`REGNWL_TOPIC`]) to the session `id`,
/// and to no other: not through the router (nobody else can subscribe to it), and not if the
/// client id has moved on to another session meanwhile.
async fn deliver(scx: &ServerContext, id: &Id, topic: &str, mut payload: Zeroizing<String>) {
    let entry = scx.extends.shared().await.entry(id.clone());
    if entry.id_same() != Some(true) {
        return;
    }
    let Some(tx) = entry.tx() else { return };
    let packet = PublishPacket {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        packet_id: None,
        // The packet's buffer leaves our hands here: rmqtt frees it once it is written.
        payload: std::mem::take(&mut *payload).into(),
        properties: None,
    };
    let origin = Origin::from_system(id.clone());
    let _ = tx.unbounded_send(Message::Forward(origin, Publish::from(packet)));
}

async fn admission(session: &Session) -> Option<Admission> {
    session
        .extra_attrs
        .read()
        .await
        .get::<Admission>(ADMISSION)
        .copied()
}

/// Logs a refused SUBSCRIBE filter or PUBLISH topic, with the device and the topic (escaped,
/// capped), never the payload, at most [`REFUSAL_LINES_PER_SECOND`] lines a second: one
/// SUBSCRIBE may carry thousands of filters.
async fn refused_topic(session: &Session, action: &'static str, topic: &str) {
    if !TOPIC_REFUSALS.admit() {
        return;
    }
    match admission(session).await {
        Some(admission) => {
            let device = admission.device();
            tracing::warn!(product_key = %device.product_key(), device_name = %device.device_name(), action, topic = ?capped(topic), "topic refused");
        }
        None => tracing::warn!(action, topic = ?capped(topic), "topic refused"),
    }
}

static TOPIC_REFUSALS: RateLimitedLog = RateLimitedLog::new("topic");

/// A network-supplied string for a log line: its first 128 bytes at most (cut at a character
/// boundary); logged with `?`, so that control characters are escaped, never written.
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
