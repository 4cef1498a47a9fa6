//! A client cannot inflate the log (issue 14): every field taken from the network is logged
//! with a length cap, or not at all. Each refused request below carries a 65,000-byte field
//! and may add at most 2 KB to the log of an `iotauth serve` logging at `trace`.
#![cfg(feature = "cli")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;

use serve_support::{Dir, Fleet, Server, http_request};

const LONG: usize = 65_000;

/// A request to make, once.
type Request = Box<dyn FnOnce()>;
const MAX_LOG_GROWTH: u64 = 2_000;

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return out;
        }
    }
}

/// A CONNECT (MQTT 3.1.1 or 5) with user name and password; the broker's first reply bytes.
fn connect(port: u16, version: u8, client_id: &[u8], username: &[u8], password: &[u8]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend([version, 0xC2, 0, 60]);
    if version == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id));
    body.extend(string(username));
    body.extend(string(password));
    let mut packet = vec![0x10];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The broker may refuse before it has read the whole packet.
    let _ = stream.write_all(&packet);
    let mut reply = [0; 8];
    let n = stream.read(&mut reply).unwrap_or(0);
    reply[..n].to_vec()
}

fn log_len(server: &Server) -> u64 {
    std::fs::metadata(&server.log).unwrap().len()
}

/// The log's growth from `request`, once the log has been quiet for 300 ms.
fn growth(server: &Server, request: impl FnOnce()) -> u64 {
    let before = log_len(server);
    request();
    let mut last = log_len(server);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(50));
        let now = log_len(server);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
    }
    last - before
}

#[test]
fn a_65_kb_field_in_a_refused_request_adds_under_2_kb_of_log() {
    let dir = Dir::new("log-hygiene");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    let fleet = Fleet::new(store.clone());
    fleet.device("meter-01");
    let server = Server::start(&store, dir.0.join("serve.log"), &[]);
    let (mqtt, http) = (server.mqtt, server.http);
    let long = "x".repeat(LONG);
    let user = format!("meter-01&{}", fleet.pk);
    let long_client_id = format!("{long}|securemode=3,signmethod=hmacsha1|");
    let password = "0".repeat(40);
    let mut cases: Vec<(&str, Request)> = Vec::new();
    for version in [4, 5] {
        let (id, user, pw) = (long_client_id.clone(), user.clone(), password.clone());
        cases.push((
            "MQTT client id",
            Box::new(move || {
                connect(mqtt, version, id.as_bytes(), user.as_bytes(), pw.as_bytes());
            }),
        ));
        let field = long.clone();
        cases.push((
            "MQTT user name",
            Box::new(move || {
                connect(mqtt, version, b"c|securemode=3|", field.as_bytes(), b"00");
            }),
        ));
        let field = long.clone();
        cases.push((
            "MQTT password",
            Box::new(move || {
                connect(
                    mqtt,
                    version,
                    b"c|securemode=3|",
                    b"meter-01&x",
                    field.as_bytes(),
                );
            }),
        ));
    }
    // Over HTTP, a 65,000-byte body is refused unread; 15,000 bytes reach the parsers.
    for length in [LONG, 15_000] {
        let client_id = format!("{}|securemode=3,signmethod=hmacsha1|", &long[..length]);
        let login =
            serde_json::json!({"clientid": client_id, "username": user, "password": password});
        let hook = login.to_string();
        cases.push((
            "EMQX hook client id",
            Box::new(move || {
                http_request(http, "POST", "/hooks/emqx/authn", &hook, &[]).unwrap();
            }),
        ));
        let name = &long[..length];
        let form = format!("productKey={}&deviceName={name}&random=1&sign=00", fleet.pk);
        cases.push((
            "registration device name",
            Box::new(move || {
                http_request(http, "POST", "/auth/register/device", &form, &[]).unwrap();
            }),
        ));
    }
    let header = long.clone();
    cases.push((
        "HTTP header",
        Box::new(move || {
            let _ = http_request(
                http,
                "POST",
                "/hooks/vernemq",
                "{}",
                &[("vernemq-hook", &header)],
            );
        }),
    ));
    for (what, request) in cases {
        let added = growth(&server, request);
        assert!(
            added < MAX_LOG_GROWTH,
            "a long {what} added {added} bytes of log"
        );
    }
    // The requests reached the services: the refusals were logged, at their capped size.
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("login refused"), "{log}");
}

/// Refusals are logged at most `REFUSAL_LINES_PER_SECOND` (20) a second per kind, with a line
/// saying how many were left out: a flood of refused logins cannot flood the log.
#[test]
fn a_flood_of_refused_logins_logs_a_bounded_number_of_lines() {
    let dir = Dir::new("log-flood");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    let fleet = Fleet::new(store.clone());
    fleet.device("meter-01");
    let server = Server::start(&store, dir.0.join("serve.log"), &[]);
    let login = serde_json::json!({
        "clientid": "c|securemode=3,signmethod=hmacsha1|",
        "username": format!("meter-01&{}", fleet.pk),
        "password": "0".repeat(40),
    })
    .to_string();
    let started = Instant::now();
    for _ in 0..200 {
        let (status, body) =
            http_request(server.http, "POST", "/hooks/emqx/authn", &login, &[]).unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"result":"deny"}"#));
    }
    // One more after the window: it logs how many were left out.
    std::thread::sleep(Duration::from_millis(1_100));
    http_request(server.http, "POST", "/hooks/emqx/authn", &login, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let seconds = started.elapsed().as_secs() + 1;
    let log = std::fs::read_to_string(&server.log).unwrap();
    let lines = log.lines().filter(|l| l.contains("login refused")).count() as u64;
    assert!(
        lines <= 20 * seconds,
        "{lines} refusal lines in {seconds} s for 201 refusals"
    );
    assert!(
        log.contains("the rest of this second's are not logged")
            && log.contains("refusals not logged (over the rate limit)"),
        "the first left-out line is announced, and the count follows: {log}"
    );
    let (_, metrics) = http_request(server.http, "GET", "/metrics", "", &[]).unwrap();
    assert!(
        metrics.contains("iotauth_logins_total{result=\"refused\",reason=\"bad_credentials\"} 201"),
        "every refusal is counted: {metrics}"
    );
}
