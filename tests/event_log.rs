//! The lifecycle event log end to end: `iotauth audit verify` catches tampering, two servers on
//! one PostgreSQL database write one valid chain, and every serving process follows the log:
//! a device disabled, reset or deleted by the admin CLI is disconnected by every broker
//! (`iotauth serve`'s embedded one, Mosquitto with the plugin) and its old credentials are
//! refused everywhere, with a cache TTL of 10 minutes; the follower survives a PostgreSQL
//! restart.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;
#[path = "common/mosquitto.rs"]
mod support;

use cli_support::{BIN, cli, required_env, with_key_for};
use serve_support::{Dir, Fleet, Server, emqx_allows, free_port};
use support::{Incoming, Mosquitto, MqttClient, connect_when_allowed};

/// How long a test waits for what should happen within a second (the revocation bench
/// measures how long it takes).
const PROMPT: Duration = Duration::from_secs(5);
/// The cache TTL the brokers run with: long, so that only the event log can explain a change
/// seen at once.
const TEN_MINUTES: &str = "600";

/// `iotauth --store STORE ARGS…`: exit code, stdout, stderr.
fn run(store: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(BIN);
    command.args(["--store", store]).args(args);
    let out = with_key_for(&mut command, store).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sqlite(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Runs SQL on a SQLite file with Python's `sqlite3` (an operator's tool, not ours).
fn tamper(db: &Path, sql: &str) {
    let status = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(db)
        .arg(sql)
        .status()
        .unwrap();
    assert!(status.success(), "{sql}");
}

#[test]
fn audit_verify_names_the_first_edited_deleted_or_swapped_event() {
    let dir = Dir::new("audit");
    let pristine = dir.0.join("pristine.db");
    let store = sqlite(&pristine);
    let fleet = Fleet::new(store.clone());
    fleet.device("meter-01");
    for action in ["disable", "enable", "reset", "delete"] {
        cli(&store, &["device", action, &fleet.pk, "meter-01"]);
    }
    let (code, out, _) = run(&store, &["audit", "verify"]);
    assert_eq!(code, Some(0));
    let verdict: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (verdict["valid"].as_bool(), verdict["events"].as_u64()),
        (Some(true), Some(6))
    );

    let missing = sqlite(&dir.0.join("typo.db"));
    let (code, out, err) = run(&missing, &["audit", "verify"]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("no store at"), "{err}");
    assert!(
        !dir.0.join("typo.db").exists(),
        "a mistyped path creates nothing"
    );

    let (_, events, _) = run(&store, &["events", "--device", "meter-01"]);
    let kinds: Vec<String> = events
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "\"device_registered\"",
            "\"disabled\"",
            "\"enabled\"",
            "\"reset\"",
            "\"deleted\""
        ]
    );
    assert!(!events.contains(&fleet.ps), "no secret in an event");

    let cases = [
        (
            "edit",
            "UPDATE iotauth_events SET kind = 'enabled' WHERE seq = 3",
            "event 3 was edited",
        ),
        (
            "edit the actor",
            "UPDATE iotauth_events SET actor = 'server:x' WHERE seq = 2",
            "event 2 was edited",
        ),
        (
            "delete",
            "DELETE FROM iotauth_events WHERE seq = 4",
            "event 5 follows event 3",
        ),
        (
            "swap",
            "UPDATE iotauth_events SET seq = -1 WHERE seq = 3; \
             UPDATE iotauth_events SET seq = 3 WHERE seq = 4; \
             UPDATE iotauth_events SET seq = 4 WHERE seq = -1;",
            "event 3 was edited",
        ),
        (
            "delete the newest",
            "DELETE FROM iotauth_events WHERE seq = 6",
            "the log ends at event 5 but the store's head names event 6",
        ),
        (
            "unparsable",
            "UPDATE iotauth_events SET device_name = 'bad name!' WHERE seq = 2",
            "event 2 was edited: its device_name does not parse",
        ),
        (
            "delete the head",
            "DELETE FROM iotauth_event_head",
            "iotauth_event_head has no row",
        ),
        (
            "set the head back",
            "UPDATE iotauth_event_head SET seq = 4, \
             hash = (SELECT hash FROM iotauth_events WHERE seq = 4)",
            "the log goes on to event 6 past the store's head, event 4",
        ),
        (
            "edit one and make a later one unparsable",
            "UPDATE iotauth_events SET kind = 'enabled' WHERE seq = 3; \
             UPDATE iotauth_events SET device_name = 'bad name!' WHERE seq = 5",
            "event 3 was edited: its hash",
        ),
    ];
    for (what, sql, expected) in cases {
        let copy = dir.0.join(format!("{}.db", what.replace(' ', "-")));
        std::fs::copy(&pristine, &copy).unwrap();
        std::fs::copy(
            iotauth::store::SecretsAtRest::default_key_file(&pristine),
            iotauth::store::SecretsAtRest::default_key_file(&copy),
        )
        .unwrap();
        tamper(&copy, sql);
        let (code, out, err) = run(&sqlite(&copy), &["audit", "verify"]);
        assert_eq!(code, Some(1), "{what}: {out}{err}");
        assert!(
            err.contains("the event log is broken") && err.contains(expected),
            "{what}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    }
}

/// A connection that the broker must close: how long it took, `None` if it did not within
/// [`PROMPT`].
fn closed_within(client: &mut MqttClient) -> Option<Duration> {
    let start = Instant::now();
    loop {
        match client.next(PROMPT.saturating_sub(start.elapsed())) {
            Incoming::Closed => return Some(start.elapsed()),
            Incoming::Nothing => return None,
            Incoming::Packet(_) => {}
        }
    }
}

fn connect(port: u16, login: &[String; 3]) -> MqttClient {
    MqttClient::connect(port, [&login[0], &login[1], &login[2]], true)
        .unwrap_or_else(|code| panic!("the login on port {port} was refused: {code:?}"))
}

fn refused(port: u16, login: &[String; 3]) -> bool {
    MqttClient::connect(port, [&login[0], &login[1], &login[2]], true).is_err()
}

/// For each of disable, reset and delete, a device connected to every MQTT port in `ports`
/// (and known to every hook in `hooks`, cached there) is revoked by the admin CLI in another
/// process: every connection closes, and its old credentials are refused everywhere.
fn every_front_end_revokes(fleet: &Fleet, ports: &[u16], hooks: &[u16]) {
    for action in ["disable", "reset", "delete"] {
        let name = format!("revoke-{action}");
        let secret = fleet.device(&name);
        let logins: Vec<[String; 3]> = ports
            .iter()
            .map(|port| fleet.login(&name, &secret, &format!("c{port}")))
            .collect();
        let mut clients: Vec<MqttClient> = ports
            .iter()
            .zip(&logins)
            .map(|(port, login)| connect(*port, login))
            .collect();
        for http in hooks {
            assert!(
                emqx_allows(*http, &logins[0]),
                "{action}: hook login before"
            );
        }
        // A bystander of the same product stays connected.
        let bystander_secret = fleet.device(&format!("stays-{action}"));
        let mut bystander = connect(
            ports[0],
            &fleet.login(&format!("stays-{action}"), &bystander_secret, "stay"),
        );

        cli(&fleet.store, &["device", action, &fleet.pk, &name]);
        for (client, port) in clients.iter_mut().zip(ports) {
            let closed = closed_within(client);
            assert!(
                closed.is_some(),
                "{action}: port {port} kept the connection"
            );
        }
        for (port, login) in ports.iter().zip(&logins) {
            assert!(
                refused(*port, login),
                "{action}: port {port} let the old login in"
            );
        }
        for http in hooks {
            assert!(
                !emqx_allows(*http, &logins[0]),
                "{action}: hook {http} allowed"
            );
        }
        assert!(
            bystander.is_served(PROMPT),
            "{action}: the bystander was cut"
        );
    }
}

#[test]
fn one_server_on_sqlite_disconnects_and_refuses_revoked_devices_at_once() {
    let dir = Dir::new("revoke-sqlite");
    let store = sqlite(&dir.0.join("fleet.db"));
    let fleet = Fleet::new(store.clone());
    let server = Server::start(
        &store,
        dir.0.join("serve.log"),
        &["--cache-ttl-secs", TEN_MINUTES, "--node-id", "sqlite-1"],
    );
    every_front_end_revokes(&fleet, &[server.mqtt], &[server.http]);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("revoked: ending the device's session"),
        "{log}"
    );
}

