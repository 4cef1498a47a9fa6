//! The Mosquitto plugin (examples/mosquitto_plugin.rs) inside a real Mosquitto 2.0 broker,
//! checked with `mosquitto_pub`/`mosquitto_sub`. `.ci/run` builds the plugin and sets
//! `IOTAUTH_MOSQUITTO_PLUGIN`; without it these tests skip with a reason, except under `CI=true`.
#![cfg(feature = "cli")]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use iotauth::{
    ConnectKind, DeviceName, ProductCertificate, ProductKey, ProductSecret, RegisterOptions,
    SecureMode, SignMethod, build_register_connect,
};
use rumqttc::{Packet, QoS};
use serde_json::Value;

#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/mosquitto.rs"]
mod support;

use cli_support::{
    cli, last_line_json, mosquitto_client, required_env, sign_login, spawn_subscriber,
};
use support::{Mosquitto, MqttClient, connect_once};

/// How long a test waits for something the broker does at once.
const PROMPT: Duration = Duration::from_secs(5);

fn plugin() -> Option<String> {
    required_env("IOTAUTH_MOSQUITTO_PLUGIN")
}

/// Mosquitto with the plugin on the SQLite store in `dir`.
struct Broker {
    inner: Mosquitto,
}

impl std::ops::Deref for Broker {
    type Target = Mosquitto;
    fn deref(&self) -> &Mosquitto {
        &self.inner
    }
}

impl std::ops::DerefMut for Broker {
    fn deref_mut(&mut self) -> &mut Mosquitto {
        &mut self.inner
    }
}

impl Broker {
    fn store(&self) -> String {
        format!("sqlite://{}", self.dir.join("fleet.db").display())
    }

