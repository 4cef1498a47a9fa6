//! The SQL adapter on a real SQLite file and a real PostgreSQL server passes the conformance
//! suite (64-task race included; on PostgreSQL also across two pools, as two broker nodes),
//! and keeps its data across a reopen.
//!
//! PostgreSQL tests read `DATABASE_URL`. Without it they skip with a printed reason, except
//! under `CI=true`, where a missing server is a failure.
#![cfg(all(feature = "conformance", feature = "sqlite", feature = "postgres"))]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use iotauth::service::{Admin, Registrar};
use iotauth::store::{DeviceStore, ProductStore, SecretsAtRest, SqlStore, conformance};
use iotauth::*;

/// A fresh SQLite file in a temporary directory that lives as long as the value.
struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iotauth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { dir }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.join("iotauth.db").display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// How the tests' stores seal: a PostgreSQL database shared by the tests is sealed under the
/// key `.ci/postgres.sh` made (`IOTAUTH_TEST_MASTER_KEY_FILE`); a SQLite file under its own
/// default.
fn secrets_for(url: &str) -> SecretsAtRest {
    match std::env::var_os("IOTAUTH_TEST_MASTER_KEY_FILE") {
        Some(key) if url.starts_with("postgres") => SecretsAtRest::sealed_under(key),
        _ => SecretsAtRest::default(),
    }
}

/// A product `key` with dynamic registration off.
fn test_product(key: &str) -> iotauth::store::ProductRecord {
    iotauth::store::ProductRecord::new(
        ProductKey::new(key).unwrap(),
        ProductSecret::new("a-product-secret-of-the-test").unwrap(),
        DynamicRegistration::Off,
    )
}

async fn open(url: &str) -> SqlStore {
    SqlStore::connect_with(url, &secrets_for(url))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}: {:?}", std::error::Error::source(&e)))
}

/// The SQLite adapter, one file per property (the suite sets the registration limits' time
/// itself: `with_caller_clock`), under cargo's temporary directory for tests, emptied by the
/// next run.
mod sqlite_store {
    use std::path::{Path, PathBuf};
    use std::sync::LazyLock;

    static FILES: LazyLock<PathBuf> = LazyLock::new(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-conformance");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the conformance files");
        dir
    });

    async fn store() -> iotauth::store::SqlStore {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = FILES.join(format!("property-{n}.db"));
        super::open(&format!("sqlite://{}", path.display()))
            .await
            .with_caller_clock()
    }

    iotauth::store_conformance_tests!(store);
}

/// Registers and issues through one handle, drops it, opens the file again.
async fn survives_reopen(url: &str) {
    let (pk, dn, secret) = {
        let store = open(url).await;
        let admin = Admin::new(store.clone());
        let product = admin
            .create_product(Some("durable"), DynamicRegistration::On)
            .await
            .unwrap();
        let device = admin
            .register_device(product.product_key, DeviceName::new("durable-dev").unwrap())
            .await
            .unwrap();
        let cert = ProductCertificate::new(product.product_key, product.product_secret);
        let form =
            build_register_form(&cert, device.device_name, "r", SignMethod::HmacSha256).unwrap();
        Registrar::new(store.clone())
            .register_form(form.body().as_bytes())
            .await
            .unwrap();
        store.close().await;
        (device.product_key, device.device_name, device.device_secret)
    };
    let store = open(url).await;
    let product = store.product(&pk).await.unwrap().expect("product survived");
    assert_eq!(product.name.as_deref(), Some("durable"));
    let device = store
        .device(&pk, &dn)
        .await
        .unwrap()
        .expect("device survived");
    assert_eq!(device.status.state, DeviceState::Issued);
    assert_eq!(device.device_secret.expose_secret(), secret.expose_secret());
}

#[test]
fn sqlite_store_survives_a_reopen() {
    let db = TempDb::new("reopen");
    block(survives_reopen(&db.url()));
}

#[test]
fn sqlite_store_opens_an_existing_schema_without_migrating_twice() {
    let db = TempDb::new("migrate");
    block(async {
        let store = open(&db.url()).await;
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
    });
}

#[test]
fn an_unsupported_url_is_an_error_not_a_panic() {
    block(async {
        assert!(SqlStore::connect("mysql://localhost/db").await.is_err());
        assert!(
            SqlStore::connect("sqlite:///nonexistent-dir/deeper/x.db")
                .await
                .is_err()
        );
    });
}

/// `DATABASE_URL`, or `None` with a printed reason; under `CI=true` its absence fails.
fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but DATABASE_URL is not set: the PostgreSQL tests must run")
        }
        _ => {
            eprintln!(
                "skipping: DATABASE_URL is not set (start PostgreSQL as in .ci/run to run this)"
            );
            None
        }
    }
}

