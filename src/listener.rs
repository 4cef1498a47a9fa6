//! Listeners that real devices can reach and slow, idle or numerous clients cannot take down
//! (feature `listener`): TLS through OpenSSL with the suites Alibaba's C SDKs speak, HTTP/1.1
//! replies spelled the way those SDKs read them, and time limits and caps on every connection.
//!
//! * **TLS** ([`TlsFiles`]), on every listener that has it (HTTP, and the embedded broker's
//!   MQTT and WebSocket listeners): TLS 1.2 and 1.3 with forward-secret AEAD suites (Mozilla's
//!   "intermediate" profile). With [`TlsFiles::legacy_suites`], also the four TLS 1.2
//!   RSA-key-exchange AES-CBC suites, the only ones the mbedtls bundled with Link SDK 4.x and
//!   iotkit-embedded 3.x offers (see the [compatibility notes](crate::manual::compatibility)): weaker (no forward secrecy, CBC), opt-in.
//!   Any SNI is accepted, an IP address included (OpenSSL-based clients such as
//!   `mosquitto_pub` send one when they connect by address).
//! * **HTTP/1.1** ([`HttpListener`]): header names in canonical Title-Case (`Content-Length`,
//!   `Content-Type`): Link SDK 4.x finds the body length by comparing each header line with
//!   `"Content-Length: "` byte for byte, iotkit 3.x searches for `"Content-Length"`
//!   (see the [compatibility notes](crate::manual::compatibility)). Replies with a known length carry it and are never chunked.
//! * **Limits** ([`ListenerLimits`]): a time limit on the TLS handshake, on the first request
//!   head and on each request body; a longer one on a keep-alive connection's wait for its next
//!   request head; a write that makes no progress for [`SEND_TIMEOUT`] closes the connection
//!   (a client that stops reading); request heads in at most 16 KiB of buffer. A cap on
//!   connections, beyond which new ones wait in the kernel's backlog (holding no file
//!   descriptor) and the log says so at most once per [`LOG_INTERVAL`]; accept errors such as
//!   "too many open files" retried with a back-off, logged at most once per interval.
//!   Accepted sockets get TCP keep-alive, so that the kernel finds peers that vanished.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use openssl::error::ErrorStack;
use openssl::pkey::{Id, PKey};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;
use tokio_openssl::SslStream;
use zeroize::Zeroizing;

use crate::error::ErrorChain;
use crate::http::{MAX_BODY_LEN, UnreadBody};

/// The TLS 1.2 suites of Mozilla's "intermediate" profile (ECDHE and DHE key exchange, AEAD).
/// TLS 1.3 suites are OpenSSL's defaults.
const MODERN_SUITES: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/// `TLS_RSA_WITH_AES_128_CBC_SHA`, `TLS_RSA_WITH_AES_256_CBC_SHA`,
/// `TLS_RSA_WITH_AES_128_CBC_SHA256`, `TLS_RSA_WITH_AES_256_CBC_SHA256` in OpenSSL's names:
/// what Alibaba's C SDKs offer (see the [compatibility notes](crate::manual::compatibility)), after the modern suites.
const LEGACY_SUITES: &str = "AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA";

/// A write that makes no progress for this long closes the connection: a client that stops
/// reading (a zero TCP window) cannot hold it, its buffers and its descriptor.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The most one listener logs about its connection cap or its accept errors: one line per
/// kind per interval, so that a flood cannot inflate the log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// PEM files of a TLS listener, and which suites it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// Whether the TLS 1.2 RSA-key-exchange AES-CBC suites of Alibaba's C SDKs are offered too.
    pub legacy_suites: bool,
}