    fn client(&self, tool: &str, login: &[String; 3], args: &[&str]) -> Output {
        mosquitto_client(tool, self.port, login)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates the store with a product and devices (before the broker opens it); product key and
/// each device's secret.
fn fleet(store_file: &std::path::Path, names: &[&str]) -> (String, Vec<String>) {
    let store = format!("sqlite://{}", store_file.display());
    let pk = cli(&store, &["product", "create"])["productKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let secrets = names
        .iter()
        .map(|n| {
            cli(&store, &["device", "register", &pk, n])["deviceSecret"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    (pk, secrets)
}

/// The directory of the test `name`'s broker: its config, log, store and persistence files.
fn test_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("iotauth-mosquitto-{name}-{}", std::process::id()))
}

/// A broker whose store already holds one product with `names`.
fn broker_with(name: &str, plugin: &str, names: &[&str]) -> (Broker, String, Vec<String>) {
    broker_with_config(name, plugin, names, "")
}

/// Turns dynamic registration on for product `pk`; its ProductSecret.
fn registration_on(broker: &Broker, pk: &str) -> String {
    cli(
        &broker.store(),
        &["product", "dynamic-registration", pk, "on"],
    );
    cli(&broker.store(), &["product", "show", pk, "--show-secret"])["productSecret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// As [`broker_with`], with more config `lines`.
fn broker_with_config(
    name: &str,
    plugin: &str,
    names: &[&str],
    lines: &str,
) -> (Broker, String, Vec<String>) {
    let dir = test_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pk, secrets) = fleet(&dir.join("fleet.db"), names);
    let store = format!("sqlite://{}", dir.join("fleet.db").display());
    let broker = Broker {
        inner: Mosquitto::start(
            &dir,
            &format!(
                "plugin {plugin}
plugin_opt_store {store}
{lines}"
            ),
        ),
    };
    (broker, pk, secrets)
}

/// `login` with one more, unsigned client-id parameter `_conn=VALUE`, as Link SDK 4.x adds one
/// that changes on every connect.
fn with_conn(login: &[String; 3], value: &str) -> [String; 3] {
    let mut login = login.clone();
    let id = login[0].strip_suffix('|').expect("a client id ends with |");
    login[0] = format!("{id},_conn={value}|");
    login
}

fn fields(login: &[String; 3]) -> [&str; 3] {
    [&login[0], &login[1], &login[2]]
}

#[test]
fn good_credentials_connect_and_messages_reach_a_subscriber() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("deliver", &plugin, &["meter-01"]);
    let topic = format!("/{pk}/meter-01/user/get");
    let sub_login = sign_login(&pk, "meter-01", &secrets[0], "sub");
    // The publisher is the same device, whose login closes the subscriber's connection (one
    // live login per device): the subscriber gets the message on its persistent session when
    // it reconnects, as the SDKs do.
    let sub = mosquitto_client("mosquitto_sub", broker.port, &sub_login)
        .args(["-c", "-q", "1", "-t", &topic, "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let publish = broker.client(
        "mosquitto_pub",
        &sign_login(&pk, "meter-01", &secrets[0], "pub"),
        &["-q", "1", "-t", &topic, "-m", "hello"],
    );
    assert_eq!(
        publish.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sub.wait_with_output().unwrap().stdout).trim(),
        "hello"
    );
    assert_eq!(
        cli(&broker.store(), &["device", "show", &pk, "meter-01"])["state"],
        "active"
    );
    assert!(broker.log().contains("iotauth: login accepted"));
    assert!(
        !broker.log().contains(&secrets[0]),
        "no secret in the broker's log"
    );
}

#[test]
fn wrong_password_unknown_and_disabled_devices_are_not_authorised() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("refuse", &plugin, &["meter-01", "meter-02"]);
    cli(&broker.store(), &["device", "disable", &pk, "meter-02"]);
    let refused = |login: [String; 3]| {
        let out = broker.client("mosquitto_pub", &login, &["-t", "/x", "-m", "m"]);
        out.status.code() == Some(5)
            && String::from_utf8_lossy(&out.stderr).contains("not authorised")
    };
    let mut wrong = sign_login(&pk, "meter-01", &secrets[0], "wrong");
    wrong[2] = wrong[2].replace(|c: char| c.is_ascii_digit(), "a");
    assert!(refused(wrong));
    assert!(refused(sign_login(&pk, "ghost-01", &secrets[0], "ghost")));
    assert!(refused(sign_login(&pk, "meter-02", &secrets[1], "off")));
    let garbage = [
        "x".to_owned(),
        "not a user".to_owned(),
        "not a password".to_owned(),
    ];
    assert!(refused(garbage));
}

#[test]
fn a_device_cannot_use_another_devices_topics() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("acl", &plugin, &["meter-01", "other-01"]);
    let intruder = sign_login(&pk, "meter-01", &secrets[0], "intruder");
    let denied = broker.client(
        "mosquitto_sub",
        &intruder,
        &["-t", &format!("/{pk}/other-01/#"), "-C", "1", "-W", "3"],
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("denied"),
        "{denied:?}"
    );

    // The victim subscribes to its own topic; the intruder's publish there never arrives.
    let victim = sign_login(&pk, "other-01", &secrets[1], "victim");
    let topic = format!("/{pk}/other-01/user/get");
    let sub = spawn_subscriber(broker.port, &victim, &topic, 3);
    std::thread::sleep(Duration::from_millis(500));
    broker.client(
        "mosquitto_pub",
        &intruder,
        &["-t", &topic, "-m", "forged", "-q", "1"],
    );
    assert!(
        sub.wait_with_output().unwrap().stdout.is_empty(),
        "a foreign publish was delivered"
    );
    assert!(broker.log().contains("topic refused"));
}

#[test]
fn plugin_opt_topic_template_replaces_the_default_topics_as_serve_does() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with_config(
        "template",
        &plugin,
        &["meter-01"],
        "plugin_opt_topic_template devices/{pk}/{dn}/+\n",
    );
    let login = sign_login(&pk, "meter-01", &secrets[0], "tpl");
    let topic = format!("devices/{pk}/meter-01/telemetry");
    let round_trip = broker.client(
        "mosquitto_rr",
        &login,
        &["-t", &topic, "-e", &topic, "-m", "templated", "-W", "5"],
    );
    assert_eq!(
        String::from_utf8_lossy(&round_trip.stdout).trim(),
        "templated",
        "{round_trip:?}"
    );
    let default = broker.client(
        "mosquitto_sub",
        &login,
        &[
            "-t",
            &format!("/{pk}/meter-01/user/get"),
            "-C",
            "1",
            "-W",
            "2",
        ],
    );
    assert!(
        String::from_utf8_lossy(&default.stderr).contains("denied"),
        "the defaults no longer apply: {default:?}"
    );
}

/// Runs Mosquitto on `config` (after a listener line) in `dir`, expecting it to refuse to
/// start; its log.
fn refused_start(dir: &std::path::Path, config: &str) -> String {
    let path = dir.join("mosquitto.conf");
    let text = format!("listener 0 127.0.0.1\nallow_anonymous false\nlog_dest stderr\n{config}\n");
    std::fs::write(&path, text).unwrap();
    let out = Command::new("mosquitto")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `plugin_opt_master_key_file` is the key the store is sealed under: another key stops the
/// broker with the key id the secrets need; a new store beside which the plugin creates its
/// default key file says so in Mosquitto's log.
#[test]
fn the_master_key_option_is_checked_and_a_created_key_file_is_logged() {
    let Some(plugin) = plugin() else { return };
    let dir = test_dir("master-key");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    fleet(&dir.join("fleet.db"), &["sealed-01"]);
    let wrong = dir.join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let log = refused_start(
        &dir,
        &format!(
            "user root\nplugin {plugin}\nplugin_opt_store sqlite://{}\nplugin_opt_master_key_file {}",
            dir.join("fleet.db").display(),
            wrong.display()
        ),
    );
    // The key id the secrets need: the first four bytes of the SHA-256 of the key, in hex.
    let key_text = std::fs::read_to_string(dir.join("fleet.db.key")).unwrap();
    let key = hex::decode(key_text.trim()).unwrap();
    let key_id = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&key)[..4]);
    assert!(
        log.contains("iotauth: not loaded")
            && log.contains(&format!("is sealed under master key {key_id}")),
        "{key_id}: {log}"
    );
    // A new store: the plugin creates fleet2.db.key and says where.
    let broker = Mosquitto::start(
        &dir,
        &format!(
            "plugin {plugin}\nplugin_opt_store sqlite://{}",
            dir.join("fleet2.db").display()
        ),
    );
    let key_file = dir.join("fleet2.db.key");
    assert!(key_file.exists());
    drop(broker);
    let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    assert!(
        log.contains("created a master key file") && log.contains(&key_file.display().to_string()),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_store_option_stops_the_broker_with_a_clear_line() {
    let Some(plugin) = plugin() else { return };
    let dir = std::env::temp_dir().join(format!("iotauth-mosquitto-noopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = refused_start(&dir, &format!("user root\nplugin {plugin}"));
    assert!(log.contains("plugin_opt_store is required"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mosquitto drops to its `user` before plugins start: a store file that user may not open is
/// refused with its cause, the kind and the file named (issue 14).
#[test]
fn a_store_file_the_broker_user_may_not_open_stops_the_broker_with_the_cause() {
    use std::os::unix::fs::PermissionsExt;
    let Some(plugin) = plugin() else { return };
    let dir = test_dir("store-permission");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("fleet.db");
    fleet(&db, &["meter-01"]);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    // Root reads any file: the broker runs as `nobody` then, on a root-owned 0600 file;
    // otherwise the file's mode is 000.
    let (user, mode) = if root {
        ("user nobody", 0o600)
    } else {
        ("", 0o000)
    };
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(mode)).unwrap();
    let log = refused_start(
        &dir,
        &format!(
            "{user}\nplugin {plugin}\nplugin_opt_store sqlite://{}",
            db.display()
        ),
    );
    assert!(
        log.contains("the store failed (permission)")
            && log.contains(&db.display().to_string())
            && log.contains("Permission denied"),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Alibaba's linkkit (`tests/e2e/linkkit_e2e.py`) against `broker`'s port, for MQTT only,
/// with the fleet's `values` and the `scenarios` to run; its results (the last JSON line).
fn linkkit(python: &str, broker: &Broker, values: [(&str, &str); 3], scenarios: &str) -> Value {
    let port = broker.port.to_string();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/linkkit_e2e.py"
        ))
        .envs([
            ("IOTAUTH_MQTT", port.as_str()),
            ("IOTAUTH_MQTT_REGISTER", port.as_str()),
            ("IOTAUTH_HTTP", "0"),
        ])
        .envs(values)
        .env("SCENARIOS", scenarios)
        .output()
        .unwrap();
    last_line_json(&out)
}

#[test]
fn linkkit_registers_over_mqtt_through_the_broker_then_logs_in_and_only_once() {
    let (Some(plugin), Some(python)) = (plugin(), required_env("IOTAUTH_LINKKIT_PYTHON")) else {
        return;
    };
    let (broker, pk, secrets) = broker_with("linkkit", &plugin, &["lk-reg-01"]);
    let product_secret = registration_on(&broker, &pk);
    let results = linkkit(
        &python,
        &broker,
        [
            ("PK", &pk),
            ("PS", &product_secret),
            ("DN_MQTT", "lk-reg-01"),
        ],
        "mqtt,mqtt_again",
    );
    assert_eq!(
        results["mqtt_registration_secret"],
        secrets[0].as_str(),
        "{results}"
    );
    assert_eq!(results["mqtt_registered_login"], true, "{results}");
    assert_eq!(
        results["mqtt_second_registration_secret"],
        Value::Null,
        "issued once: {results}"
    );
    assert_eq!(
        cli(&broker.store(), &["device", "show", &pk, "lk-reg-01"])["state"],
        "active"
    );
    assert!(!broker.log().contains(&secrets[0]) && !broker.log().contains(&product_secret));
}

#[test]
fn linkkit_registers_without_pre_registration_through_the_broker_then_logs_in_with_its_token() {
    let (Some(plugin), Some(python)) = (plugin(), required_env("IOTAUTH_LINKKIT_PYTHON")) else {
        return;
    };
    let (broker, pk, _) = broker_with("linkkit-regnwl", &plugin, &[]);
    let product_secret = registration_on(&broker, &pk);
    let product = cli(
        &broker.store(),
        &["product", "pre-registration-free", &pk, "on"],
    );
    assert_eq!(product["preRegistrationFree"], true);
    let results = linkkit(
        &python,
        &broker,
        [
            ("PK", &pk),
            ("PS", &product_secret),
            ("DN_NWL", "lk-nwl-01"),
        ],
        "regnwl",
    );
    assert_eq!(results["connwl_login"], true, "{results}");
    let device = cli(&broker.store(), &["device", "show", &pk, "lk-nwl-01"]);
    assert_eq!(device["state"], "active");
    let client_id = results["regnwl_client_id"].as_str().unwrap_or_default();
    let core = client_id.split('|').next().unwrap_or_default();
    assert_eq!(device["clientIds"], serde_json::json!([core]));
    let token = results["regnwl_token"].as_str().unwrap_or_default();
    assert!(!token.is_empty());
    assert!(!broker.log().contains(token) && !broker.log().contains(&product_secret));
}

#[test]
fn the_broker_survives_10000_garbage_connects_and_still_serves_good_clients() {
    let Some(plugin) = plugin() else { return };
    let (mut broker, pk, secrets) = broker_with("garbage", &plugin, &["meter-01"]);
    // A fixed-seed generator: reproducible garbage of every shape.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let shapes = [
        "|",
        "&",
        ",",
        "=",
        "securemode=2",
        "signmethod=hmacsha256",
        "authType=register",
        "random=",
        "a1",
        "é",
        " ",
    ];
    let mut garbage = || {
        let len = (next() % 24) as usize;
        (0..len)
            .map(|_| shapes[(next() % shapes.len() as u64) as usize])
            .collect::<String>()
    };
    let started = Instant::now();
    let mut accepted = 0;
    for i in 0..10_000 {
        let (id, user, password) = (format!("g{i}{}", garbage()), garbage(), garbage());
        accepted += usize::from(connect_once(broker.port, &id, &user, &password));
    }
    assert_eq!(accepted, 0, "garbage was accepted");
    println!("10000 garbage connects refused in {:?}", started.elapsed());
    let good = sign_login(&pk, "meter-01", &secrets[0], "after-garbage");
    assert!(
        connect_once(broker.port, &good[0], &good[1], &good[2]),
        "a good client is still served"
    );
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker is still running"
    );
}

#[test]
fn a_new_login_closes_the_devices_older_connection_whatever_the_client_ids() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("one-login", &plugin, &["meter-01"]);
    let login = sign_login(&pk, "meter-01", &secrets[0], &format!("{pk}.meter-01"));
    let topic = format!("/{pk}/meter-01/user/get");
    let (older, newer) = (with_conn(&login, "tcp_1a"), with_conn(&login, "tcp_2b"));
    assert_ne!(older[0], newer[0]);

    let mut first = MqttClient::connect(broker.port, fields(&older), true).expect("first login");
    assert!(first.subscribe(&topic, QoS::AtMostOnce));
    let mut second = MqttClient::connect(broker.port, fields(&newer), true).expect("second login");
    assert!(second.subscribe(&topic, QoS::AtMostOnce));
    second.publish(&topic, "hello");
    assert_eq!(second.next_publish(PROMPT).as_deref(), Some("hello"));

    let (received, closed) = first.drain(PROMPT);
    assert!(closed, "the older connection is closed");
    assert!(
        !received.iter().any(|p| matches!(p, Packet::Publish(_))),
        "the older connection received nothing: {received:?}"
    );
    assert!(second.is_served(PROMPT), "the newer connection stays");
    assert!(
        broker
            .log()
            .contains(&format!("older connection of {pk}/meter-01 closed"))
    );
}

#[test]
fn of_200_concurrent_logins_of_one_device_exactly_one_stays_connected() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("200-logins", &plugin, &["meter-01"]);
    let login = sign_login(&pk, "meter-01", &secrets[0], &format!("{pk}.meter-01"));
    let logins: Vec<[String; 3]> = (0..200)
        .map(|i| with_conn(&login, &format!("tcp_{i:x}")))
        .collect();
    let port = broker.port;
    let mut clients: Vec<MqttClient> = std::thread::scope(|scope| {
        let connecting: Vec<_> = logins
            .iter()
            .map(|login| scope.spawn(move || MqttClient::connect(port, fields(login), true)))
            .collect();
        connecting
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap()
                    .unwrap_or_else(|code| panic!("refused: {code:?}"))
            })
            .collect()
    });
    // Each login closed the one before it before its own CONNACK: all are decided by now.
    let served = clients
        .iter_mut()
        .map(|client| client.is_served(PROMPT))
        .filter(|&served| served)
        .count();
    assert_eq!(served, 1, "live connections of the device");
    let closed = broker
        .log()
        .matches(&format!("older connection of {pk}/meter-01 closed"))
        .count();
    assert_eq!(closed, 199);
}

