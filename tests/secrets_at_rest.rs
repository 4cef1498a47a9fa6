//! Secrets sealed at rest, judged by what an attacker holding the database sees: a dump made by
//! the databases' own tools (Python's `sqlite3` `iterdump`, `pg_dump`) after registrations,
//! resets and a rekey contains no DeviceSecret nor ProductSecret; a sealed value copied onto
//! another row does not open; a wrong key is refused with a clear message; a store in clear
//! from an earlier version is sealed when it is opened with a key.
//!
//! PostgreSQL tests read `DATABASE_URL` and `IOTAUTH_TEST_MASTER_KEY_FILE` (`.ci/postgres.sh`).
#![cfg(all(
    feature = "cli",
    feature = "conformance",
    feature = "sqlite",
    feature = "postgres"
))]

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod iotauth_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use iotauth::service::{Admin, AuthError, Authenticator};
use iotauth::store::{
    DeviceStore, FailureKind, MasterKey, ProductStore, SecretsAtRest, SqlStore, conformance,
};
use iotauth::*;
use iotauth_support::{BIN, required_env};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("iotauth-sealed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    fn db(&self) -> PathBuf {
        self.0.join("iotauth.db")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

async fn connect(url: &str, secrets: &SecretsAtRest) -> SqlStore {
    SqlStore::connect_with(url, secrets)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", ErrorChain(&e)))
}

/// Runs a Python `script`, with `sqlite3` and `sys` imported, on the SQLite file `db`
/// (`sys.argv[1]`) and `arg` (`sys.argv[2]`), as someone with the file would; its stdout.
fn python_sqlite(db: &Path, script: &str, arg: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", &format!("import sqlite3, sys\n{script}")])
        .arg(db)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every row of the SQLite database as SQL text, as `sqlite3 .dump` prints it.
fn sqlite_dump(db: &Path) -> String {
    python_sqlite(
        db,
        "print('\\n'.join(sqlite3.connect(sys.argv[1]).iterdump()))",
        "",
    )
}

/// Runs SQL statements on the SQLite file.
fn sqlite_exec(db: &Path, sql: &str) {
    python_sqlite(
        db,
        "c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        sql,
    );
}

/// Every row of the PostgreSQL database, as `pg_dump` prints it.
fn postgres_dump(url: &str) -> String {
    let out = Command::new("pg_dump")
        .args(["--data-only", "--table=iotauth_*", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A login with `cert` against `store` is refused as an outage: never a success, nor a panic.
async fn assert_login_is_an_outage(store: &SqlStore, cert: &DeviceCertificate) {
    let login = build_login(cert, &LoginOptions::default()).unwrap();
    let refused = Authenticator::new(store.clone())
        .authenticate(
            login.client_id(),
            login.username(),
            &login.expose_password(),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, AuthError::Store(_)), "{refused:?}");
}

fn assert_no_secret(dump: &str, secrets: &[String], when: &str) {
    assert!(
        dump.contains("sealed1:"),
        "{when}: the dump has sealed values"
    );
    for secret in secrets {
        assert!(
            !dump.contains(secret.as_str()),
            "{when}: a secret is in the dump"
        );
    }
}

#[test]
fn a_sqlite_dump_holds_no_secret_after_registrations_resets_and_a_rekey() {
    let dir = Dir::new("dump");
    block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        // The default: a key file beside the database, mode 0600.
        let key_file = SecretsAtRest::default_key_file(&dir.db());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let db = dir.db();
        let secrets =
            conformance::no_secret_in_raw_rows(&store, || async { sqlite_dump(&db) }).await;
        let old_id = store.sealing_key_id().unwrap();
        store.close().await;

        // Rekey to a new key; the old one still opens meanwhile.
        let new_key = dir.0.join("new.key");
        let new_id = MasterKey::create_file(&new_key).unwrap().id();
        let mut both = SecretsAtRest::sealed_under(&new_key);
        both.previous_key_files.push(key_file.clone());
        let rekeyed = connect(&dir.url(), &both).await;
        assert_eq!(
            rekeyed.rekey().await.unwrap(),
            5,
            "one product and four devices"
        );
        let dump = sqlite_dump(&dir.db());
        assert_no_secret(&dump, &secrets, "after the rekey");
        assert!(
            !dump.contains(&format!("sealed1:{old_id}")),
            "nothing left under the old key"
        );
        rekeyed.close().await;

        // The old key alone no longer fits; the new one alone reads every secret.
        let refused = SqlStore::connect(&dir.url()).await.unwrap_err();
        assert_eq!(refused.failure_kind(), Some(FailureKind::Configuration));
        assert!(
            ErrorChain(&refused)
                .to_string()
                .contains(&new_id.to_string()),
            "{}",
            ErrorChain(&refused)
        );
        let store = connect(&dir.url(), &SecretsAtRest::sealed_under(&new_key)).await;
        let pk = store.products().await.unwrap()[0].product_key;
        let devices = store.devices(&pk).await.unwrap();
        for device in &devices {
            assert!(
                secrets
                    .iter()
                    .any(|s| s == device.device_secret.expose_secret())
            );
        }
    });
}

#[test]
fn a_postgres_dump_holds_no_secret_after_registrations_resets_and_a_rekey() {
    let Some(url) = required_env("DATABASE_URL") else {
        return;
    };
    let key = PathBuf::from(required_env("IOTAUTH_TEST_MASTER_KEY_FILE").unwrap());
    let dir = Dir::new("pg-rekey");
    block(async {
        let store = connect(&url, &SecretsAtRest::sealed_under(&key)).await;
        let secrets =
            conformance::no_secret_in_raw_rows(&store, || async { postgres_dump(&url) }).await;
        store.close().await;
        // A rekey and back, so the shared database ends under the key the other tests use.
        let new_key = dir.0.join("new.key");
        MasterKey::create_file(&new_key).unwrap();
        for (sealing, previous) in [(&new_key, &key), (&key, &new_key)] {
            let mut both = SecretsAtRest::sealed_under(sealing);
            both.previous_key_files.push(previous.clone());
            let store = connect(&url, &both).await;
            assert!(store.rekey().await.unwrap() >= 5);
            assert_no_secret(&postgres_dump(&url), &secrets, "after a rekey");
            store.close().await;
        }
    });
}

#[test]
fn a_sealed_value_copied_onto_another_device_does_not_open_and_says_so_without_the_secret() {
    let dir = Dir::new("copied");
    block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        let secrets = conformance::hand_out_secrets(&store, "copied").await;
        store.close().await;
        // An attacker with write access to the database gives dev3 dev2's sealed secret (whose
        // owner they know), hoping to log in as dev3 with it.
        sqlite_exec(
            &dir.db(),
            "UPDATE iotauth_devices SET device_secret = \
             (SELECT device_secret FROM iotauth_devices WHERE device_name = 'dev2') \
             WHERE device_name = 'dev3'",
        );
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        let pk = store.products().await.unwrap()[0].product_key;
        let dn3 = DeviceName::new("dev3").unwrap();
        let e = store.device(&pk, &dn3).await.unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt));
        let message = ErrorChain(&e).to_string();
        assert!(message.contains("does not open"), "{message}");
        for secret in &secrets {
            assert!(!message.contains(secret.as_str()));
        }
        // A login as dev3 with dev2's secret is an outage, never a success nor a panic.
        let dn2 = DeviceName::new("dev2").unwrap();
        let dev2 = store.device(&pk, &dn2).await.unwrap().unwrap();
        let cert = DeviceCertificate::new(pk, dn3, dev2.device_secret.clone_secret());
        assert_login_is_an_outage(&store, &cert).await;
    });
}