impl TlsFiles {
    /// The certificate chain and private key, PEM files; modern suites only.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            legacy_suites: false,
        }
    }

    /// Also offers `TLS_RSA_WITH_AES_{128,256}_CBC_SHA{,256}` in TLS 1.2: the only suites the
    /// mbedtls bundled with Link SDK 4.x and iotkit-embedded 3.x speaks (see the [compatibility notes](crate::manual::compatibility)).
    /// They have no forward secrecy (a stolen key decrypts recorded sessions) and use CBC;
    /// turn them on only for such devices. They need an RSA certificate.
    #[must_use]
    pub fn legacy_suites(mut self, on: bool) -> Self {
        self.legacy_suites = on;
        self
    }

    /// Reads the files and sets up OpenSSL: TLS 1.2 and 1.3, the server's suite order, no
    /// renegotiation (with RSA key exchange, each would cost the server an RSA decryption
    /// before any authentication).
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let file = |path: &Path| {
            let path = path.to_path_buf();
            move |source: ErrorStack| TlsError::File {
                path,
                source: source.into(),
            }
        };
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(TlsError::Setup)?;
        builder.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::CIPHER_SERVER_PREFERENCE);
        if self.legacy_suites {
            builder
                .set_cipher_list(&format!("{MODERN_SUITES}:{LEGACY_SUITES}"))
                .map_err(TlsError::Setup)?;
        }
        builder
            .set_certificate_chain_file(&self.cert)
            .map_err(file(&self.cert))?;
        // Read here rather than by OpenSSL, whose default for an encrypted key is to prompt on
        // the terminal: an encrypted key fails at once.
        let pem = std::fs::read(&self.key)
            .map(Zeroizing::new)
            .map_err(|e| TlsError::File {
                path: self.key.clone(),
                source: e.into(),
            })?;
        let key = PKey::private_key_from_pem_passphrase(&pem, b"").map_err(file(&self.key))?;
        builder.set_private_key(&key).map_err(file(&self.key))?;
        builder.check_private_key().map_err(file(&self.key))?;
        let acceptor = builder.build();
        let rsa = acceptor
            .context()
            .certificate()
            .and_then(|cert| cert.public_key().ok())
            .is_some_and(|key| key.id() == Id::RSA);
        if self.legacy_suites && !rsa {
            return Err(TlsError::LegacySuitesNeedRsa {
                path: self.cert.clone(),
            });
        }
        Ok(TlsAcceptor(acceptor))
    }
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file is missing, unreadable, encrypted, or does not hold what it should (or the
    /// key does not match the certificate).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why (OpenSSL's or the file system's reason; never key material).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The legacy suites use RSA key exchange, so they need an RSA certificate.
    #[error(
        "{}: the legacy TLS suites (RSA key exchange) need an RSA certificate",
        path.display()
    )]
    LegacySuitesNeedRsa {
        /// The certificate file.
        path: PathBuf,
    },
    /// OpenSSL refused the configuration.
    #[error("TLS set-up: {0}")]
    Setup(#[source] ErrorStack),
}

/// A TLS server configuration, ready to accept connections.
#[derive(Clone)]
pub(crate) struct TlsAcceptor(SslAcceptor);

impl TlsAcceptor {
    /// The server side of a TLS handshake on `stream`, within `timeout`.
    pub(crate) async fn accept<S>(&self, stream: S, timeout: Duration) -> io::Result<SslStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(self.0.context()).map_err(io::Error::other)?;
        let mut tls = SslStream::new(ssl, stream).map_err(io::Error::other)?;
        match tokio::time::timeout(timeout, Pin::new(&mut tls).accept()).await {
            Ok(Ok(())) => Ok(tls),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

/// What every listener allows one connection and all of them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerLimits {
    /// The time a client has for its TLS handshake, then for its first HTTP request head, and
    /// (unless [`ListenerLimits::body_timeout`] says otherwise) for each request body once its
    /// head has arrived.
    pub handshake_timeout: Duration,
    /// The time a keep-alive HTTP connection may wait for its next request head (idle, or
    /// sending it): brokers' hook clients keep pooled connections this long.
    pub idle_timeout: Duration,
    /// Connections one listener holds at most (handshaking, in a request, or idle). Beyond,
    /// new connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// The largest request body read, in bytes (HTTP listeners).
    pub max_body_len: usize,
    /// The time a request body has to arrive once its head has (HTTP listeners); `None`:
    /// [`ListenerLimits::handshake_timeout`].
    pub body_timeout: Option<Duration>,
}

impl Default for ListenerLimits {
    /// 10 s handshakes and bodies, 60 s idle keep-alive, 1,024 connections, bodies of at most
    /// [`MAX_BODY_LEN`] bytes.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_body_len: MAX_BODY_LEN,
            body_timeout: None,
        }
    }
}