#[test]
fn a_device_presenting_another_devices_client_id_is_not_authorised_and_the_owner_stays() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("foreign-id", &plugin, &["meter-01", "victim-01"]);
    let victim = sign_login(&pk, "victim-01", &secrets[1], "shared-core");
    let mut owner = MqttClient::connect(broker.port, fields(&victim), true).expect("owner");
    let intruder = sign_login(&pk, "meter-01", &secrets[0], "shared-core");
    assert_eq!(intruder[0], victim[0], "the same MQTT client id");

    let out = broker.client(
        "mosquitto_pub",
        &intruder,
        &["-t", &format!("/{pk}/meter-01/user/update"), "-m", "m"],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authorised"));
    assert!(owner.is_served(PROMPT), "the owner stays connected");
    assert!(broker.log().contains(&format!(
        "login refused for {pk}/meter-01: the client id belongs to a session of {pk}/victim-01"
    )));
    // The refusal is about the client id: on its own, the intruder logs in.
    let own = sign_login(&pk, "meter-01", &secrets[0], "own-core");
    assert!(connect_once(broker.port, &own[0], &own[1], &own[2]));
}

/// The persistent-session story of device `victim-01` on `broker`: it subscribes at QoS 1
/// without clean session and leaves; `between` runs; a message is queued for it; `meter-01`
/// presenting its client id is not authorised; `victim-01` comes back and gets the message.
fn persistent_session_stays_with_its_device(
    broker: &mut Broker,
    pk: &str,
    secrets: &[String],
    between: impl FnOnce(&mut Broker),
) {
    let victim = sign_login(pk, "victim-01", &secrets[1], "persistent-core");
    let topic = format!("/{pk}/victim-01/user/get");
    let away = broker.client(
        "mosquitto_sub",
        &victim,
        &["-c", "-q", "1", "-t", &topic, "-E"],
    );
    assert_eq!(away.status.code(), Some(0), "{away:?}");
    between(broker);
    // Its own second login (another client id) sends it a message while it is away.
    let publisher = sign_login(pk, "victim-01", &secrets[1], "publisher");
    let sent = broker.client(
        "mosquitto_pub",
        &publisher,
        &["-q", "1", "-t", &topic, "-m", "queued"],
    );
    assert_eq!(sent.status.code(), Some(0), "{sent:?}");

    let intruder = sign_login(pk, "meter-01", &secrets[0], "persistent-core");
    assert_eq!(intruder[0], victim[0]);
    let taken = broker.client(
        "mosquitto_sub",
        &intruder,
        &[
            "-c",
            "-q",
            "1",
            "-t",
            &format!("/{pk}/meter-01/user/get"),
            "-C",
            "1",
            "-W",
            "2",
        ],
    );
    assert_eq!(taken.status.code(), Some(5), "{taken:?}");
    assert!(String::from_utf8_lossy(&taken.stderr).contains("not authorised"));

    let back = broker.client(
        "mosquitto_sub",
        &victim,
        &["-c", "-q", "1", "-t", &topic, "-C", "1", "-W", "5"],
    );
    assert_eq!(
        String::from_utf8_lossy(&back.stdout).trim(),
        "queued",
        "{back:?}"
    );
}

