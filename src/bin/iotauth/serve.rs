//! `iotauth serve`: HTTP registration and broker hooks, and an embedded MQTT broker
//! (`iotauth::broker`) that decides logins, registrations and topics, on one store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use iotauth::IssuancePolicy;
use iotauth::broker::{Broker, BrokerConfig, TlsFiles, Transport};
use iotauth::server::{ServerConfig, Services, router};
use iotauth::store::Store;
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
    /// The embedded MQTT broker (3.1, 3.1.1 and 5): logins, dynamic registration
    /// (authType=register) and the topic rule, all on this port.
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// Another port of the same broker, for configurations that kept registration on a port
    /// of its own; it serves exactly what --mqtt serves.
    #[arg(long)]
    mqtt_register: Option<SocketAddr>,
    /// The broker over WebSocket (ws://, or wss:// with --tls-cert), for the SDKs' browser
    /// and mini-program builds.
    #[arg(long)]
    mqtt_ws: Option<SocketAddr>,
    /// The shortest keep-alive a device may ask for, in seconds (Alibaba: 30).
    #[arg(long, default_value_t = 30)]
    min_keepalive_secs: u16,
    /// The longest keep-alive a device may ask for, in seconds (Alibaba: 1200).
    #[arg(long, default_value_t = 1200)]
    max_keepalive_secs: u16,
    /// The time a client has for its TLS handshake (HTTP and MQTT), WebSocket handshake and
    /// MQTT CONNECT, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    handshake_timeout_secs: u64,
    /// How often a device's secret may be delivered.
    #[arg(long, default_value = "once", value_parser = [
        IssuancePolicy::Once.name(),
        IssuancePolicy::RedeliverUntilFirstLogin.name(),
    ])]
    issuance: String,
    /// Refuse logins whose timestamp is further than this from now, in seconds (no window by
    /// default).
    #[arg(long)]
    max_skew_secs: Option<String>,
    /// Reuse a device read for this long, in seconds (0: off). This server's own writes drop
    /// the entry at once; a change made elsewhere (an admin command, another server on the
    /// same PostgreSQL) is seen within the period.
    #[arg(long, default_value = "0")]
    cache_ttl_secs: String,
    /// A topic template devices may use ({pk} and {dn} are whole levels); repeat for several.
    /// [default: Alibaba's /{pk}/{dn}/#, /sys/{pk}/{dn}/#, /ext/+/{pk}/{dn}/#,
    /// /shadow/+/{pk}/{dn}, /ota/device/+/{pk}/{dn}]
    #[arg(long = "topic-template")]
    topic_templates: Vec<String>,
    /// TLS for HTTP and every MQTT listener: the certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

pub(crate) async fn serve(store_url: &str, args: Serve) -> Result<(), Failure> {
    if args.min_keepalive_secs > args.max_keepalive_secs {
        return Err(Failure::Usage(
            "--min-keepalive-secs is above --max-keepalive-secs".into(),
        ));
    }
    let handshake_timeout = Duration::from_secs(args.handshake_timeout_secs);
    let config = server_config(&args)?;
    let store = config.open_store(store_url).await?;
    let services = Arc::new(Services::new(store.clone(), config));
    hint_when_empty(&store, store_url).await?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "TLS" } else { "plain TCP" };

    let http = TcpListener::bind(args.http)
        .await
        .map_err(|e| Failure::Rejected(format!("cannot listen on {}: {e}", args.http)))?;
    tracing::info!(address = %args.http, scheme, "HTTP: registration, hooks, /healthz, /metrics");
    let broker = broker_config(&args);
    if let Some(config) = broker {
        let broker = Broker::start(&config, services.clone())
            .await
            .map_err(|e| Failure::Rejected(e.to_string()))?;
        for (transport, address) in broker.local_addrs() {
            let transport = match transport {
                Transport::WebSocket => "WebSocket",
                _ => "TCP",
            };
            tracing::info!(%address, transport, scheme, "MQTT broker: logins, registration, topics");
        }
    }
    let app = router(services);
    let served = match tls {
        Some(acceptor) => {
            axum::serve(TlsListener::spawn(http, acceptor, handshake_timeout)?, app)
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
    fn spawn(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
    ) -> Result<Self, Failure> {
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
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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

/// The settings every front end shares, from the command line, parsed by the library (as the
/// Mosquitto plugin's `plugin_opt_*` are).
fn server_config(args: &Serve) -> Result<ServerConfig, Failure> {
    let mut config = ServerConfig::default();
    let settings = [
        ("issuance", Some(&args.issuance)),
        ("max_skew_secs", args.max_skew_secs.as_ref()),
        ("cache_ttl_secs", Some(&args.cache_ttl_secs)),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value?)))
    .chain(args.topic_templates.iter().map(|t| ("topic_template", t)));
    for (key, value) in settings {
        config
            .set(key, value)
            .map_err(|e| Failure::Usage(format!("--{}: {e}", key.replace('_', "-"))))?;
    }
    Ok(config)
}

/// The broker's listeners from the command line; `None` when no MQTT port is asked for.
fn broker_config(args: &Serve) -> Option<BrokerConfig> {
    let mut config = BrokerConfig::default();
    for (address, transport) in [
        (args.mqtt, Transport::Mqtt),
        (args.mqtt_register, Transport::Mqtt),
        (args.mqtt_ws, Transport::WebSocket),
    ] {
        if let Some(address) = address {
            config = config.listener(address, transport);
        }
    }
    if config.listeners.is_empty() {
        return None;
    }
    config.keepalive_secs = args.min_keepalive_secs..=args.max_keepalive_secs;
    config.handshake_timeout = Duration::from_secs(args.handshake_timeout_secs);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.tls(TlsFiles::new(cert, key));
    }
    Some(config)
}
