//! What real devices' transports need from `iotauth serve`: HTTP replies spelled the way
//! Alibaba's C SDKs read them, the TLS suites those SDKs offer (OpenSSL's `s_client` limited to
//! them), IP-address SNI, listeners that close slow and idle clients in time and survive a
//! descriptor limit, and Alibaba's Node SDKs, unmodified, as clients (PROTOCOL.md §a.1, §b).
#![cfg(feature = "cli")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;

use cli_support::{BIN, mosquitto_client, required_env};
use serve_support::{Dir, Fleet, Server, free_port, http_request, self_signed};

/// The TLS 1.2 suites of Link SDK 4.x's and iotkit-embedded 3.x's mbedtls, in OpenSSL's names.
const C_SDK_SUITES: &str = "AES256-SHA256:AES256-SHA:AES128-SHA256:AES128-SHA";

/// Reads an HTTP reply as Link SDK 4.x's `core_http.c` does: the status line, header lines up
/// to the empty one, the body length from the line that starts with exactly
/// `"Content-Length: "`, then that many bytes. The status and body.
fn read_like_the_c_sdk(reply: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the header")?;
    let head = std::str::from_utf8(&reply[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let length: usize = lines
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .ok_or_else(|| format!("no \"Content-Length: \" line in {head:?}"))?
        .parse()
        .map_err(|_| "Content-Length is not a number")?;
    let body = &reply[end + 4..];
    if body.len() < length {
        return Err(format!("{} body bytes of {length}", body.len()));
    }
    Ok((status, body[..length].to_vec()))
}

/// Header names in the reply that are not canonical Title-Case (`Content-Type`).
fn names_not_title_case(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(reply);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.to_owned()))
        .filter(|name| {
            !name.split('-').all(|word| {
                let mut chars = word.chars();
                chars.next().is_some_and(|c| c.is_ascii_uppercase())
                    && chars.all(|c| !c.is_ascii_uppercase())
            })
        })
        .collect()
}

/// One request over plain TCP; everything the server sent until it closed.
fn exchange(port: u16, request: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    reply
}

