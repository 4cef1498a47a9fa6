//! `iotauth serve`: HTTP registration and broker hooks, and an embedded MQTT broker
//! (`iotauth::broker`) that decides logins, registrations and topics, on one store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use iotauth::IssuancePolicy;
use iotauth::broker::{Broker, BrokerConfig, Transport};
use iotauth::http::{AdminToken, ServerConfig, Services, admin_router, router};
use iotauth::listener::{HttpListener, ListenerLimits, TlsFiles};
use iotauth::service::MAX_IMPORT_BYTES;
use iotauth::store::{FailureKind, SecretsAtRest, Store};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::Failure;

#[derive(Args)]
pub(crate) struct Serve {
    /// HTTP: dynamic registration, broker hooks, /healthz, /readyz, /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The admin HTTP API (products and devices by Alibaba's OpenAPI actions; its document at
    /// /admin/openapi.json), on a listener of its own: off unless given. Needs the bearer
    /// token in IOTAUTH_ADMIN_TOKEN or --admin-token-file.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The file holding the admin API's bearer token (16-1024 of A-Za-z0-9-._~+/; a final
    /// line break is ignored) [else IOTAUTH_ADMIN_TOKEN].
    #[arg(long, requires = "admin", value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
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
    /// MQTT CONNECT, and for its first HTTP request head and each request body, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    handshake_timeout_secs: u64,
    /// The time an HTTP keep-alive connection may wait for its next request head, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_secs: u64,
    /// Connections the HTTP listener holds at most; beyond, new ones wait in the kernel's
    /// backlog. (The broker's cap is its 10,000 sessions.)
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_http_connections: u64,
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
    /// Reuse a device read for this long, in seconds (0: off). Every change to the store (by
    /// this server, an admin command, another server on the same database) drops the entry
    /// within about 50 ms: the server follows the store's event log. Only a change made
    /// around iotauth (SQL by hand) waits for the period.
    #[arg(long, default_value = "600")]
    cache_ttl_secs: String,
    /// This server's name in the store's event log (`server:NODE`; 1-64 of A-Za-z0-9._-)
    /// [default: HOST-PID, or pid-PID when the host name is not a valid NODE].
    #[arg(long, value_name = "NODE")]
    node_id: Option<String>,
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
    /// TLS: also offer the TLS 1.2 RSA-key-exchange AES-CBC suites (AES128-SHA, AES256-SHA,
    /// AES128-SHA256, AES256-SHA256), the only ones Alibaba's C SDKs (Link SDK 4.x,
    /// iotkit-embedded 3.x) speak. Weaker: no forward secrecy. Needs an RSA certificate.
    #[arg(long, requires = "tls_cert")]
    tls_legacy_suites: bool,
}

pub(crate) async fn serve(
    store_url: &str,
    secrets: SecretsAtRest,
    args: Serve,
) -> Result<(), Failure> {
    if args.min_keepalive_secs > args.max_keepalive_secs {
        return Err(Failure::Usage(
            "--min-keepalive-secs is above --max-keepalive-secs".into(),
        ));
    }
    let handshake_timeout = Duration::from_secs(args.handshake_timeout_secs);
    let mut config = server_config(&args)?;
    config.secrets = secrets;
    let store = config.open_store(store_url).await?;
    let services = Arc::new(Services::new(store.clone(), config));
    services.follow_store_events();
    hint_when_empty(&store, store_url).await?;
    let tls = tls_files(&args);
    let scheme = if tls.is_some() { "TLS" } else { "plain TCP" };

    let http = TcpListener::bind(args.http)
        .await
        .map_err(|e| Failure::rejected(format!("cannot listen on {}: {e}", args.http)))?;
    let broker = broker_config(&args);
    if let Some(config) = broker {
        let broker = Broker::start(&config, services.clone())
            .await
            .map_err(|e| Failure::rejected(e.to_string()))?;
        for (transport, address) in broker.local_addrs() {
            let transport = match transport {
                Transport::WebSocket => "WebSocket",
                _ => "TCP",
            };
            tracing::info!(%address, transport, scheme, "MQTT broker: logins, registration, topics");
        }
    }
    let mut limits = ListenerLimits::default();
    limits.handshake_timeout = handshake_timeout;
    limits.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    limits.max_connections = usize::try_from(args.max_http_connections).unwrap_or(usize::MAX);
    let admin = match args.admin {
        Some(address) => Some(admin_listener(address, &args, limits, tls.as_ref()).await?),
        None => None,
    };
    let http = HttpListener::new(http, limits, tls.as_ref())
        .map_err(|e| Failure::rejected(e.to_string()))?;
    tracing::info!(address = %args.http, scheme, "HTTP: registration, hooks, /healthz, /readyz, /metrics");
    let replaced = tokio::sync::OnceCell::new();
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            e = store_replaced(&services) => {
                tracing::error!(error = %iotauth::ErrorChain(&e), "stopping: the store cannot keep what it is given");
                let _ = replaced.set(e);
            }
        }
        let _ = stopping.send(true);
    };
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let main_stopped = until_stopped(stopped.clone());
    let main = async {
        tokio::join!(stop, http.serve(router(services.clone()), main_stopped));
    };
    match admin {
        Some((listener, token)) => {
            tracing::info!(address = %args.admin.unwrap_or(args.http), scheme, "HTTP: the admin API, /admin/openapi.json");
            let admin_app = admin_router(services.clone(), token);
            tokio::join!(main, listener.serve(admin_app, until_stopped(stopped)));
        }
        None => main.await,
    }
    tracing::info!("stopped");
    match replaced.into_inner() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The environment variable holding the admin API's bearer token.
