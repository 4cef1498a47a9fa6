//! A leaked ProductSecret, through `iotauth serve`'s HTTPS registration endpoint (plain HTTP
//! here): the harvesting loop the issue describes gets at most the burst before 429 and the
//! automatic switch-off; a fleet registering at 5 a second is unaffected; two servers on one
//! PostgreSQL share the limit; with `--unique-random`, a captured form replayed before and after
//! a reset is refused and a fresh random is not.
#![cfg(feature = "cli")]

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;

use std::time::{Duration, Instant};

use cli_support::{cli, required_env};
use iotauth::{DeviceName, SignMethod, build_register_form};
use serde_json::Value;
use serve_support::{Dir, Fleet, Server};

/// A signed registration form of `name`, with `random`.
fn form(fleet: &Fleet, name: &str, random: &str) -> String {
    build_register_form(
        &fleet.product_cert(),
        DeviceName::new(name).unwrap(),
        random,
        SignMethod::HmacSha256,
    )
    .unwrap()
    .body()
    .to_owned()
}

/// Registers `names` in advance, with one `device register-batch`.
fn register_batch(fleet: &Fleet, dir: &Dir, names: &[String]) {
    let file = dir.0.join("names.txt");
    std::fs::write(&file, names.join("\n")).unwrap();
    let mut command = std::process::Command::new(cli_support::BIN);
    command
        .args([
            "--store",
            &fleet.store,
            "device",
            "register-batch",
            &fleet.pk,
        ])
        .arg(&file);
    let out = cli_support::with_key_for(&mut command, &fleet.store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn code(reply: &Value) -> u64 {
    reply["code"].as_u64().unwrap()
}

fn product(fleet: &Fleet) -> Value {
    cli(&fleet.store, &["product", "show", &fleet.pk])
}

#[test]
fn a_harvesting_loop_gets_at_most_the_burst_then_429_and_the_product_is_switched_off() {
    let dir = Dir::new("harvest");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    let fleet = Fleet::new(store.clone());
    let names: Vec<String> = (0..150).map(|i| format!("pre-{i:03}")).collect();
    register_batch(&fleet, &dir, &names);
    let server = Server::start(&store, dir.0.join("serve.log"), &[]);
    let limit = &product(&fleet)["registrationLimit"];
    assert_eq!(
        (limit["rate"].as_u64(), limit["burst"].as_u64()),
        (Some(10), Some(100))
    );

    // The loop: every pre-registered name as fast as one client goes (the secrets), then
    // unknown names (probing for more).
    let started = Instant::now();
    let (mut issued, mut throttled, mut codes) = (0u64, Vec::new(), Vec::new());
    let probes = (0..150).map(|i| format!("probe-{i:03}"));
    for name in names.iter().cloned().chain(probes) {
        let reply = server.register(&form(&fleet, &name, "h1"));
        match code(&reply) {
            200 => issued += 1,
            429 => throttled.push(name),
            other => codes.push(other),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "harvest: {issued} issued, {} throttled, {elapsed:.2} s",
        throttled.len()
    );
    assert!(
        issued as f64 <= 100.0 + 10.0 * elapsed.ceil(),
        "{issued} issued in {elapsed:.2} s: more than the burst and the rate"
    );
    assert!(issued >= 100, "the burst is served: {issued}");
    assert!(!throttled.is_empty(), "429 once the bucket is empty");
    // More than 100 unknown names within a minute switch dynamic registration off: what follows
    // is 6601, and the switch stays off.
    assert!(codes.contains(&6100), "unknown names are refused as such");
    assert!(
        codes.contains(&6601),
        "then the product is switched off: {codes:?}"
    );
    let shown = product(&fleet);
    assert_eq!(shown["dynamicRegistration"], false);
    assert!(
        shown["switchedOffByBreakerAt"].as_u64().is_some(),
        "{shown}"
    );
    let (_, metrics) =
        serve_support::http_request(server.http, "GET", "/metrics", "", &[]).unwrap();
    assert!(
        metrics.contains("iotauth_registration_breaker_trips_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("iotauth_registrations_total{result=\"refused\",code=\"429\"}"));
    let log = std::fs::read_to_string(dir.0.join("serve.log")).unwrap();
    let warnings: Vec<_> = log
        .lines()
        .filter(|l| l.contains("dynamic registration switched off"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warn line: {warnings:?}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains(&fleet.pk));

    // The operator turns it back on (and sets the limits again, which fills the bucket):
    // registrations are served again.
    cli(
        &store,
        &["product", "dynamic-registration", &fleet.pk, "on"],
    );
    let shown = product(&fleet);
    assert_eq!(shown["dynamicRegistration"], true);
    assert!(shown.get("switchedOffByBreakerAt").is_none(), "{shown}");
    cli(
        &store,
        &["product", "registration-limit", &fleet.pk, "--rate", "10"],
    );
    // A device the loop did not get to (which names it got depends on how fast it ran).
    cli(&store, &["device", "register", &fleet.pk, "after-001"]);
    let reply = server.register(&form(&fleet, "after-001", "after"));
    assert_eq!(code(&reply), 200, "served again: {reply}");
}

#[test]
fn a_fleet_registering_at_five_a_second_is_unaffected() {
    let dir = Dir::new("fleet-5");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    let fleet = Fleet::new(store.clone());
    let names: Vec<String> = (0..15).map(|i| format!("dev-{i:02}")).collect();
    register_batch(&fleet, &dir, &names);
    // A small bucket, so that 5 a second would be throttled if the rate were not honoured.
    cli(
        &store,
        &[
            "product",
            "registration-limit",
            &fleet.pk,
            "--rate",
            "10",
            "--burst",
            "2",
        ],
    );
    let server = Server::start(&store, dir.0.join("serve.log"), &[]);
    for name in &names {
        let reply = server.register(&form(&fleet, name, "r5"));
        assert_eq!(code(&reply), 200, "{name}: {reply}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(product(&fleet)["dynamicRegistration"], true);
}

#[test]
fn two_servers_on_one_postgres_share_the_registration_limit() {
    let Some(url) = required_env("DATABASE_URL") else {
        return;
    };
    let dir = Dir::new("pg-limit");
    let fleet = Fleet::new(url.clone());
    let names: Vec<String> = (0..40).map(|i| format!("shared-limit-{i:02}")).collect();
    register_batch(&fleet, &dir, &names);
    cli(
        &url,
        &[
            "product",
            "registration-limit",
            &fleet.pk,
            "--rate",
            "1",
            "--burst",
            "10",
        ],
    );
    let nodes = [
        Server::start(&url, dir.0.join("a.log"), &[]),
        Server::start(&url, dir.0.join("b.log"), &[]),
    ];
    let started = Instant::now();
    let mut issued = [0u64; 2];
    for (i, name) in names.iter().enumerate() {
        let reply = nodes[i % 2].register(&form(&fleet, name, "pg"));
        match code(&reply) {
            200 => issued[i % 2] += 1,
            429 => {}
            other => panic!("{name}: {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = issued[0] + issued[1];
    println!("two nodes: {issued:?} issued in {elapsed:.2} s");
    // One bucket of 10 for both, refilled at 1 a second: separate buckets would allow 20.
    assert!(
        total as f64 <= 10.0 + elapsed.ceil(),
        "{total} issued by two nodes in {elapsed:.2} s"
    );
    assert!(
        issued[0] > 0 && issued[1] > 0,
        "both nodes served: {issued:?}"
    );

    // The breaker counts the refusals of both nodes, and one of them switches the product off.
    cli(
        &url,
        &[
            "product",
            "registration-limit",
            &fleet.pk,
            "--refusal-threshold",
            "10",
        ],
    );
    let codes: Vec<u64> = (0..30)
        .map(|i| code(&nodes[i % 2].register(&form(&fleet, &format!("unknown-{i:02}"), "pg"))))
        .collect();
    assert_eq!(codes[..10], [6100; 10], "{codes:?}");
    assert_eq!(
        codes[11..],
        [6601; 19],
        "switched off after the 11th: {codes:?}"
    );
    assert_eq!(product(&fleet)["dynamicRegistration"], false);
    let trips: u64 = nodes
        .iter()
        .map(|node| {
            let (_, metrics) =
                serve_support::http_request(node.http, "GET", "/metrics", "", &[]).unwrap();
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("iotauth_registration_breaker_trips_total "))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap()
        })
        .sum();
    assert_eq!(trips, 1, "one node switched it off");
}

#[test]
fn with_unique_random_a_replayed_form_is_refused_before_and_after_a_reset() {
    let dir = Dir::new("replay");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    let fleet = Fleet::new(store.clone());
    fleet.device("replayed-01");
    let shown = cli(
        &store,
        &[
            "product",
            "registration-limit",
            &fleet.pk,
            "--unique-random",
            "on",
        ],
    );
    assert_eq!(shown["registrationLimit"]["uniqueRandom"], true);
    let server = Server::start(
        &store,
        dir.0.join("serve.log"),
        &["--issuance", "redeliver-until-first-login"],
    );
    let captured = form(&fleet, "replayed-01", "captured");
    assert_eq!(code(&server.register(&captured)), 200);
    let replayed = server.register(&captured);
    assert_eq!(code(&replayed), 6606, "{replayed}");
    assert_eq!(
        code(&server.register(&form(&fleet, "replayed-01", "fresh-1"))),
        200
    );
    cli(&store, &["device", "reset", &fleet.pk, "replayed-01"]);
    let replayed = server.register(&captured);
    assert_eq!(code(&replayed), 6606, "after the reset: {replayed}");
    let fresh = server.register(&form(&fleet, "replayed-01", "fresh-2"));
    assert_eq!(code(&fresh), 200, "a fresh random after the reset: {fresh}");
}