/// Mosquitto with the plugin on `store`, its master key given.
fn mosquitto_on(
    dir: &Path,
    plugin: &str,
    store: &str,
    key: Option<&str>,
    actor: &str,
) -> Mosquitto {
    let key = key.map_or(String::new(), |key| {
        format!("plugin_opt_master_key_file {key}\n")
    });
    Mosquitto::start(
        dir,
        &format!(
            "plugin {plugin}\nplugin_opt_store {store}\n{key}\
             plugin_opt_cache_ttl_secs {TEN_MINUTES}\nplugin_opt_actor {actor}"
        ),
    )
}

#[test]
fn two_servers_and_mosquitto_on_postgres_disconnect_and_refuse_revoked_devices() {
    let (Some(url), Some(plugin)) = (
        required_env("DATABASE_URL"),
        required_env("IOTAUTH_MOSQUITTO_PLUGIN"),
    ) else {
        return;
    };
    let key = std::env::var("IOTAUTH_TEST_MASTER_KEY_FILE").ok();
    let dir = Dir::new("revoke-postgres");
    let fleet = Fleet::new(url.clone());
    let ttl = ["--cache-ttl-secs", TEN_MINUTES];
    let a = Server::start(
        &url,
        dir.0.join("a.log"),
        &[&ttl[..], &["--node-id", "pg-a"]].concat(),
    );
    let b = Server::start(
        &url,
        dir.0.join("b.log"),
        &[&ttl[..], &["--node-id", "pg-b"]].concat(),
    );
    let mosquitto = mosquitto_on(
        &dir.0.join("mosquitto"),
        &plugin,
        &url,
        key.as_deref(),
        "plugin:pg-m",
    );
    every_front_end_revokes(&fleet, &[a.mqtt, b.mqtt, mosquitto.port], &[a.http, b.http]);
    assert!(
        mosquitto.log().contains("iotauth: revoked: disconnecting"),
        "{}",
        mosquitto.log()
    );
}