#[test]
fn a_persistent_session_and_its_queue_stay_with_its_device() {
    let Some(plugin) = plugin() else { return };
    let dir = test_dir("persistent");
    let (mut broker, pk, secrets) = broker_with_config(
        "persistent",
        &plugin,
        &["meter-01", "victim-01"],
        &format!("persistence true\npersistence_location {}/", dir.display()),
    );
    persistent_session_stays_with_its_device(&mut broker, &pk, &secrets, |_| {});
}

#[test]
fn with_a_sessions_file_a_persistent_session_stays_with_its_device_across_a_restart() {
    let Some(plugin) = plugin() else { return };
    let dir = test_dir("restart");
    let (mut broker, pk, secrets) = broker_with_config(
        "restart",
        &plugin,
        &["meter-01", "victim-01"],
        &format!(
            "persistence true\npersistence_location {0}/\nplugin_opt_sessions_file {0}/sessions",
            dir.display()
        ),
    );
    persistent_session_stays_with_its_device(&mut broker, &pk, &secrets, |broker| {
        broker.restart();
        assert!(
            broker
                .log()
                .contains("1 persistent session owners read back"),
            "{}",
            broker.log()
        );
    });
}

#[test]
fn beyond_max_sessions_a_new_persistent_session_is_refused_but_a_clean_one_is_not() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with_config(
        "max-sessions",
        &plugin,
        &["meter-01", "meter-02"],
        "plugin_opt_max_sessions 1",
    );
    let first = sign_login(&pk, "meter-01", &secrets[0], "first");
    let second = sign_login(&pk, "meter-02", &secrets[1], "second");
    let persistent = |login: &[String; 3]| MqttClient::connect(broker.port, fields(login), false);
    persistent(&first)
        .expect("the one persistent session")
        .disconnect();
    assert_eq!(
        persistent(&second).err(),
        Some(Some(5)),
        "one more is refused"
    );
    assert!(MqttClient::connect(broker.port, fields(&second), true).is_ok());
    // Its owner resumes the one there is.
    assert!(persistent(&first).is_ok());
    assert!(broker.log().contains("1 persistent sessions already"));
}