const ADMIN_TOKEN_ENV: &str = "IOTAUTH_ADMIN_TOKEN";

/// Connections the admin listener holds at most: it serves operators' back ends, not a fleet,
/// and each may carry an import of up to 256 MiB.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The time an admin request's body (an import of up to 256 MiB) has to arrive.
const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(300);

/// The admin API's listener and token (`--admin`): the token is checked before a request's
/// body is read, so that only an operator can make the server hold an import in memory.
async fn admin_listener(
    address: SocketAddr,
    args: &Serve,
    mut limits: ListenerLimits,
    tls: Option<&TlsFiles>,
) -> Result<(HttpListener, Arc<AdminToken>), Failure> {
    let token = match &args.admin_token_file {
        Some(file) => Zeroizing::new(
            std::fs::read_to_string(file)
                .map_err(|e| Failure::rejected(format!("cannot read {}: {e}", file.display())))?,
        ),
        None => Zeroizing::new(std::env::var(ADMIN_TOKEN_ENV).map_err(|_| {
            Failure::Usage(format!(
                "--admin needs a bearer token: --admin-token-file or {ADMIN_TOKEN_ENV}"
            ))
        })?),
    };
    let token = token.strip_suffix('\n').unwrap_or(&token);
    let token = token.strip_suffix('\r').unwrap_or(token);
    let token = Arc::new(
        AdminToken::new(token).map_err(|e| Failure::Usage(format!("the admin token: {e}")))?,
    );
    limits.max_connections = ADMIN_MAX_CONNECTIONS;
    limits.max_body_len = MAX_IMPORT_BYTES;
    limits.body_timeout = Some(ADMIN_BODY_TIMEOUT);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Failure::rejected(format!("cannot listen on {address}: {e}")))?;
    let checked = token.clone();
    let listener = HttpListener::new(listener, limits, tls)
        .map_err(|e| Failure::rejected(e.to_string()))?
        .admit(Arc::new(move |headers| checked.check(headers)))
        .named("admin");
    Ok((listener, token))
}

/// How often `serve` checks that its SQLite file is still the one it opened.
const STORE_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Returns once the store's file was deleted or replaced (what the store writes then would be
/// lost, and a restart would start from another file): the server must stop. Other failures
/// (a database that is down) may pass: `/readyz` reports them.
async fn store_replaced(services: &Services) -> iotauth::store::StoreError {
    loop {
        tokio::time::sleep(STORE_FILE_CHECK_INTERVAL).await;
        if let Err(e) = services.check_ready().await
            && e.failure_kind() == Some(FailureKind::Replaced)
        {
            return e;
        }
    }
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

/// The TLS settings every listener shares, from the command line.
fn tls_files(args: &Serve) -> Option<TlsFiles> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(TlsFiles::new(cert, key).legacy_suites(args.tls_legacy_suites))
        }
        _ => None,
    }
}

/// The settings every front end shares, from the command line, parsed by the library (as the
/// Mosquitto plugin's `plugin_opt_*` are).
fn server_config(args: &Serve) -> Result<ServerConfig, Failure> {
    let mut config = ServerConfig::default();
    let actor = args.node_id.as_ref().map(|node| format!("server:{node}"));
    let settings = [
        ("actor", actor.as_ref()),
        ("issuance", Some(&args.issuance)),
        ("max_skew_secs", args.max_skew_secs.as_ref()),
        ("cache_ttl_secs", Some(&args.cache_ttl_secs)),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value?)))
    .chain(args.topic_templates.iter().map(|t| ("topic_template", t)));
    for (key, value) in settings {
        config.set(key, value).map_err(|e| match key {
            "actor" => Failure::Usage(
                "--node-id: expected 1-64 of A-Za-z0-9._- (recorded as server:NODE)".into(),
            ),
            _ => Failure::Usage(format!("--{}: {e}", key.replace('_', "-"))),
        })?;
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
    if let Some(tls) = tls_files(args) {
        config = config.tls(tls);
    }
    Some(config)
}
