//! The Mosquitto plugin (examples/mosquitto_plugin.rs) inside a real Mosquitto 2.0 broker,
//! checked with `mosquitto_pub`/`mosquitto_sub`. `.ci/run` builds the plugin and sets
//! `IOTAUTH_MOSQUITTO_PLUGIN`; without it these tests skip with a reason, except under `CI=true`.
#![cfg(feature = "cli")]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/iotauth.rs"]
mod cli_support;
#[path = "support/mosquitto.rs"]
mod support;

use cli_support::{
    cli, last_line_json, mosquitto_client, required_env, sign_login, spawn_subscriber,
};
use support::{Mosquitto, connect_once};

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

/// A broker whose store already holds one product with `names`.
fn broker_with(name: &str, plugin: &str, names: &[&str]) -> (Broker, String, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("iotauth-mosquitto-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pk, secrets) = fleet(&dir.join("fleet.db"), names);
    let store = format!("sqlite://{}", dir.join("fleet.db").display());
    let broker = Broker {
        inner: Mosquitto::start(
            &dir,
            &format!(
                "plugin {plugin}
plugin_opt_store {store}"
            ),
        ),
    };
    (broker, pk, secrets)
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
fn a_missing_store_option_stops_the_broker_with_a_clear_line() {
    let Some(plugin) = plugin() else { return };
    let dir = std::env::temp_dir().join(format!("iotauth-mosquitto-noopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mosquitto.conf");
    std::fs::write(&config, format!("listener 0 127.0.0.1\nallow_anonymous false\nuser root\nlog_dest stderr\nplugin {plugin}\n")).unwrap();
    let out = Command::new("mosquitto")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(log.contains("plugin_opt_store is required"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn linkkit_registers_over_mqtt_through_the_broker_then_logs_in_and_only_once() {
    let (Some(plugin), Some(python)) = (plugin(), required_env("IOTAUTH_LINKKIT_PYTHON")) else {
        return;
    };
    let (broker, pk, secrets) = broker_with("linkkit", &plugin, &["lk-reg-01"]);
    cli(
        &broker.store(),
        &["product", "dynamic-registration", &pk, "on"],
    );
    let product_secret =
        cli(&broker.store(), &["product", "show", &pk, "--show-secret"])["productSecret"]
            .as_str()
            .unwrap()
            .to_owned();
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
        .envs([
            ("PK", pk.as_str()),
            ("PS", product_secret.as_str()),
            ("DN_MQTT", "lk-reg-01"),
        ])
        .env("SCENARIOS", "mqtt,mqtt_again")
        .output()
        .unwrap();
    let results = last_line_json(&out);
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