#[test]
fn a_registration_cannot_take_over_another_devices_registration_connection() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("registration-id", &plugin, &["reg-01", "reg-02"]);
    let product_secret = registration_on(&broker, &pk);
    let product = ProductCertificate::new(
        ProductKey::new(&pk).unwrap(),
        ProductSecret::new(&product_secret).unwrap(),
    );
    let options = RegisterOptions::new(ConnectKind::Register, "r4nd0m")
        .with_sign_method(SignMethod::HmacSha256)
        .with_secure_mode(SecureMode::TLS);
    let connect = |name: &str| {
        let creds =
            build_register_connect(&product, DeviceName::new(name).unwrap(), &options).unwrap();
        let id = creds.client_id().to_owned();
        [
            id,
            creds.username().to_owned(),
            creds.expose_password().to_string(),
        ]
    };
    let owner = connect("reg-01");
    // reg-02's own registration, presenting reg-01's client id (the core is not signed).
    let mut thief = connect("reg-02");
    thief[0] = thief[0].replacen("reg-02", "reg-01", 1);
    assert_eq!(thief[0], owner[0]);

    let mut registering =
        MqttClient::connect(broker.port, fields(&owner), true).expect("registration");
    assert_eq!(
        MqttClient::connect(broker.port, fields(&thief), true).err(),
        Some(Some(5))
    );
    let secret = registering.next_publish(PROMPT).expect("the secret");
    assert!(secret.contains(&secrets[0]), "reg-01's own secret");
    assert!(registering.drain(PROMPT).1, "then disconnected");
    assert!(broker.log().contains(&format!(
        "registration refused for {pk}/reg-02: the client id belongs to a session of {pk}/reg-01"
    )));
    // Refused before anything was issued: reg-02 registers on its own client id later.
    assert_eq!(
        cli(&broker.store(), &["device", "show", &pk, "reg-02"])["state"],
        "inactive"
    );
    let mut own = MqttClient::connect(broker.port, fields(&connect("reg-02")), true).expect("own");
    assert!(
        own.next_publish(PROMPT)
            .expect("its secret")
            .contains(&secrets[1])
    );
}

