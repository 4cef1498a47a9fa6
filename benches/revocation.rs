//! Revocation latency: from `iotauth device disable` started in another process to the
//! device's connection being closed by each broker, with a 10-minute cache, over
//! `IOTAUTH_REVOCATION_TRIALS` trials (100 by default; 3 under `--test`, as CI runs benches):
//! - SQLite, one `iotauth serve` (embedded broker);
//! - PostgreSQL (`DATABASE_URL`), two `iotauth serve` nodes and one Mosquitto with the plugin
//!   (`IOTAUTH_MOSQUITTO_PLUGIN`); skipped with a printed reason without them.
//!
//! Each trial connects the device to every broker, waits a random 0–250 ms (so that the
//! disable falls anywhere in the followers' 50 ms polling period, not always at the same
//! phase), disables it and waits for every connection to close, then enables it again (not
//! timed). Prints p50, p99 and the maximum per
//! broker. Run: `cargo bench --all-features --bench revocation`.

#[allow(dead_code)]
#[path = "../tests/common/iotauth.rs"]
mod cli_support;
#[path = "../tests/common/serve.rs"]
mod serve_support;
#[path = "../tests/common/mosquitto.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{BIN, cli, with_key_for};
use serve_support::{Dir, Fleet, Server};
use support::{Incoming, Mosquitto, MqttClient, connect_when_allowed};

/// The longest a trial waits for a connection to close, or for a login after the enable.
const GIVE_UP: Duration = Duration::from_secs(10);

/// A broker port and its name in the report.
struct Target {
    name: &'static str,
    port: u16,
}

/// Per target, the latency of each trial.
fn measure(fleet: &Fleet, targets: &[Target], trials: usize) -> Vec<Vec<Duration>> {
    let name = "bench-revoke";
    let secret = fleet.device(name);
    let logins: Vec<[String; 3]> = targets
        .iter()
        .map(|t| fleet.login(name, &secret, &format!("bench{}", t.port)))
        .collect();
    let mut latencies = vec![Vec::with_capacity(trials); targets.len()];
    for _ in 0..trials {
        let mut clients: Vec<MqttClient> = targets
            .iter()
            .zip(&logins)
            .map(|(t, login)| {
                connect_when_allowed(t.port, [&login[0], &login[1], &login[2]], GIVE_UP)
                    .unwrap_or_else(|code| panic!("login refused on {}: {code:?}", t.port))
            })
            .collect();
        let mut jitter = [0u8; 1];
        getrandom::fill(&mut jitter).unwrap();
        std::thread::sleep(Duration::from_millis(u64::from(jitter[0])));
        let mut disable = Command::new(BIN);
        disable
            .args(["--store", &fleet.store])
            .args(["device", "disable", &fleet.pk, name]);
        with_key_for(&mut disable, &fleet.store);
        let start = Instant::now();
        let done = disable.output().unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        for (client, latency) in clients.iter_mut().zip(&mut latencies) {
            loop {
                match client.next(GIVE_UP.saturating_sub(start.elapsed())) {
                    Incoming::Closed => break,
                    Incoming::Nothing => panic!("a connection stayed open for {GIVE_UP:?}"),
                    Incoming::Packet(_) => {}
                }
            }
            latency.push(start.elapsed());
        }
        cli(&fleet.store, &["device", "enable", &fleet.pk, name]);
    }
    latencies
}

fn report(setup: &str, targets: &[Target], latencies: Vec<Vec<Duration>>) {
    for (target, mut trials) in targets.iter().zip(latencies) {
        trials.sort();
        let at = |q: f64| trials[((q * trials.len() as f64).ceil() as usize).saturating_sub(1)];
        println!(
            "revocation/{setup}/{}: {} trials, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            target.name,
            trials.len(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            trials[trials.len() - 1].as_secs_f64() * 1e3,
        );
    }
}

fn main() {
    let trials = if std::env::args().any(|a| a == "--test") {
        3
    } else {
        std::env::var("IOTAUTH_REVOCATION_TRIALS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100)
    };
    let ttl = ["--cache-ttl-secs", "600"];

    let dir = Dir::new("bench-revocation");
    let store = format!("sqlite://{}", dir.0.join("fleet.db").display());
    let fleet = Fleet::new(store.clone());
    let server = Server::start(&store, dir.0.join("serve.log"), &ttl);
    let targets = [Target {
        name: "serve",
        port: server.mqtt,
    }];
    report("sqlite", &targets, measure(&fleet, &targets, trials));
    drop(server);

    let (Ok(url), Ok(plugin)) = (
        std::env::var("DATABASE_URL"),
        std::env::var("IOTAUTH_MOSQUITTO_PLUGIN"),
    ) else {
        println!(
            "revocation/postgres skipped: DATABASE_URL or IOTAUTH_MOSQUITTO_PLUGIN is not set"
        );
        return;
    };
    let fleet = Fleet::new(url.clone());
    let a = Server::start(&url, dir.0.join("a.log"), &ttl);
    let b = Server::start(&url, dir.0.join("b.log"), &ttl);
    let key = std::env::var("IOTAUTH_TEST_MASTER_KEY_FILE")
        .map(|key| format!("plugin_opt_master_key_file {key}\n"))
        .unwrap_or_default();
    let mosquitto = Mosquitto::start(
        &dir.0.join("mosquitto"),
        &format!("plugin {plugin}\nplugin_opt_store {url}\n{key}plugin_opt_cache_ttl_secs 600"),
    );
    let targets = [
        Target {
            name: "serve-a",
            port: a.mqtt,
        },
        Target {
            name: "serve-b",
            port: b.mqtt,
        },
        Target {
            name: "mosquitto-plugin",
            port: mosquitto.port,
        },
    ];
    report("postgres", &targets, measure(&fleet, &targets, trials));
}