/// A check of a request's head that runs before its body is read ([`HttpListener::admit`]):
/// `Err` is the reply, and the body is never read.
pub type HeadCheck = Arc<dyn Fn(&axum::http::HeaderMap) -> Result<(), Box<Response>> + Send + Sync>;

/// A TCP listener that holds at most `max_connections` connections and survives accept
/// errors.
pub(crate) struct Gate {
    listener: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    max_connections: usize,
    full_log: LogGate,
    error_log: LogGate,
}

/// The back-off after an accept error, doubled after each until [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl Gate {
    pub(crate) fn new(listener: TcpListener, name: &'static str, max_connections: usize) -> Self {
        Self {
            listener,
            name,
            slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            max_connections,
            full_log: LogGate::default(),
            error_log: LogGate::default(),
        }
    }

    /// The next connection, and its slot (the connection counts until the slot is dropped).
    pub(crate) async fn accept(&self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if self.full_log.due() {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max_connections,
                        "connection limit reached: new connections wait until one closes"
                    );
                }
                match self.slots.clone().acquire_owned().await {
                    Ok(slot) => slot,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let mut backoff = MIN_ACCEPT_BACKOFF;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
                    return (stream, peer, slot);
                }
                // The peer gave up before the accept: nothing is wrong here.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    if self.error_log.due() {
                        tracing::error!(
                            listener = self.name,
                            error = %e,
                            "cannot accept connections (retrying with a back-off)"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }
}

/// At most one log line per [`LOG_INTERVAL`].
#[derive(Default)]
pub(crate) struct LogGate(Mutex<Option<Instant>>);

impl LogGate {
    pub(crate) fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// An HTTP/1.1 listener (HTTPS with TLS), ready to serve a router within its limits.
pub struct HttpListener {
    gate: Gate,
    tls: Option<TlsAcceptor>,
    limits: ListenerLimits,
    head_check: Option<HeadCheck>,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener")
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpListener {
    /// Serves on `listener`, over TLS with `tls`.
    ///
    /// # Errors
    /// [`TlsError`] when `tls` cannot be set up.
    pub fn new(
        listener: TcpListener,
        limits: ListenerLimits,
        tls: Option<&TlsFiles>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            gate: Gate::new(listener, "http", limits.max_connections),
            tls: tls.map(TlsFiles::acceptor).transpose()?,
            limits,
            head_check: None,
        })
    }

    /// Names the listener in its log lines (`listener = …`; `http` unless named), so that a
    /// full admin listener is told from a full devices' one.
    #[must_use]
    pub fn named(mut self, name: &'static str) -> Self {
        self.gate.name = name;
        self
    }

    /// Answers a request whose head `check` refuses with its reply, without reading its body
    /// (and closes the connection): the admin API's credentials are checked before a body of
    /// up to [`ListenerLimits::max_body_len`] is held in memory.
    #[must_use]
    pub fn admit(mut self, check: HeadCheck) -> Self {
        self.head_check = Some(check);
        self
    }

