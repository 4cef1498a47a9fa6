//! The device side, sent: `sign register --url` posts the form (HTTP/1.1 by hyper, TLS by
//! OpenSSL) and `sign mqtt --url` connects (MQTT 3.1.1 packets by rumqttc's codec), so that
//! provisioning scripts and tests need no second tool.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use axum::http::{Request, Uri, header};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use iotauth::{ConnectCredentials, RegisterReply};
use openssl::ssl::{SslConnector, SslMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Failure;

/// The longest an exchange may take, from the connection to the last byte wanted.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Cap on what an MQTT exchange reads before the delivery (a CONNACK and a PUBLISH of a few
/// hundred bytes).
const MAX_MQTT_BYTES: usize = 16 * 1024;

/// A connection, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where to send: `scheme://host[:port][/path]`, the scheme one of `plain` or `secure` (the
/// latter over TLS), the port the scheme's default when absent.
struct Endpoint {
    tls: bool,
    /// As the URL spells it (an IPv6 address in brackets), for the `Host` header.
    authority: String,
    /// The name or address to connect to and to check the certificate against.
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    fn parse(
        url: &str,
        cafile: Option<&Path>,
        plain: (&str, u16),
        secure: (&str, u16),
    ) -> Result<Self, Failure> {
        let usage = || {
            Failure::Usage(format!(
                "--url must be {}://HOST[:PORT]… or {}://HOST[:PORT]…",
                plain.0, secure.0
            ))
        };
        let uri: Uri = url.parse().map_err(|_| usage())?;
        let (tls, default_port) = match uri.scheme_str() {
            Some(scheme) if scheme.eq_ignore_ascii_case(plain.0) => (false, plain.1),
            Some(scheme) if scheme.eq_ignore_ascii_case(secure.0) => (true, secure.1),
            _ => return Err(usage()),
        };
        if cafile.is_some() && !tls {
            return Err(Failure::Usage(format!(
                "--cafile is for a {}:// URL",
                secure.0
            )));
        }
        let authority = uri.authority().ok_or_else(usage)?;
        if authority.as_str().contains('@') {
            return Err(Failure::Usage(
                "--url must not hold a user name or password".into(),
            ));
        }
        // A port that is not a u16 (`:99999`, which `Authority::port` reads as none) is
        // refused, not replaced by the default.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, text)) if !text.contains(']') => text.parse().map_err(|_| usage())?,
            _ => default_port,
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            tls,
            authority: authority.as_str().to_owned(),
            host,
            port,
            path: uri
                .path_and_query()
                .map_or("/", |path| path.as_str())
                .to_owned(),
        })
    }

    /// A connection to the endpoint; over TLS, the server's certificate checked against the
    /// system's roots and `cafile`'s, and against the host name.
    async fn open(&self, cafile: Option<&Path>) -> Result<Box<dyn Stream>, Failure> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::rejected(format!("cannot connect to {}: {e}", self.authority)))?;
        if !self.tls {
            return Ok(Box::new(tcp));
        }
        let mut connector = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
        if let Some(cafile) = cafile {
            connector
                .set_ca_file(cafile)
                .map_err(|e| Failure::rejected(format!("cannot read {}: {e}", cafile.display())))?;
        }
        let ssl = connector
            .build()
            .configure()
            .and_then(|config| config.into_ssl(&self.host))
            .map_err(tls_error)?;
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(tls_error)?;
        if let Err(e) = Pin::new(&mut stream).connect().await {
            // OpenSSL's verdict on the certificate says why (self-signed, wrong name, expired).
            let verdict = stream.ssl().verify_result();
            return Err(Failure::rejected(format!(
                "TLS with {} failed: {e} ({})",
                self.authority,
                verdict.error_string()
            )));
        }
        Ok(Box::new(stream))
    }
}

fn tls_error(e: openssl::error::ErrorStack) -> Failure {
    Failure::rejected(format!("TLS setup failed: {e}"))
}