#[test]
fn a_store_in_clear_from_an_earlier_version_is_sealed_when_opened_with_a_key() {
    let dir = Dir::new("clear");
    let mut clear = SecretsAtRest::default();
    clear.insecure_plaintext = true;
    block(async {
        let store = connect(&dir.url(), &clear).await;
        let secrets = conformance::hand_out_secrets(&store, "clear").await;
        let dump = sqlite_dump(&dir.db());
        // The product's secret and dev1's after its reset, as an earlier version kept them.
        for current in [&secrets[0], &secrets[secrets.len() - 1]] {
            assert!(dump.contains(current.as_str()), "in clear, as before");
        }
        store.close().await;
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        assert_no_secret(
            &sqlite_dump(&dir.db()),
            &secrets,
            "after the first open with a key",
        );
        let pk = store.products().await.unwrap()[0].product_key;
        let dev2 = store
            .device(&pk, &DeviceName::new("dev2").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(secrets.contains(&dev2.device_secret.expose_secret().to_owned()));
        store.close().await;
        // In clear again is refused: the secrets are sealed now.
        let e = SqlStore::connect_with(&dir.url(), &clear)
            .await
            .unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Configuration));
    });
}

#[test]
fn the_cli_refuses_a_wrong_key_and_a_keyless_postgres_store_with_clear_messages() {
    let dir = Dir::new("wrong-key");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("IOTAUTH_MASTER_KEY_FILE")
            .output()
            .unwrap()
    };
    let url = dir.url();
    let created = run(&["--store", &url, "product", "create"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stderr = String::from_utf8_lossy(&created.stderr);
    let key_file = SecretsAtRest::default_key_file(&dir.db());
    assert!(
        stderr.contains(&key_file.display().to_string()),
        "the log says where: {stderr}"
    );

    let wrong = dir.0.join("wrong.key");
    MasterKey::create_file(&wrong).unwrap();
    let refused = run(&[
        "--store",
        &url,
        "--master-key-file",
        wrong.to_str().unwrap(),
        "product",
        "list",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is sealed under master key"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let Some(postgres) = required_env("DATABASE_URL") else {
        return;
    };
    let refused = run(&["--store", &postgres, "product", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("needs a master key file"), "{stderr}");
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The README's first command, `iotauth serve --mqtt 127.0.0.1:PORT` in a fresh directory (no
/// store, no key given): it comes up, with `iotauth.db` and `iotauth.db.key` (0600) beside it
/// and a log line that says where the key is; the admin commands in that directory use it.
#[test]
fn the_readmes_first_command_still_works_and_says_where_the_key_is() {
    let dir = Dir::new("readme");
    let (mqtt, http) = (free_port(), free_port());
    let log = dir.0.join("serve.log");
    let mut server = Command::new(BIN)
        .args(["serve", "--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .env_remove("IOTAUTH_STORE")
        .env_remove("IOTAUTH_MASTER_KEY_FILE")
        .current_dir(&dir.0)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let key_file = dir.0.join("iotauth.db.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("created a master key file") && text.contains("iotauth.db.key"),
        "{text}"
    );
    let created = Command::new(BIN)
        .args(["product", "create"])
        .env_remove("IOTAUTH_STORE")
        .env_remove("IOTAUTH_MASTER_KEY_FILE")
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&created.stderr).contains("created a master key file"),
        "the key beside the store is reused"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// A store written by an earlier version (schema version 2, secrets in clear, made here with
/// that version's statements) is migrated and sealed when this version opens it; its devices
/// keep their secrets.
#[test]
fn a_store_of_schema_version_2_in_clear_is_migrated_and_sealed_on_first_open() {
    let dir = Dir::new("v2");
    let db = dir.db();
    let v2 = "
        CREATE TABLE iotauth_schema (version BIGINT PRIMARY KEY);
        INSERT INTO iotauth_schema VALUES (1), (2);
        CREATE TABLE iotauth_products (product_key TEXT PRIMARY KEY, product_secret TEXT NOT NULL,
            dynamic_registration BIGINT NOT NULL, name TEXT,
            pre_registration_free BIGINT NOT NULL DEFAULT 0, device_quota BIGINT NOT NULL DEFAULT 10000);
        CREATE TABLE iotauth_devices (product_key TEXT NOT NULL REFERENCES iotauth_products (product_key),
            device_name TEXT NOT NULL, device_secret TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('inactive', 'issued', 'active')),
            enabled BIGINT NOT NULL, revision BIGINT NOT NULL, client_ids TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (product_key, device_name));
        INSERT INTO iotauth_products VALUES ('a1OldPk0001', 'OldProductSecret0123456789abcdef', 1, NULL, 0, 10000);
        INSERT INTO iotauth_devices VALUES ('a1OldPk0001', 'old-01', 'OldDeviceSecret0123456789abcdef', 'active', 1, 3, '');
    ";
    sqlite_exec(&db, v2);
    block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        let dump = sqlite_dump(&db);
        assert!(
            !dump.contains("OldDeviceSecret") && !dump.contains("OldProductSecret"),
            "{dump}"
        );
        let pk = ProductKey::new("a1OldPk0001").unwrap();
        let dn = DeviceName::new("old-01").unwrap();
        let device = store.device(&pk, &dn).await.unwrap().unwrap();
        let cert = DeviceCertificate::new(pk, dn, device.device_secret.clone_secret());
        assert_eq!(
            device.device_secret.expose_secret(),
            "OldDeviceSecret0123456789abcdef"
        );
        let login = build_login(&cert, &LoginOptions::default()).unwrap();
        Authenticator::new(store.clone())
            .authenticate(
                login.client_id(),
                login.username(),
                &login.expose_password(),
            )
            .await
            .expect("the device logs in with the secret it always had");
        let product = store.product(&pk).await.unwrap().unwrap();
        assert_eq!(
            product.product_secret.expose_secret(),
            "OldProductSecret0123456789abcdef"
        );
        assert_eq!(
            product.registration_limit,
            iotauth::store::RegistrationLimit::DEFAULT
        );
    });
}

/// `iotauth store rekey --new-key-file`: creates the new key (0600), re-seals every secret
/// under it, and from then on the new key alone opens the store.
#[test]
fn the_cli_rekeys_a_store_to_a_new_key_file() {
    let dir = Dir::new("cli-rekey");
    let url = dir.url();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["--store", &url])
            .args(args)
            .env_remove("IOTAUTH_MASTER_KEY_FILE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let product = run(&["product", "create"]);
    let pk = product["productKey"].as_str().unwrap().to_owned();
    let device = run(&["device", "register", &pk, "rekeyed-01"]);
    let new_key = dir.0.join("new.key");
    let rekeyed = run(&[
        "store",
        "rekey",
        "--new-key-file",
        new_key.to_str().unwrap(),
    ]);
    assert_eq!(rekeyed["resealed"], 2, "{rekeyed}");
    let key_id = rekeyed["keyId"].as_str().unwrap().to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&new_key).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let dump = sqlite_dump(&dir.db());
    assert!(dump.contains(&format!("sealed1:{key_id}:")));
    assert!(!dump.contains(device["deviceSecret"].as_str().unwrap()));
    let shown = run(&[
        "--master-key-file",
        new_key.to_str().unwrap(),
        "product",
        "show",
        &pk,
        "--show-secret",
    ]);
    assert_eq!(shown["productSecret"], product["productSecret"]);
    // Again: nothing left to re-seal.
    let again = run(&[
        "--master-key-file",
        new_key.to_str().unwrap(),
        "store",
        "rekey",
        "--new-key-file",
        new_key.to_str().unwrap(),
    ]);
    assert_eq!(again["resealed"], 0, "{again}");
}

/// Someone with write access to the database, and not the key, plants secrets of their own in
/// clear (or cuts a sealed value down to 64 characters) in a sealed store, and removes what
/// says the store is sealed: they are never sealed (not by the next open, nor by a rekey) and
/// never log in; they read as corrupt.
#[test]
fn a_secret_planted_in_clear_in_a_sealed_store_is_corrupt_and_never_sealed() {
    let dir = Dir::new("planted");
    block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        conformance::hand_out_secrets(&store, "planted").await;
        store.close().await;
    });
    let pk = python_sqlite(
        &dir.db(),
        "print(sqlite3.connect(sys.argv[1]).execute('SELECT product_key FROM iotauth_products').fetchone()[0])",
        "",
    );
    let pk = ProductKey::new(pk.trim()).unwrap();
    sqlite_exec(
        &dir.db(),
        "UPDATE iotauth_devices SET device_secret = 'AttackerChosenSecret0123456789ab' \
         WHERE device_name = 'dev2'; \
         UPDATE iotauth_devices SET device_secret = SUBSTR(device_secret, 1, 64) \
         WHERE device_name = 'dev3'; \
         UPDATE iotauth_products SET product_secret = 'AttackerProductSecret0123456789a'; \
         DELETE FROM iotauth_settings",
    );
    block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        let e = store.product(&pk).await.unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt));
        for planted in ["dev2", "dev3"] {
            let dn = DeviceName::new(planted).unwrap();
            let e = store.device(&pk, &dn).await.unwrap_err();
            assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt), "{planted}");
            assert!(
                ErrorChain(&e).to_string().contains("is not sealed"),
                "{}",
                ErrorChain(&e)
            );
        }
        let dn = DeviceName::new("dev2").unwrap();
        let cert = DeviceCertificate::new(
            pk,
            dn,
            DeviceSecret::new("AttackerChosenSecret0123456789ab").unwrap(),
        );
        assert_login_is_an_outage(&store, &cert).await;
        assert_eq!(
            store.rekey().await.unwrap(),
            0,
            "a rekey seals nothing in clear"
        );
    });
    let dump = sqlite_dump(&dir.db());
    assert!(
        dump.contains("AttackerChosenSecret0123456789ab")
            && dump.contains("AttackerProductSecret0123456789a"),
        "left as planted"
    );
}

/// The same in a store that holds one product and no device: with every sealed value replaced
/// and the settings deleted, nothing says it was sealed but the absence of the mark a new store
/// is born with; the planted ProductSecret is still not sealed.
#[test]
fn a_product_only_store_wiped_and_planted_is_not_sealed_again() {
    let dir = Dir::new("wiped");
    let product = block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        let product = Admin::new(store.clone())
            .create_product(None, DynamicRegistration::On)
            .await
            .unwrap();
        store.close().await;
        product.product_key
    });
    sqlite_exec(
        &dir.db(),
        "UPDATE iotauth_products SET product_secret = 'AttackerProductSecret0123456789a'; \
         DELETE FROM iotauth_settings",
    );
    block(async {
        let store = connect(&dir.url(), &SecretsAtRest::default()).await;
        let e = store.product(&product).await.unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt));
    });
    assert!(sqlite_dump(&dir.db()).contains("AttackerProductSecret0123456789a"));
}
