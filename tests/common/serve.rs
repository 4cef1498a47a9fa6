//! `iotauth serve` on loopback ports for the end-to-end tests (included by tests/serve_e2e.rs
//! and tests/device_transport.rs, after tests/common/iotauth.rs as `cli_support`): the
//! server, a fleet made with the CLI, raw HTTP, certificates, mosquitto clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli_support::{BIN, cli, mosquitto_client, sign_login};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iotauth-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `iotauth serve`.
pub struct Server {
    pub child: Child,
    pub http: u16,
    pub mqtt: u16,
    pub register: u16,
    pub log: PathBuf,
}

impl Server {
    pub fn start(store: &str, log: PathBuf, extra: &[&str]) -> Self {
        Self::start_limited(store, log, extra, None)
    }

    /// As [`Server::start`], under `ulimit -n FDS` when `fds` is given.
    pub fn start_limited(store: &str, log: PathBuf, extra: &[&str], fds: Option<u32>) -> Self {
        let (http, mqtt, register) = (free_port(), free_port(), free_port());
        let mut command = match fds {
            Some(fds) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!(r#"ulimit -n {fds} && exec "$0" "$@""#))
                    .arg(BIN);
                shell
            }
            None => Command::new(BIN),
        };
        crate::cli_support::with_key_for(&mut command, store);
        let child = command
            .args(["--store", store, "serve"])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
            .args(["--mqtt-register", &format!("127.0.0.1:{register}")])
            .args(extra)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start iotauth serve");
        let server = Self {
            child,
            http,
            mqtt,
            register,
            log,
        };
        // Every listener is up (over TLS, a TCP connection is all a plain client can see; the
        // HTTP listener is bound before the broker's).
        let tls = extra.contains(&"--tls-cert");
        let accepts = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
        let up = || {
            (tls && accepts(http) || http_request(http, "GET", "/healthz", "", &[]).is_ok())
                && accepts(mqtt)
                && accepts(register)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !up() {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http_request(self.http, "POST", path, body, headers).expect("HTTP request")
    }

    pub fn register(&self, form: &str) -> Value {
        let (status, body) = self.post(
            "/auth/register/device",
            form,
            &[("content-type", "application/x-www-form-urlencoded")],
        );
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// Asserts that the log contains none of `secrets`.
    pub fn assert_log_clean(&self, secrets: &[String]) {
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(
            log.contains("HTTP: registration, hooks"),
            "the log was captured: {log}"
        );
        for secret in secrets {
            assert!(!log.contains(secret.as_str()), "the log contains a secret");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// An EMQX hook login (`POST /hooks/emqx/authn`, JSON) through a server's HTTP port with
/// `[client id, user name, password]`: whether it was allowed.
pub fn emqx_allows(http: u16, [id, user, password]: &[String; 3]) -> bool {
    let body = serde_json::json!({"clientid": id, "username": user, "password": password});
    let (status, reply) = http_request(
        http,
        "POST",
        "/hooks/emqx/authn",
        &body.to_string(),
        &[("content-type", "application/json")],
    )
    .unwrap();
    assert_eq!(status, 200, "{reply}");
    reply.contains("\"allow\"")
}

pub fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
        .to_owned()
}

pub struct Fleet {
    pub store: String,
    pub pk: String,
    pub ps: String,
}

impl Fleet {
    pub fn new(store: String) -> Self {
        let product = cli(&store, &["product", "create", "--dynamic-registration"]);
        Self {
            pk: text(&product, "productKey"),
            ps: text(&product, "productSecret"),
            store,
        }
    }

    /// Registers a device; its secret.
    pub fn device(&self, name: &str) -> String {
        text(
            &cli(&self.store, &["device", "register", &self.pk, name]),
            "deviceSecret",
        )
    }

    pub fn form(&self, name: &str) -> String {
        text(
            &cli(
                &self.store,
                &[
                    "sign",
                    "register",
                    "--product-key",
                    &self.pk,
                    "--device-name",
                    name,
                    "--product-secret",
                    &self.ps,
                ],
            ),
            "form",
        )
    }

    pub fn product_cert(&self) -> iotauth::ProductCertificate {
        iotauth::ProductCertificate::new(
            iotauth::ProductKey::new(&self.pk).unwrap(),
            iotauth::ProductSecret::new(&self.ps).unwrap(),
        )
    }

    /// A registration CONNECT (`authType=register`) as Alibaba's SDKs build it.
    pub fn registration_connect(&self, name: &str) -> iotauth::ConnectCredentials {
        let options =
            iotauth::RegisterOptions::new(iotauth::ConnectKind::Register, "Z1TcKNepl0J8PQ1")
                .with_sign_method(iotauth::SignMethod::HmacSha256)
                .with_secure_mode(iotauth::SecureMode::TLS);
        let name = iotauth::DeviceName::new(name).unwrap();
        iotauth::build_register_connect(&self.product_cert(), name, &options).unwrap()
    }

    /// Client id, user name, password of a login.
    pub fn login(&self, name: &str, secret: &str, core: &str) -> [String; 3] {
        sign_login(&self.pk, name, secret, core)
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key (openssl).
pub fn self_signed(cert: &std::path::Path, key: &std::path::Path) {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

pub fn mosquitto_pub(port: u16, login: &[String; 3], topic: &str, message: &str) -> Output {
    mosquitto_client("mosquitto_pub", port, login)
        .args(["-t", topic, "-m", message])
        .output()
        .expect("mosquitto_pub (Debian's mosquitto-clients) must be installed")
}

/// MQTT dynamic registration with `mosquitto_sub`: it prints what arrives on `/ext/register`.
/// With `cafile`, over TLS.
pub fn mqtt_register(
    port: u16,
    creds: &iotauth::ConnectCredentials,
    cafile: Option<&str>,
) -> Output {
    let mut command = Command::new("mosquitto_sub");
    if let Some(cafile) = cafile {
        command.args(["--cafile", cafile]);
    }
    command
        .args(["-h", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-i",
            creds.client_id(),
            "-u",
            creds.username(),
        ])
        .args([
            "-P",
            &creds.expose_password(),
            "-t",
            "/ext/register",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap()
}