fn post(path: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const FORM: &str = "application/x-www-form-urlencoded";

/// What `openssl s_client` printed: stdout (the server's bytes with `-quiet`), stderr.
struct Session {
    stdout: Vec<u8>,
    stderr: String,
}

/// `openssl s_client` to 127.0.0.1:`port`, the certificate checked against `cafile`,
/// offering only `suites` in TLS 1.2 when given (else its defaults). Without `request`, the
/// handshake alone. With it, `request` is sent over the session and what the server sends is
/// read until it closes or `enough` bytes came (the broker keeps a connection open after
/// DISCONNECT until the client closes it, as MQTT allows), 20 s at most.
fn s_client(
    port: u16,
    cafile: &str,
    suites: Option<&str>,
    request: Option<&[u8]>,
    enough: usize,
) -> Session {
    let mut command = Command::new("openssl");
    command.arg("s_client");
    if let Some(suites) = suites {
        command.args(["-tls1_2", "-cipher", suites]);
    }
    let mut child = command
        .args(["-CAfile", cafile, "-verify_return_error"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(if request.is_some() {
            &["-quiet"][..]
        } else {
            &[]
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    match request {
        Some(request) => stdin.write_all(request).unwrap(),
        None => drop(stdin),
    }
    let mut stdout = child.stdout.take().unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut read = Vec::new();
        let mut buffer = [0u8; 4096];
        while read.len() < enough {
            match stdout.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
        let _ = sender.send(read);
    });
    let stdout = received.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    Session {
        stdout: stdout.expect("s_client ended within 20 s"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s_client_with_c_sdk_suites(
    port: u16,
    cafile: &str,
    request: Option<&[u8]>,
    enough: usize,
) -> Session {
    s_client(port, cafile, Some(C_SDK_SUITES), request, enough)
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) with `[client id, user name, password]`.
fn connect_packet([id, user, password]: &[String; 3]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xc2, 0x00, 60];
    for field in [id, user, password] {
        let length = u16::try_from(field.len()).unwrap();
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut remaining = body.len();
    loop {
        let byte = u8::try_from(remaining % 128).unwrap();
        remaining /= 128;
        packet.push(if remaining > 0 { byte | 0x80 } else { byte });
        if remaining == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// The protocol version and suite `s_client` reported, or `None` when the handshake failed.
fn negotiated(out: &Session) -> Option<(String, String)> {
    // "New, TLSv1.2, Cipher is AES256-SHA256", "New, SSLv3, Cipher is AES128-SHA" (the
    // version that defined the suite), "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384",
    // "New, (NONE), Cipher is (NONE)".
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (version, suite) = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("New, "))
        .find_map(|line| line.split_once(", Cipher is "))?;
    (suite.trim() != "(NONE)").then(|| (version.to_owned(), suite.trim().to_owned()))
}

#[test]
fn every_reply_spells_content_length_as_the_c_sdks_read_it() {
    let dir = Dir::new("title-case");
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let secret = fleet.device("meter-01");
    let server = Server::start(&fleet.store, dir.0.join("serve.log"), &[]);

    let registration = exchange(
        server.http,
        &post("/auth/register/device", FORM, &fleet.form("meter-01")),
    );
    let (status, body) = read_like_the_c_sdk(&registration).unwrap();
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["data"]["deviceSecret"], secret.as_str());
    let text = String::from_utf8_lossy(&registration);
    assert!(!text.contains("chunked"), "{text}");

    let emqx = json!({"clientid": "x", "username": "a&b", "password": "p"}).to_string();
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    for request in [
        post("/auth/register/device", FORM, &fleet.form("meter-02")),
        post("/auth/register/device", FORM, "productKey=x"),
        post("/hooks/emqx/authn", "application/json", &emqx),
        post("/hooks/emqx/authn", "application/json", "{"),
        get("/healthz"),
        get("/metrics"),
        get("/no-such-route"),
    ] {
        let reply = exchange(server.http, &request);
        let line = request.lines().next().unwrap_or_default();
        assert!(
            read_like_the_c_sdk(&reply).is_ok(),
            "{line}: {}",
            String::from_utf8_lossy(&reply)
        );
        assert_eq!(names_not_title_case(&reply), Vec::<String>::new(), "{line}");
    }
    server.assert_log_clean(&[secret, fleet.ps.clone()]);
}

#[test]
fn the_c_sdks_tls_suites_reach_every_tls_listener_with_legacy_suites_only() {
    let dir = Dir::new("legacy-suites");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    self_signed(&cert, &key);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let secret = fleet.device("meter-01");
    let login_secret = fleet.device("meter-02");
    let start = |name: &str, legacy: bool| {
        let ws = free_port();
        let mut args = vec!["--tls-cert", cert, "--tls-key", key];
        if legacy {
            args.push("--tls-legacy-suites");
        }
        let ws_address = format!("127.0.0.1:{ws}");
        args.extend(["--mqtt-ws", &ws_address]);
        let server = Server::start(&fleet.store, dir.0.join(name), &args);
        (server, ws)
    };

    // Without --tls-legacy-suites: a default client gets TLS 1.3, the C SDKs' suites nothing.
    let (modern, modern_ws) = start("modern.log", false);
    for port in [modern.http, modern.mqtt, modern.register, modern_ws] {
        let default = s_client(port, cert, None, None, usize::MAX);
        assert_eq!(
            negotiated(&default).map(|(version, _)| version).as_deref(),
            Some("TLSv1.3"),
            "port {port}: {}",
            default.stderr
        );
        let out = s_client_with_c_sdk_suites(port, cert, None, usize::MAX);
        assert_eq!(negotiated(&out), None, "port {port}");
        assert!(
            out.stderr.contains("handshake failure"),
            "port {port}: {}",
            out.stderr
        );
    }

    // With it: those suites too, and still TLS 1.3 for a client that offers it.
    let (legacy, legacy_ws) = start("legacy.log", true);
    for port in [legacy.http, legacy.mqtt, legacy.register, legacy_ws] {
        let out = s_client_with_c_sdk_suites(port, cert, None, usize::MAX);
        let suite = negotiated(&out).map(|(_, suite)| suite);
        assert!(
            suite
                .as_deref()
                .is_some_and(|s| C_SDK_SUITES.split(':').any(|c| c == s)),
            "port {port}: {suite:?} {}",
            out.stderr
        );
        let default = s_client(port, cert, None, None, usize::MAX);
        assert_eq!(
            negotiated(&default).map(|(version, _)| version).as_deref(),
            Some("TLSv1.3"),
            "port {port}"
        );
    }

    // HTTPS registration over such a session, read the way the C SDK reads it.
    let request = post("/auth/register/device", FORM, &fleet.form("meter-01"));
    let out = s_client_with_c_sdk_suites(legacy.http, cert, Some(request.as_bytes()), usize::MAX);
    let (status, body) =
        read_like_the_c_sdk(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["data"]["deviceSecret"], secret.as_str());

    // An MQTT login over such a session.
    let login = fleet.login("meter-02", &login_secret, "legacy");
    let packets = connect_packet(&login);
    let out = s_client_with_c_sdk_suites(legacy.mqtt, cert, Some(&packets), 4);
    assert_eq!(
        out.stdout,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK accepted: {}",
        out.stderr
    );
    legacy.assert_log_clean(&[secret, login_secret, login[2].clone()]);
}

#[test]
fn legacy_suites_with_an_ec_certificate_are_refused_at_start() {
    let dir = Dir::new("legacy-ec");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let out = Command::new(BIN)
        .args(["--store", "memory:", "serve", "--http", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-legacy-suites")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("need an RSA certificate"), "{stderr}");
}

/// Reads from `stream` until the server closes it (end of file or reset); what arrived and
/// when, or `None` if it was still open after `limit`.
fn closed_within(
    mut stream: TcpStream,
    started: Instant,
    limit: Duration,
) -> Option<(Duration, Vec<u8>)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return Some((started.elapsed(), received)),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some((started.elapsed(), received)),
        }
    }
}

#[test]
fn slow_and_idle_clients_are_closed_within_their_timeouts() {
    let dir = Dir::new("slowloris");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    self_signed(&cert, &key);
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let timeout = ["--handshake-timeout-secs", "2", "--idle-timeout-secs", "4"];
    let plain = Server::start(&fleet.store, dir.0.join("plain.log"), &timeout);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls_args = [&timeout[..], &["--tls-cert", cert, "--tls-key", key]].concat();
    let tls = Server::start(&fleet.store, dir.0.join("tls.log"), &tls_args);

    let idle_after_a_request = |port| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream
    };
    let kinds: [(&str, u16, &[u8]); 5] = [
        ("partial request head", plain.http, b"POST /auth/register/device HTTP/1.1\r\nHost: x\r\n"),
        ("partial body", plain.http, b"POST /auth/register/device HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nproductKey="),
        ("idle keep-alive", plain.http, b""),
        ("no TLS handshake (HTTPS)", tls.http, b""),
        ("no TLS handshake (MQTT)", tls.mqtt, b""),
    ];
    let started = Instant::now();
    let mut open = Vec::new();
    for (kind, port, sent) in kinds {
        for _ in 0..100 {
            let mut stream = if kind == "idle keep-alive" {
                idle_after_a_request(port)
            } else {
                TcpStream::connect(("127.0.0.1", port)).unwrap()
            };
            stream.write_all(sent).unwrap();
            open.push((kind, stream));
        }
    }
    // A TLS session that completes and then says nothing: rmqtt's CONNECT limit applies.
    let silent_tls: Vec<_> = (0..20)
        .map(|_| {
            Command::new("openssl")
                .args(["s_client", "-CAfile", cert, "-connect"])
                .arg(format!("127.0.0.1:{}", tls.mqtt))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // 2 s limits (4 s idle): every connection must be gone well before twice that.
    let limit = Duration::from_secs(8);
    for (kind, stream) in open {
        let (after, received) = closed_within(stream, started, limit)
            .unwrap_or_else(|| panic!("{kind}: still open after {limit:?}"));
        let reply = String::from_utf8_lossy(&received);
        let (earliest, reply_starts) = match kind {
            "partial body" => (2, "HTTP/1.1 408"),
            // Kept open past the 2 s handshake limit: pooled hook connections live on.
            "idle keep-alive" => (3, "HTTP/1.1 200"),
            _ => (1, ""),
        };
        assert!(reply.starts_with(reply_starts), "{kind}: {reply}");
        if reply_starts.is_empty() {
            assert_eq!(reply, "", "{kind}");
        }
        assert!(
            after >= Duration::from_secs(earliest),
            "{kind}: closed too early ({after:?})"
        );
    }
    for mut client in silent_tls {
        let ended = loop {
            if client.try_wait().unwrap().is_some() {
                break true;
            }
            if started.elapsed() > limit {
                let _ = client.kill();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            ended,
            "a silent TLS session on MQTT still open after {limit:?}"
        );
    }
    // And the listeners still serve.
    assert_eq!(
        http_request(plain.http, "GET", "/healthz", "", &[])
            .unwrap()
            .0,
        200
    );
}

#[test]
fn under_a_256_descriptor_limit_idle_http_connections_do_not_take_the_listeners_down() {
    let dir = Dir::new("fd-limit-http");
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let secret = fleet.device("meter-01");
    let args = ["--handshake-timeout-secs", "2"];
    let server = Server::start_limited(&fleet.store, dir.0.join("serve.log"), &args, Some(256));
    let log_before = std::fs::metadata(&server.log).unwrap().len();
    // Held open by this test throughout: the server must close them itself.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", server.http)).ok())
        .collect();
    assert!(
        idle.len() > 256,
        "only {} connections were made",
        idle.len()
    );
    let started = Instant::now();
    let mut answered = None;
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok((200, _)) = http_request(server.http, "GET", "/healthz", "", &[]) {
            answered = Some(started.elapsed());
            break;
        }
    }
    let login = fleet.login("meter-01", &secret, "fd");
    let mqtt = mosquitto_client("mosquitto_pub", server.mqtt, &login)
        .args(["-t", "/x", "-m", "m"])
        .output()
        .unwrap();
    let grown = std::fs::metadata(&server.log).unwrap().len() - log_before;
    println!("/healthz answered after {answered:?}; the log grew by {grown} bytes");
    let text = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        text.contains("Too many open files"),
        "the descriptors ran out (else this test proves nothing)"
    );
    assert!(answered.is_some(), "/healthz never answered again");
    let lines = text.matches("cannot accept connections").count();
    let allowed = 1 + started.elapsed().as_secs() / 10;
    assert!(
        (1..=allowed as usize).contains(&lines),
        "{lines} accept-error lines in {:?}",
        started.elapsed()
    );
    assert_eq!(mqtt.status.code(), Some(0), "{mqtt:?}");
    assert!(grown < 1 << 20, "the log grew by {grown} bytes");
    drop(idle);
}

#[test]
fn a_full_http_listener_queues_new_connections_and_says_so_once() {
    let dir = Dir::new("http-cap");
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let args = [
        "--handshake-timeout-secs",
        "2",
        "--max-http-connections",
        "20",
    ];
    let server = Server::start(&fleet.store, dir.0.join("serve.log"), &args);
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", server.http)).unwrap())
        .collect();
    // Queued behind the idle ones, then served once they have timed out.
    let (status, _) = http_request(server.http, "GET", "/healthz", "", &[]).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&server.log).unwrap();
    let lines = log.matches("connection limit reached").count();
    let allowed = 1 + elapsed.as_secs() / 10;
    assert!(
        (1..=allowed as usize).contains(&lines),
        "{lines} lines about the limit in {elapsed:?}"
    );
    drop(idle);
}

/// Runs one case of tests/e2e/node/sdk_e2e.js; its JSON result.
fn node_sdk(driver: &str, case: &Value, cafile: Option<&str>) -> Value {
    let mut command = Command::new("node");
    command.arg(driver).arg(case.to_string());
    if let Some(cafile) = cafile {
        command.env("NODE_EXTRA_CA_CERTS", cafile);
    }
    let out = command.output().expect("node");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{case}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn alibabas_node_sdks_log_in_and_register_over_tcp_and_tls() {
    let Some(driver) = required_env("IOTAUTH_NODE_SDK_DRIVER") else {
        return;
    };
    let dir = Dir::new("node-sdks");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    self_signed(&cert, &key);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let plain = Server::start(&fleet.store, dir.0.join("plain.log"), &[]);
    let tls = Server::start(
        &fleet.store,
        dir.0.join("tls.log"),
        &["--tls-cert", cert, "--tls-key", key],
    );
    let mut secrets = vec![fleet.ps.clone()];
    let mut cases = Vec::new();
    for (transport, server, cafile) in [("tcp", &plain, None), ("tls", &tls, Some(cert))] {
        let broker = match cafile {
            None => format!("mqtt://127.0.0.1:{}", server.mqtt),
            Some(_) => format!("mqtts://localhost:{}", server.mqtt),
        };
        let register_url = match cafile {
            None => format!("http://127.0.0.1:{}/auth/register/device", server.http),
            Some(_) => format!("https://localhost:{}/auth/register/device", server.http),
        };
        // Each SDK's sign methods that it signs correctly (alibabacloud-iot-device-sdk signs
        // HMAC-SHA1 whatever it advertises, PROTOCOL.md §h.1: refused below).
        for (sdk, method, expect) in [
            ("alibabacloud", "sha1", "connected"),
            ("aliyun", "md5", "connected"),
            ("aliyun", "sha1", "connected"),
            ("aliyun", "sha256", "connected"),
            ("alibabacloud", "md5", "refused"),
        ] {
            let name = format!("{transport}-{sdk}-{method}");
            let secret = fleet.device(&name);
            secrets.push(secret.clone());
            let case = json!({"case": "login", "sdk": sdk, "productKey": fleet.pk,
                "deviceName": name, "deviceSecret": secret, "brokerUrl": broker,
                "signAlgorithm": method});
            cases.push((case, cafile, expect));
            if expect == "connected" {
                let wrong = json!({"case": "login", "sdk": sdk, "productKey": fleet.pk,
                    "deviceName": name, "deviceSecret": "0".repeat(32), "brokerUrl": broker,
                    "signAlgorithm": method});
                cases.push((wrong, cafile, "refused"));
            }
        }
        for sdk in ["alibabacloud", "aliyun"] {
            let name = format!("{transport}-{sdk}-registered");
            secrets.push(fleet.device(&name));
            let case = json!({"case": "register", "sdk": sdk, "productKey": fleet.pk,
                "productSecret": fleet.ps, "deviceName": name, "registerURL": register_url,
                "then": {"case": "login", "sdk": sdk, "productKey": fleet.pk,
                    "deviceName": name, "brokerUrl": broker}});
            cases.push((case, cafile, "registered"));
        }
    }
    let results: Vec<(Value, &str, Value, Option<Value>)> = std::thread::scope(|scope| {
        let running: Vec<_> = cases
            .iter()
            .map(|(case, cafile, expect)| {
                let driver = &driver;
                scope.spawn(move || {
                    let mut case = case.clone();
                    let then = case.as_object_mut().and_then(|c| c.remove("then"));
                    let result = node_sdk(driver, &case, *cafile);
                    let login = then.map(|mut then| {
                        then["deviceSecret"] = result["deviceSecret"].clone();
                        node_sdk(driver, &then, *cafile)
                    });
                    (case, *expect, result, login)
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (case, expect, result, login) in results {
        match expect {
            "connected" => {
                assert_eq!(result["outcome"], "connected", "{case}: {result}");
                for step in ["published", "subscribed", "received"] {
                    assert_eq!(result[step], true, "{case}: {step} in {result}");
                }
            }
            "refused" => {
                assert_eq!(result["outcome"], "error", "{case}: {result}");
                assert_eq!(result["code"], 4, "{case}: the CONNACK code in {result}");
            }
            _ => {
                assert_eq!(result["outcome"], "registered", "{case}: {result}");
                let login = login.unwrap();
                assert_eq!(login["outcome"], "connected", "{case}: then {login}");
            }
        }
    }
    plain.assert_log_clean(&secrets);
    tls.assert_log_clean(&secrets);
}

#[test]
fn an_http_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let dir = Dir::new("slow-reader");
    let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
    let server = Server::start(&fleet.store, dir.0.join("serve.log"), &[]);
    // Pipelined requests whose replies fill both sides' socket buffers; never read.
    let mut stream = TcpStream::connect(("127.0.0.1", server.http)).unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    stream.write_all(request.as_bytes()).unwrap();
    // The server's write stalls; after 30 s without progress it gives the connection up.
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(60) && !closed {
        std::thread::sleep(Duration::from_secs(1));
        let log = std::fs::read_to_string(&server.log).unwrap();
        closed = log
            .lines()
            .any(|line| line.contains("HTTP connection ended") && line.contains("timed out"));
    }
    println!("closed after {:?}", started.elapsed());
    assert!(closed, "the stalled connection is still served");
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "closed before the send limit: {:?}",
        started.elapsed()
    );
    drop(stream);
}

/// The CLI's device side sends (no second tool for provisioning): `sign register --url`
/// posts the form over HTTP and HTTPS (the server's certificate checked against `--cafile`),
/// `sign mqtt --url` connects over mqtt:// and mqtts://: a register connect receives its
/// DeviceSecret on /ext/register, a login connects; a second registration and a wrong secret
/// are refused with exit 1 and say why.
#[test]
fn the_cli_device_side_sends_over_http_and_mqtt_with_and_without_tls() {
    for tls in [false, true] {
        let dir = Dir::new(if tls { "send-tls" } else { "send" });
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        let mut extra = Vec::new();
        if tls {
            self_signed(&cert, &key);
            extra = vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ];
        }
        let fleet = Fleet::new(format!("sqlite://{}", dir.0.join("fleet.db").display()));
        let (http_secret, mqtt_secret) = (fleet.device("meter-01"), fleet.device("meter-02"));
        let server = Server::start(&fleet.store, dir.0.join("serve.log"), &extra);
        let (http, mqtt) = if tls {
            ("https", "mqtts")
        } else {
            ("http", "mqtt")
        };
        let register_url = format!("{http}://localhost:{}/auth/register/device", server.http);
        let mqtt_url = format!("{mqtt}://localhost:{}", server.mqtt);
        let device_side = |args: &[&str]| {
            let mut command = Command::new(BIN);
            command
                .args(args)
                .args(["--product-key", &fleet.pk])
                .env("IOTAUTH_PRODUCT_SECRET", &fleet.ps)
                .env_remove("IOTAUTH_DEVICE_SECRET");
            if tls {
                command.arg("--cafile").arg(&cert);
            }
            command.output().unwrap()
        };
        let json = |out: &std::process::Output| -> Value {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let refused = |out: &std::process::Output, why: &str| {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains(why), "{stderr}");
        };

        // Each registration once: HTTPS's second is refused with Alibaba's code, MQTT's CONNACK.
        for (registration, name, secret, second) in [
            (
                &["register", "--url", &register_url][..],
                "meter-01",
                &http_secret,
                "registration refused",
            ),
            (
                &["mqtt", "--auth-type", "register", "--url", &mqtt_url][..],
                "meter-02",
                &mqtt_secret,
                "CONNACK",
            ),
        ] {
            let args = [&["sign"][..], registration, &["--device-name", name]].concat();
            let issued = json(&device_side(&args));
            assert_eq!(
                issued["deviceSecret"],
                json!(secret),
                "{tls} {registration:?}"
            );
            refused(&device_side(&args), second);
        }

        let login = |secret: &str| {
            device_side(&[
                "sign",
                "mqtt",
                "--device-name",
                "meter-01",
                "--device-secret",
                secret,
                "--url",
                &mqtt_url,
            ])
        };
        assert_eq!(json(&login(&http_secret)), json!({"connected": true}));
        refused(&login(&mqtt_secret), "CONNACK");
        server.assert_log_clean(&[http_secret.clone(), mqtt_secret.clone(), fleet.ps.clone()]);
    }
}