/// The PostgreSQL adapter, every property on the one database of `DATABASE_URL`.
mod postgres_store {
    async fn store() -> iotauth::store::SqlStore {
        let url = super::database_url().expect("DATABASE_URL");
        super::open(&url).await.with_caller_clock()
    }

    iotauth::store_conformance_tests!(store, run_if: super::database_url().is_some());
}

/// Two pools on one database, as two broker nodes; each call hands out the next, in turn.
async fn two_nodes(url: &str) -> impl Fn() -> SqlStore + use<> {
    let nodes = [open(url).await, open(url).await];
    let next = AtomicUsize::new(0);
    move || nodes[next.fetch_add(1, Ordering::Relaxed) % 2].clone()
}

#[test]
fn postgres_race_across_two_pools_has_one_winner() {
    let Some(url) = database_url() else { return };
    block(async {
        for policy in [
            IssuancePolicy::Once,
            IssuancePolicy::RedeliverUntilFirstLogin,
        ] {
            conformance::race_issue_once_on(two_nodes(&url).await, policy).await;
        }
    });
}

#[test]
fn postgres_store_survives_a_reopen() {
    let Some(url) = database_url() else { return };
    block(survives_reopen(&url));
}

/// A SQLite file (or its -wal or -shm) deleted or replaced under an open store: every write
/// is refused as
/// [`FailureKind::Replaced`] (none goes into a file a restart would not find, or into a -wal
/// that is gone), and so is the readiness check (issue 14).
#[test]
fn a_deleted_or_replaced_sqlite_file_refuses_every_write() {
    use iotauth::store::{ClientIdChange, DeviceRecord, DeviceUpdate, FailureKind, ProductRecord};
    for change in ["delete", "replace", "delete-wal", "delete-shm"] {
        let db = TempDb::new(change);
        let path = db.dir.join("iotauth.db");
        block(async {
            let store = open(&db.url()).await;
            let pk = ProductKey::new("a1Replaced0").unwrap();
            let product = |pk| {
                ProductRecord::new(
                    pk,
                    ProductSecret::new("a-product-secret-of-the-test").unwrap(),
                    DynamicRegistration::On,
                )
            };
            let device = |name: &str| {
                DeviceRecord::new(
                    pk,
                    DeviceName::new(name).unwrap(),
                    DeviceSecret::new("a-device-secret-of-the-test").unwrap(),
                )
            };
            store.insert_product(product(pk)).await.unwrap();
            store.insert_device(device("meter-01")).await.unwrap();
            store.check_ready().await.unwrap();
            let beside = |suffix: &str| db.dir.join(format!("iotauth.db{suffix}"));
            match change {
                "replace" => {
                    let copy = path.with_extension("copy");
                    std::fs::copy(&path, &copy).unwrap();
                    std::fs::rename(&copy, &path).unwrap();
                }
                "delete-wal" => std::fs::remove_file(beside("-wal")).unwrap(),
                "delete-shm" => std::fs::remove_file(beside("-shm")).unwrap(),
                _ => std::fs::remove_file(&path).unwrap(),
            }
            let dn = DeviceName::new("meter-01").unwrap();
            let set = DeviceUpdate::Set {
                event: iotauth::store::EventKind::Enabled,
                status: DeviceStatus::NEW,
                device_secret: None,
                client_ids: ClientIdChange::Keep,
            };
            let writes = [
                store
                    .insert_product(product(ProductKey::new("a1Another00").unwrap()))
                    .await,
                store
                    .set_dynamic_registration(&pk, DynamicRegistration::Off)
                    .await,
                store.insert_device(device("meter-02")).await,
                store
                    .insert_device_within_quota(device("meter-03"), 100)
                    .await,
                store.compare_and_set(&pk, &dn, 0, set).await,
                store
                    .compare_and_set(&pk, &dn, 0, DeviceUpdate::Delete)
                    .await,
                store.check_ready().await,
            ];
            for (i, outcome) in writes.into_iter().enumerate() {
                let kind = outcome.err().and_then(|e| e.failure_kind());
                assert_eq!(
                    kind,
                    Some(FailureKind::Replaced),
                    "write {i} after {change}"
                );
            }
        });
    }
}

/// A store that may only read (`?mode=ro`) opens an up-to-date database, and fails a write as
/// read-only, not as "unavailable".
#[test]
fn a_read_only_sqlite_store_fails_a_write_as_read_only() {
    use iotauth::store::FailureKind;
    let db = TempDb::new("read-only");
    block(async {
        open(&db.url()).await.close().await;
        let read_only = open(&format!("{}?mode=ro", db.url())).await;
        let refused = read_only
            .insert_product(test_product("a1ReadOnly0"))
            .await
            .unwrap_err();
        let text = ErrorChain(&refused).to_string();
        assert_eq!(
            refused.failure_kind(),
            Some(FailureKind::ReadOnly),
            "{text}"
        );
        assert!(
            text.contains("readonly"),
            "the SQLite message is kept: {text}"
        );
    });
}

