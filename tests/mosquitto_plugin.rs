//! The Mosquitto plugin (examples/mosquitto_plugin.rs) inside a real Mosquitto 2.0 broker,
//! checked with `mosquitto_pub`/`mosquitto_sub`. `.ci/run` builds the plugin and sets
//! `IOTAUTH_MOSQUITTO_PLUGIN`; without it these tests skip with a reason, except under `CI=true`.
#![cfg(feature = "cli")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_iotauth");

fn plugin() -> Option<String> {
    match std::env::var("IOTAUTH_MOSQUITTO_PLUGIN") {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but IOTAUTH_MOSQUITTO_PLUGIN is not set")
        }
        _ => {
            eprintln!("skipping: IOTAUTH_MOSQUITTO_PLUGIN is not set (.ci/run builds the plugin)");
            None
        }
    }
}

struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    /// Mosquitto with the plugin, in the test's directory; `options` are extra config lines.
    fn start(name: &str, plugin: &str, options: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("iotauth-mosquitto-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n\
                 # The store file must be writable by the broker's user.\nuser root\n\
                 log_dest stderr\nlog_type all\nplugin {plugin}\n{options}\n"
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto (Debian's mosquitto package) must be installed");
        let broker = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not come up: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn store(&self) -> String {
        format!("sqlite://{}", self.dir.join("fleet.db").display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn client(&self, tool: &str, login: &[String; 3], args: &[&str]) -> Output {
        Command::new(tool)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-i",
                &login[0],
                "-u",
                &login[1],
                "-P",
                &login[2],
            ])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(store: &str, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["--store", store])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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

fn login(pk: &str, name: &str, secret: &str, core: &str) -> [String; 3] {
    let out = Command::new(BIN)
        .args([
            "sign",
            "mqtt",
            "--product-key",
            pk,
            "--device-name",
            name,
            "--device-secret",
            secret,
            "--client-id",
            core,
            "--secure-mode",
            "3",
        ])
        .output()
        .unwrap();
    let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
    ["clientId", "username", "password"].map(|k| signed[k].as_str().unwrap().to_owned())
}

/// A broker whose store already holds one product with `names`.
fn broker_with(name: &str, plugin: &str, names: &[&str]) -> (Broker, String, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("iotauth-mosquitto-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pk, secrets) = fleet(&dir.join("fleet.db"), names);
    let store = format!("sqlite://{}", dir.join("fleet.db").display());
    let broker = Broker::start(name, plugin, &format!("plugin_opt_store {store}"));
    (broker, pk, secrets)
}

#[test]
fn good_credentials_connect_and_messages_reach_a_subscriber() {
    let Some(plugin) = plugin() else { return };
    let (broker, pk, secrets) = broker_with("deliver", &plugin, &["meter-01"]);
    let topic = format!("/{pk}/meter-01/user/get");
    let sub_login = login(&pk, "meter-01", &secrets[0], "sub");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-i",
            &sub_login[0],
            "-u",
            &sub_login[1],
            "-P",
            &sub_login[2],
        ])
        .args(["-t", &topic, "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let publish = broker.client(
        "mosquitto_pub",
        &login(&pk, "meter-01", &secrets[0], "pub"),
        &["-t", &topic, "-m", "hello"],
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
    let mut wrong = login(&pk, "meter-01", &secrets[0], "wrong");
    wrong[2] = wrong[2].replace(|c: char| c.is_ascii_digit(), "a");
    assert!(refused(wrong));
    assert!(refused(login(&pk, "ghost-01", &secrets[0], "ghost")));
    assert!(refused(login(&pk, "meter-02", &secrets[1], "off")));
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
    let intruder = login(&pk, "meter-01", &secrets[0], "intruder");
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
    let victim = login(&pk, "other-01", &secrets[1], "victim");
    let topic = format!("/{pk}/other-01/user/get");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-i",
            &victim[0],
            "-u",
            &victim[1],
            "-P",
            &victim[2],
        ])
        .args(["-t", &topic, "-C", "1", "-W", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