/// `future` on a runtime of its own, within [`TIMEOUT`]. The runtime is then dropped without
/// waiting for its blocking threads: a name lookup that hangs must not hold the exit.
fn run<T>(future: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    let runtime = crate::current_thread_runtime()?;
    let outcome = runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, future)
            .await
            .map_err(|_| Failure::rejected(format!("no answer within {TIMEOUT:?}")))?
    });
    runtime.shutdown_background();
    outcome
}

/// POSTs a dynamic-registration form to `url` (`http://` or `https://`, the path
/// `/auth/register/device` on Alibaba's and iotauth's servers) and reads the reply as a
/// device does ([`RegisterReply::parse`]: capped, strict).
pub(crate) fn post_register_form(
    url: &str,
    cafile: Option<&Path>,
    form: &str,
) -> Result<RegisterReply, Failure> {
    let endpoint = Endpoint::parse(url, cafile, ("http", 80), ("https", 443))?;
    run(async {
        let stream = endpoint.open(cafile).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(Failure::rejected)?;
        tokio::spawn(connection);
        let request = Request::post(endpoint.path.as_str())
            .header(header::HOST, endpoint.authority.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_owned())))
            .map_err(Failure::rejected)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(Failure::rejected)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::rejected(format!(
                "the server answered HTTP {status}"
            )));
        }
        let body = Limited::new(response.into_body(), RegisterReply::MAX_LEN)
            .collect()
            .await
            .map_err(|e| Failure::rejected(format!("the reply could not be read: {e}")))?
            .to_bytes();
        RegisterReply::parse(&body).map_err(|e| {
            Failure::rejected(format!(
                "the reply (HTTP {status}) is not a registration reply: {e}"
            ))
        })
    })
}

/// Connects to `url` (`mqtt://` or `mqtts://`) with `creds`. Refused unless the CONNACK
/// accepts; then, with a `delivery` topic (a registration connect: `/ext/register` or
/// `/ext/regnwl`), the payload of the broker's PUBLISH on it, else nothing.
pub(crate) fn mqtt_connect(
    url: &str,
    cafile: Option<&Path>,
    creds: &ConnectCredentials,
    delivery: Option<&str>,
) -> Result<Option<Bytes>, Failure> {
    let endpoint = Endpoint::parse(url, cafile, ("mqtt", 1883), ("mqtts", 8883))?;
    run(async {
        let mut stream = endpoint.open(cafile).await?;
        let mut connect = rumqttc::Connect::new(creds.client_id());
        connect.keep_alive = 60;
        connect.set_login(creds.username(), creds.expose_password().as_str());
        let mut packet = BytesMut::new();
        connect.write(&mut packet).map_err(Failure::rejected)?;
        let broken = |e: std::io::Error| Failure::rejected(format!("the broker's connection: {e}"));
        stream.write_all(&packet).await.map_err(broken)?;

        let mut received = BytesMut::new();
        let mut connected = false;
        loop {
            match rumqttc::Packet::read(&mut received, MAX_MQTT_BYTES) {
                Ok(rumqttc::Packet::ConnAck(ack)) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        return Err(Failure::rejected(format!("CONNACK: {:?}", ack.code)));
                    }
                    connected = true;
                    if delivery.is_none() {
                        let mut disconnect = BytesMut::new();
                        if rumqttc::Disconnect.write(&mut disconnect).is_ok() {
                            let _ = stream.write_all(&disconnect).await;
                        }
                        return Ok(None);
                    }
                }
                Ok(rumqttc::Packet::Publish(publish))
                    if connected && Some(publish.topic.as_str()) == delivery =>
                {
                    return Ok(Some(publish.payload));
                }
                Ok(rumqttc::Packet::Publish(_)) if !connected => {
                    return Err(Failure::rejected("the broker published before its CONNACK"));
                }
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    if received.len() > MAX_MQTT_BYTES {
                        return Err(Failure::rejected("the broker sent too much"));
                    }
                    let read = stream.read_buf(&mut received).await.map_err(broken)?;
                    if read == 0 {
                        return Err(Failure::rejected(
                            "the broker closed the connection before delivering",
                        ));
                    }
                }
                Err(e) => return Err(Failure::rejected(format!("bad MQTT packet: {e}"))),
            }
        }
    })
}