/// A PostgreSQL role without the privileges the store needs fails as `permission`, with the
/// SQLSTATE's message kept (issue 14).
#[test]
fn a_postgres_role_without_privileges_fails_as_permission() {
    use iotauth::store::FailureKind;
    let Some(url) = database_url() else { return };
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .expect("psql (Debian's postgresql-client) must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotauth_noperm') \
         THEN CREATE ROLE iotauth_noperm LOGIN PASSWORD 'noperm'; END IF; END $$",
    );
    // The same server and database, as the role without privileges.
    let (_, host_and_database) = url.rsplit_once('@').unwrap();
    let unprivileged = format!("postgres://iotauth_noperm:noperm@{host_and_database}");
    block(async {
        let refused = SqlStore::connect_with(&unprivileged, &secrets_for(&unprivileged))
            .await
            .unwrap_err();
        assert_eq!(refused.failure_kind(), Some(FailureKind::Permission));
        let text = ErrorChain(&refused).to_string();
        assert!(text.contains("permission denied"), "{text}");
    });
}

/// A SQLite write lock held by another process past the busy timeout (1.5 s, below the 2 s a
/// decision waits) is `busy`, not a store that did not answer.
#[test]
fn a_sqlite_lock_held_past_the_busy_timeout_fails_as_busy() {
    use iotauth::store::FailureKind;
    use std::io::BufRead;
    let db = TempDb::new("busy");
    let path = db.dir.join("iotauth.db");
    block(async {
        let store = open(&db.url()).await;
        // Python's sqlite3 module, as another process holding the write lock for 4 s.
        let mut holder = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, time\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN IMMEDIATE')\n\
                 print('locked', flush=True)\n\
                 time.sleep(4)\n",
            )
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        // Refused while the lock is held: the busy timeout is shorter than the holder's 4 s.
        let refused = store
            .insert_product(test_product("a1Busy00001"))
            .await
            .unwrap_err();
        let text = ErrorChain(&refused).to_string();
        assert_eq!(refused.failure_kind(), Some(FailureKind::Busy), "{text}");
        assert!(text.contains("locked"), "{text}");
        holder.wait().unwrap();
    });
}

/// By default the registration limits read the database's clock: two nodes whose clocks are an
/// hour apart, each way, share one bucket as if their clocks agreed (of 20 takes in a row with
/// a burst of 3 at 1 a second, 3 succeed, or 4 if a second passed), and refusals counted by
/// both fill one window.
async fn nodes_with_wrong_clocks_share_the_limits(node: impl Fn() -> SqlStore) {
    let (a, b) = (node(), node());
    let admin = Admin::new(a.clone());
    let product = admin
        .create_product(None, DynamicRegistration::On)
        .await
        .unwrap();
    let pk = product.product_key;
    let limit = iotauth::store::RegistrationLimit::DEFAULT
        .with_rate(1, 3)
        .and_then(|l| l.with_refusals(4, 3600))
        .unwrap();
    admin.set_registration_limit(&pk, limit).await.unwrap();
    let real = SystemClock.now().0;
    let (ahead, behind) = (UnixMillis(real + 3_600_000), UnixMillis(real - 3_600_000));
    let started = std::time::Instant::now();
    let mut taken = 0;
    for i in 0..20 {
        let (store, now) = if i % 2 == 0 {
            (&a, ahead)
        } else {
            (&b, behind)
        };
        taken += usize::from(store.take_registration_token(&pk, now).await.unwrap());
    }
    let allowed = if started.elapsed().as_secs() >= 1 {
        4
    } else {
        3
    };
    assert!((3..=allowed).contains(&taken), "{taken} taken");
    let mut switched = Vec::new();
    for i in 0..5 {
        let (store, now) = if i % 2 == 0 {
            (&a, behind)
        } else {
            (&b, ahead)
        };
        switched.push(store.record_registration_refusal(&pk, now).await.unwrap());
    }
    assert_eq!(
        switched,
        [false, false, false, false, true],
        "the 5th of both nodes"
    );
}

#[test]
fn sqlite_nodes_with_wrong_clocks_share_the_limits() {
    let db = TempDb::new("clocks");
    block(async {
        let store = open(&db.url()).await;
        nodes_with_wrong_clocks_share_the_limits(|| store.clone()).await;
    });
}

#[test]
fn postgres_nodes_with_wrong_clocks_share_the_limits() {
    let Some(url) = database_url() else { return };
    block(async {
        let store = open(&url).await;
        nodes_with_wrong_clocks_share_the_limits(|| store.clone()).await;
    });
}