#[test]
fn two_servers_registering_at_once_on_postgres_write_one_valid_chain() {
    let Some(url) = required_env("DATABASE_URL") else {
        return;
    };
    let dir = Dir::new("burst");
    let fleet = Fleet::new(url.clone());
    let a = Server::start(&url, dir.0.join("a.log"), &["--node-id", "burst-a"]);
    let b = Server::start(&url, dir.0.join("b.log"), &["--node-id", "burst-b"]);
    let names: Vec<String> = (0..24).map(|i| format!("burst-{i:02}")).collect();
    let list = dir.0.join("names");
    std::fs::write(&list, names.join("\n")).unwrap();
    let (code, _, err) = run(
        &url,
        &[
            "device",
            "register-batch",
            &fleet.pk,
            list.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let forms: Vec<String> = names.iter().map(|n| fleet.form(n)).collect();
    std::thread::scope(|scope| {
        for (i, form) in forms.iter().enumerate() {
            let server = if i % 2 == 0 { &a } else { &b };
            scope.spawn(move || {
                let reply = server.register(form);
                assert_eq!(reply["code"], 200, "{reply}");
            });
        }
    });
    let (code, out, err) = run(&url, &["audit", "verify"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"valid\":true"), "{out}");
    let (_, events, _) = run(&url, &["events", "--product", &fleet.pk]);
    let issued_by = |actor: &str| {
        events
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|e| e["kind"] == "secret_issued" && e["actor"] == actor)
            .count()
    };
    assert_eq!(
        issued_by("server:burst-a") + issued_by("server:burst-b"),
        names.len()
    );
    assert_eq!(issued_by("server:burst-a"), names.len() / 2);
}

/// A PostgreSQL cluster of this test's own, which it may stop and start.
struct OwnPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn start(dir: &Path) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries (.ci/postgres.sh installs them)")
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .max()
            .unwrap();
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pwfile"), "iotauth-test\n").unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        assert!(chown.unwrap().success());
        let as_postgres = |tool: &str| {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
            command
        };
        let init = as_postgres("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", dir.join("pwfile").display()))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let own = Self {
            bin,
            dir,
            port: free_port(),
        };
        own.pg_ctl("start");
        own
    }

    fn pg_ctl(&self, action: &str) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-m", "fast", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg(action)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres:iotauth-test@127.0.0.1:{}/postgres",
            self.port
        )
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.pg_ctl("stop");
    }
}