    /// Serves `app` until `shutdown` completes; then stops accepting and gives the requests in
    /// flight `limits.handshake_timeout` to finish.
    ///
    /// Replies spell header names in Title-Case, as Alibaba's C SDKs read them. A request body
    /// must arrive within `limits.body_timeout` of its head (else 408) and be at most
    /// `limits.max_body_len` bytes (else 413; a broker hook answers either with a deny in its
    /// dialect, see [`UnreadBody`]); both replies close the connection.
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) {
        let Self {
            gate,
            tls,
            limits,
            head_check,
        } = self;
        let timeout = limits.handshake_timeout;
        let body = BodyLimits {
            max_len: limits.max_body_len,
            timeout: limits.body_timeout.unwrap_or(timeout),
        };
        let app = app.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                read_body_within(body, head_check.clone(), request, next)
            },
        ));
        let service = TowerToHyperService::new(app);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout)
            .max_buf_size(16 * 1024)
            .title_case_headers(true)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer, slot) = tokio::select! {
                accepted = gate.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (http, service, tls, watcher) = (
                http.clone(),
                service.clone(),
                tls.clone(),
                graceful.watcher(),
            );
            tokio::spawn(async move {
                let _slot = slot;
                let served = match tls {
                    Some(tls) => match tls.accept(stream, timeout).await {
                        Ok(stream) => {
                            serve_connection(stream, &http, service, watcher, timeout).await
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    None => serve_connection(stream, &http, service, watcher, timeout).await,
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
            });
        }
        drop(gate);
        if tokio::time::timeout(timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("HTTP requests still in flight at shutdown were cut off");
        }
    }
}

type HyperService = TowerToHyperService<Router>;

/// One HTTP connection: closed when its first request head has not arrived within
/// `first_head` (later heads have the idle limit), or when a write stalls for
/// [`SEND_TIMEOUT`].
async fn serve_connection<S>(
    stream: S,
    http: &hyper::server::conn::http1::Builder,
    service: HyperService,
    watcher: hyper_util::server::graceful::Watcher,
    first_head: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(SEND_TIMEOUT));
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let service = hyper::service::service_fn(move |request| {
        seen.store(true, Ordering::Relaxed);
        service.call(request)
    });
    let connection = watcher.watch(http.serve_connection(TokioIo::new(Box::pin(stream)), service));
    let no_first_head = async {
        tokio::time::sleep(first_head).await;
        if started.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = connection => served.map_err(|e| ErrorChain(&e).to_string()),
        () = no_first_head => Err("no request head within the handshake limit".to_owned()),
    }
}

/// How much of a request body is read, and for how long.
#[derive(Clone, Copy)]
struct BodyLimits {
    max_len: usize,
    timeout: Duration,
}

/// Reads the whole request body within `limits.timeout` and at most `limits.max_len` bytes,
/// once `head_check` (if any) admits the head, so that a client sending its body slowly holds
/// its connection no longer than that. A body that is too large, too slow or cut short is not
/// passed on: the request goes on with an empty body and [`UnreadBody`], for its route to
/// answer in its dialect, and the connection closes after the reply.
async fn read_body_within(
    limits: BodyLimits,
    head_check: Option<HeadCheck>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Some(check) = head_check
        && let Err(refusal) = check(&parts.headers)
    {
        let mut refusal = *refusal;
        // The body is left unread: the connection cannot be reused.
        refusal.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return refusal;
    }
    let read = axum::body::to_bytes(body, limits.max_len);
    let unread = match tokio::time::timeout(limits.timeout, read).await {
        Ok(Ok(body)) => return next.run(Request::from_parts(parts, Body::from(body))).await,
        Ok(Err(e)) if is_length_limit(&e) => UnreadBody {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "the request body is over the size limit",
        },
        Ok(Err(_)) => UnreadBody {
            status: StatusCode::BAD_REQUEST,
            reason: "the request body was cut short",
        },
        Err(_) => UnreadBody {
            status: StatusCode::REQUEST_TIMEOUT,
            reason: "the request body did not arrive in time",
        },
    };
    parts.extensions.insert(unread);
    let mut response = next.run(Request::from_parts(parts, Body::empty())).await;
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

fn is_length_limit(error: &axum::Error) -> bool {
    ErrorChain(error)
        .iter()
        .any(|error| error.is::<http_body_util::LengthLimitError>())
}
