//! The admin CLI on a real SQLite file and on PostgreSQL (`DATABASE_URL`; skipped with a
//! reason locally, required under `CI=true`). Every step is a new process, so the state
//! checked at each step has survived a process restart.
#![cfg(feature = "cli")]

use std::process::{Command, Output};

use serde_json::Value;

struct Cli {
    store: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_iotauth"))
            .args(["--store", &self.store])
            .args(args)
            .env_remove("IOTAUTH_STORE")
            .env_remove("IOTAUTH_MASTER_KEY_FILE")
            .envs(
                std::env::var_os("IOTAUTH_TEST_MASTER_KEY_FILE")
                    .filter(|_| self.store.starts_with("postgres"))
                    .map(|key| ("IOTAUTH_MASTER_KEY_FILE", key)),
            )
            .output()
            .expect("run iotauth")
    }

    fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Exit 1 with one `error: …` line containing `needle`.
    fn refused(&self, args: &[&str], needle: &str) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

fn admin_flows(cli: &Cli) {
    let product = cli.ok(&[
        "product",
        "create",
        "--name",
        "Meters",
        "--dynamic-registration",
    ]);
    let pk = product["productKey"].as_str().unwrap().to_owned();
    let product_secret = product["productSecret"].as_str().unwrap().to_owned();
    assert_eq!(product["dynamicRegistration"], true);
    assert_eq!(product_secret.len(), 32);

    let shown = cli.ok(&["product", "show", &pk]);
    assert_eq!(
        (shown["name"].as_str(), shown.get("productSecret")),
        (Some("Meters"), None)
    );
    assert_eq!(
        cli.ok(&["product", "show", &pk, "--show-secret"])["productSecret"],
        product_secret.as_str()
    );
    let listed = cli.ok(&["product", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["productKey"] == pk.as_str() && p.get("productSecret").is_none())
    );
    assert_eq!(
        cli.ok(&["product", "dynamic-registration", &pk, "off"])["dynamicRegistration"],
        false
    );
    assert_eq!(
        cli.ok(&["product", "show", &pk])["dynamicRegistration"],
        false
    );

    let device = cli.ok(&["device", "register", &pk, "meter-01"]);
    assert_eq!(
        (
            device["state"].as_str(),
            device["deviceSecret"].as_str().map(str::len)
        ),
        (Some("inactive"), Some(32))
    );
    let shown = cli.ok(&["device", "show", &pk, "meter-01"]);
    assert_eq!(
        shown,
        serde_json::json!({"productKey": pk, "deviceName": "meter-01", "state": "inactive", "enabled": true})
    );
    assert_eq!(
        cli.ok(&["device", "disable", &pk, "meter-01"])["enabled"],
        false
    );
    assert_eq!(
        cli.ok(&["device", "show", &pk, "meter-01"])["enabled"],
        false
    );
    assert_eq!(
        cli.ok(&["device", "enable", &pk, "meter-01"])["enabled"],
        true
    );
    let reset = cli.ok(&["device", "reset", &pk, "meter-01"]);
    assert_ne!(reset["deviceSecret"], device["deviceSecret"]);

    // The reset secret signs a login that verifies offline.
    let signed = cli.ok(&[
        "sign",
        "mqtt",
        "--product-key",
        &pk,
        "--device-name",
        "meter-01",
        "--device-secret",
        reset["deviceSecret"].as_str().unwrap(),
    ]);
    cli.ok(&[
        "verify",
        "mqtt",
        "--client-id",
        signed["clientId"].as_str().unwrap(),
        "--username",
        signed["username"].as_str().unwrap(),
        "--password",
        signed["password"].as_str().unwrap(),
        "--device-secret",
        reset["deviceSecret"].as_str().unwrap(),
    ]);

    let dir = std::env::temp_dir().join(format!("iotauth-batch-{}-{}", std::process::id(), pk));
    std::fs::create_dir_all(&dir).unwrap();
    let names = dir.join("names.txt");
    std::fs::write(&names, "dev-001\ndev-002\n\ndev-003\n").unwrap();
    let out = cli.run(&["device", "register-batch", &pk, names.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["deviceName"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["dev-001", "dev-002", "dev-003"]
    );
    // All or none: a file naming a registered device registers none of its others.
    let again = dir.join("again.txt");
    std::fs::write(&again, "dev-005\ndev-003\n").unwrap();
    cli.refused(
        &["device", "register-batch", &pk, again.to_str().unwrap()],
        "line 2: device dev-003 is already registered: none was registered",
    );
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "dev-004\nab\n").unwrap();
    cli.refused(
        &["device", "register-batch", &pk, bad.to_str().unwrap()],
        "line 2",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let listed = cli.ok(&["device", "list", &pk]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dev-001", "dev-002", "dev-003", "meter-01"],
        "a refused batch writes nothing"
    );

    assert_eq!(
        cli.ok(&["device", "delete", &pk, "meter-01"])["deleted"],
        true
    );
    cli.refused(&["device", "show", &pk, "meter-01"], "not found");
    cli.refused(
        &["device", "register", &pk, "dev-001"],
        "already registered",
    );
    cli.refused(&["device", "register", &pk, "ab"], "deviceName");
    cli.refused(
        &["device", "register", "NoSuchProduct", "meter-02"],
        "product NoSuchProduct not found",
    );
    cli.refused(&["device", "disable", &pk, "ghost-dev"], "not found");
    cli.refused(&["product", "show", "bad-key"], "productKey");
    cli.refused(&["product", "create", "--name", ""], "product name");
}

#[test]
fn admin_flows_on_a_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("iotauth-cli-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cli = Cli {
        store: format!("sqlite://{}", dir.join("fleet.db").display()),
    };
    admin_flows(&cli);
    let from_env = Command::new(env!("CARGO_BIN_EXE_iotauth"))
        .args(["product", "list"])
        .env("IOTAUTH_STORE", &cli.store)
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&from_env.stdout).unwrap();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "IOTAUTH_STORE names the store"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn admin_flows_on_postgres() {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but DATABASE_URL is not set")
        }
        _ => return eprintln!("skipping: DATABASE_URL is not set"),
    };
    admin_flows(&Cli { store: url });
}

#[test]
fn the_default_store_is_sqlite_iotauth_db_in_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("iotauth-cli-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iotauth"))
        .args(["product", "list"])
        .env_remove("IOTAUTH_STORE")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(dir.join("iotauth.db").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_store_is_exit_1_with_the_cause() {
    let cli = Cli {
        store: "sqlite:///nonexistent-dir/deeper/x.db".into(),
    };
    cli.refused(&["product", "list"], "the store failed");
}