/// Waits until `path` contains `text`.
fn wait_for_line(path: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_follower_survives_a_postgres_restart_and_misses_nothing() {
    if required_env("DATABASE_URL").is_none() {
        return;
    }
    let dir = Dir::new("pg-restart");
    let postgres = OwnPostgres::start(&dir.0);
    let url = postgres.url();
    let fleet = Fleet::new(url.clone());
    let names = ["after-restart-1", "after-restart-2"];
    let logins: Vec<[String; 3]> = names
        .iter()
        .map(|name| fleet.login(name, &fleet.device(name), name))
        .collect();
    let server = Server::start(
        &url,
        dir.0.join("serve.log"),
        &["--cache-ttl-secs", TEN_MINUTES, "--node-id", "restart"],
    );
    let mut clients: Vec<MqttClient> = logins.iter().map(|l| connect(server.mqtt, l)).collect();

    postgres.pg_ctl("stop");
    wait_for_line(&server.log, "cannot read the event log");
    postgres.pg_ctl("start");
    // Both changes before the server reads the log again: it catches up from where it was.
    cli(&url, &["device", "disable", &fleet.pk, names[0]]);
    cli(&url, &["device", "reset", &fleet.pk, names[1]]);
    for (client, name) in clients.iter_mut().zip(names) {
        assert!(
            closed_within(client).is_some(),
            "{name} kept its connection"
        );
    }
    for (login, name) in logins.iter().zip(names) {
        assert!(refused(server.mqtt, login), "{name}'s old login was let in");
    }
    wait_for_line(&server.log, "following the event log again");
}

/// Connects once the broker lets the login in (it may take a moment to read the change).
fn connect_once_served(port: u16, login: &[String; 3]) -> MqttClient {
    connect_when_allowed(port, [&login[0], &login[1], &login[2]], PROMPT)
        .unwrap_or_else(|code| panic!("still refused: {code:?}"))
}

#[test]
fn a_device_enabled_or_reset_again_logs_in_at_once_and_is_not_cut_by_the_old_revocation() {
    let dir = Dir::new("re-enable");
    let store = sqlite(&dir.0.join("fleet.db"));
    let fleet = Fleet::new(store.clone());
    let server = Server::start(
        &store,
        dir.0.join("serve.log"),
        &["--cache-ttl-secs", TEN_MINUTES],
    );
    let secret = fleet.device("comes-back");
    let login = fleet.login("comes-back", &secret, "back");
    let mut client = connect(server.mqtt, &login);
    cli(&store, &["device", "disable", &fleet.pk, "comes-back"]);
    assert!(closed_within(&mut client).is_some());
    cli(&store, &["device", "enable", &fleet.pk, "comes-back"]);
    // Within the broker's 10 s revocation window: a login admitted after the revocation stays.
    let mut client = connect_once_served(server.mqtt, &login);
    assert!(
        client.is_served(PROMPT),
        "the login after the enable was cut"
    );

    let reset = cli(&store, &["device", "reset", &fleet.pk, "comes-back"]);
    assert!(closed_within(&mut client).is_some());
    let new_secret = text_of(&reset, "deviceSecret");
    let mut client =
        connect_once_served(server.mqtt, &fleet.login("comes-back", &new_secret, "back"));
    assert!(
        client.is_served(PROMPT),
        "the login with the new secret was cut"
    );
}

fn text_of(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}"))
        .to_owned()
}