#[test]
fn a_sessions_file_is_read_back_at_start_whole_lines_only() {
    let Some(plugin) = plugin() else { return };
    let file = test_dir("sessions-file").join("sessions");
    let (mut broker, pk, secrets) = broker_with_config(
        "sessions-file",
        &plugin,
        &["meter-01", "victim-01"],
        &format!("plugin_opt_sessions_file {}", file.display()),
    );
    let victim = sign_login(&pk, "victim-01", &secrets[1], "kept-core");
    let line = |id: &str, dn: &str| format!("+ {} {pk} {dn}\n", hex::encode(id));
    // What a crash in the middle of a write leaves: a last line without its end.
    let torn = line("other-core", "meter-01");
    let torn = &torn[..torn.len() - 3];
    std::fs::write(
        &file,
        format!(
            "iotauth-sessions 1\n{}{}{torn}",
            line(&victim[0], "victim-01"),
            line("own-core", "meter-01")
        ),
    )
    .unwrap();
    broker.restart();
    assert!(
        broker
            .log()
            .contains("2 persistent session owners read back")
    );
    assert!(broker.log().contains("1 unreadable lines skipped"));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);

    let intruder = sign_login(&pk, "meter-01", &secrets[0], "kept-core");
    assert_eq!(
        MqttClient::connect(broker.port, fields(&intruder), true).err(),
        Some(Some(5))
    );
    assert!(MqttClient::connect(broker.port, fields(&victim), true).is_ok());
}
