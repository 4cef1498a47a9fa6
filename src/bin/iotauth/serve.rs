//! `iotauth serve`: HTTP registration and broker hooks, MQTT dynamic registration, and an
//! embedded MQTT broker that authenticates devices, on one store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use clap::{Args, ValueEnum};
use iotauth::server::{ServerConfig, Services, router};
use iotauth::store::{CachedStore, Store};
use iotauth::{Freshness, IssuancePolicy, TopicRule};
use rumqttc::{ConnAck, ConnectReturnCode, Packet, Publish, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use crate::Failure;

#[derive(Args)]
pub(crate) struct Serve {
    /// HTTP: dynamic registration, broker hooks, /healthz, /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// An embedded MQTT 3.1.1 broker whose logins are verified by this server.
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// MQTT dynamic registration (authType=register): CONNECT, CONNACK, /ext/register, close.
    #[arg(long)]
    mqtt_register: Option<SocketAddr>,
    /// How often a device's secret may be delivered.
    #[arg(long, value_enum, default_value = "once")]
    issuance: Issuance,
    /// Refuse logins whose timestamp is further than this from now (no window by default).
    #[arg(long)]
    max_skew_secs: Option<u64>,
    /// Reuse a device read for this long (0: off). This server's own writes drop the entry at
    /// once; a change made elsewhere (an admin command, another server on the same
    /// PostgreSQL) is seen within the period.
    #[arg(long, default_value_t = 0)]
    cache_ttl_secs: u64,
    /// A topic template devices may use ({pk} and {dn} are whole levels); repeat for several.
    /// [default: Alibaba's /{pk}/{dn}/#, /sys/{pk}/{dn}/#, /ext/+/{pk}/{dn}/#,
    /// /shadow/+/{pk}/{dn}, /ota/device/+/{pk}/{dn}]
    #[arg(long = "topic-template")]
    topic_templates: Vec<String>,
    /// TLS for HTTP and both MQTT listeners: the certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Issuance {
    Once,
    RedeliverUntilFirstLogin,
}

/// Cap on a registration CONNECT, in bytes.
const MAX_CONNECT_LEN: usize = 4096;
/// How long a registration client may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(store_url: &str, args: Serve) -> Result<(), Failure> {
    let store = iotauth::store::open(store_url).await?;
    let store: Arc<dyn Store> = match args.cache_ttl_secs {
        0 => store,
        secs => Arc::new(CachedStore::new(store, Duration::from_secs(secs))),
    };
    let config = ServerConfig {
        issuance: match args.issuance {
            Issuance::Once => IssuancePolicy::Once,
            Issuance::RedeliverUntilFirstLogin => IssuancePolicy::RedeliverUntilFirstLogin,
        },
        freshness: args
            .max_skew_secs
            .map_or(Freshness::Unchecked, |max_skew_secs| Freshness::Window {
                max_skew_secs,
            }),
        topics: if args.topic_templates.is_empty() {
            TopicRule::alibaba()
        } else {
            TopicRule::new(args.topic_templates)?
        },
    };
    let services = Arc::new(Services::new(store.clone(), config));
    hint_when_empty(&store, store_url).await?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((tls_acceptor(cert, key)?, cert.clone(), key.clone())),
        _ => None,
    };
    let scheme = if tls.is_some() { "TLS" } else { "plain TCP" };

    let http = TcpListener::bind(args.http)
        .await
        .map_err(|e| Failure::Rejected(format!("cannot listen on {}: {e}", args.http)))?;
    tracing::info!(address = %args.http, scheme, "HTTP: registration, hooks, /healthz, /metrics");
    if let Some(address) = args.mqtt_register {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| Failure::Rejected(format!("cannot listen on {address}: {e}")))?;
        tracing::info!(%address, scheme, "MQTT dynamic registration");
        let acceptor = tls.as_ref().map(|(acceptor, _, _)| acceptor.clone());
        tokio::spawn(serve_mqtt_registration(
            listener,
            acceptor,
            services.clone(),
        ));
    }
    if let Some(address) = args.mqtt {
        let files = tls
            .as_ref()
            .map(|(_, cert, key)| (cert.as_path(), key.as_path()));
        start_broker(address, files, services.clone())?;
        tracing::info!(%address, scheme, "MQTT broker");
    }
    let app = router(services);
    let served = match tls {
        Some((acceptor, _, _)) => {
            axum::serve(TlsListener::spawn(http, acceptor)?, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
        None => {
            axum::serve(http, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
    };
    served.map_err(|e| Failure::Rejected(format!("HTTP server: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

async fn hint_when_empty(store: &Arc<dyn Store>, store_url: &str) -> Result<(), Failure> {
    if store.products().await?.is_empty() {
        eprintln!(
            "The store is empty. Create a product and a device:\n  \
             iotauth --store {store_url} product create --dynamic-registration\n  \
             iotauth --store {store_url} device register <productKey> <deviceName>"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// The server's TLS configuration from PEM files.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Failure> {
    let open = |path: &Path| {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| Failure::Rejected(format!("{}: {e}", path.display())))
    };
    let chain = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Rejected(format!("{}: {e}", cert.display())))?;
    let key = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|e| Failure::Rejected(format!("{}: {e}", key.display())))?
        .ok_or_else(|| Failure::Rejected(format!("{}: no private key", key.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Failure::Rejected(format!("TLS configuration: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// HTTPS for axum: TCP connections are accepted and their handshakes run concurrently (each
/// with a time limit), so that one slow client cannot hold up the others.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor) -> Result<Self, Failure> {
        let local = listener
            .local_addr()
            .map_err(|e| Failure::Rejected(format!("HTTP listener: {e}")))?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        _ => tracing::debug!(%peer, "TLS handshake failed"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// rumqttd with one MQTT 3.1.1 listener (TLS when `tls` names the PEM files) whose logins go
/// through the authenticator.
fn start_broker(
    address: SocketAddr,
    tls: Option<(&Path, &Path)>,
    services: Arc<Services>,
) -> Result<(), Failure> {
    let config = crate::broker::config(address, tls, Some(services));
    // Fail now, not in the broker's thread, when the address is taken.
    std::net::TcpListener::bind(address)
        .map_err(|e| Failure::Rejected(format!("cannot listen on {address}: {e}")))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "MQTT broker stopped");
            }
        })
        .map_err(|e| Failure::Rejected(format!("cannot start the MQTT broker: {e}")))?;
    Ok(())
}

async fn serve_mqtt_registration(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    services: Arc<Services>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (services, tls) = (services.clone(), tls.clone());
                tokio::spawn(async move {
                    let outcome = match tls {
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => register_over_mqtt(stream, &services).await,
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(std::io::Error::other("TLS handshake timed out")),
                            }
                        }
                        None => register_over_mqtt(stream, &services).await,
                    };
                    if let Err(e) = outcome {
                        tracing::warn!(%peer, error = %e, "MQTT registration connection failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}

/// One registration connection (PROTOCOL.md §c): CONNECT in; CONNACK accepted and the secret
/// on `/ext/register`, or CONNACK "not authorized"; then close.
async fn register_over_mqtt<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    services: &Services,
) -> std::io::Result<()> {
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut stream)).await {
        Ok(result) => result?,
        Err(_) => return Ok(()),
    };
    let Some(connect) = connect else {
        return Ok(());
    };
    let (username, password) = connect
        .login
        .map(|login| (login.username, login.password))
        .unwrap_or_default();
    let outcome = services
        .registrar
        .register_connect(&connect.client_id, &username, &password)
        .await;
    services.record_registration(&outcome);
    let mut out = BytesMut::new();
    let write = |packet: Result<usize, rumqttc::mqttbytes::Error>| {
        packet
            .map(drop)
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    match outcome {
        Ok(issued) => {
            write(ConnAck::new(ConnectReturnCode::Success, false).write(&mut out))?;
            let payload = issued.to_ext_register_payload();
            write(Publish::new("/ext/register", QoS::AtMostOnce, payload).write(&mut out))?;
        }
        Err(_) => write(ConnAck::new(ConnectReturnCode::NotAuthorized, false).write(&mut out))?,
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// Reads bytes until one whole packet parses; `None` when it is not a CONNECT.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<rumqttc::Connect>> {
    let mut buffer = BytesMut::with_capacity(512);
    loop {
        match Packet::read(&mut buffer, MAX_CONNECT_LEN) {
            Ok(Packet::Connect(connect)) => return Ok(Some(connect)),
            Ok(_) => return Ok(None),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(None);
        }
    }
}
