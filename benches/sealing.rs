//! What sealing secrets at rest costs a login: `Authenticator::authenticate` of a good login on
//! two SQLite stores in this run, one sealing (the default) and one in clear
//! (`--insecure-plaintext-secrets`, the baseline), uncached (every login reads and opens the
//! device's secret) and behind the device cache (`CachedStore`, which keeps opened secrets: the
//! cached path does not open anything). The database read dominates the uncached path and
//! varies more than sealing costs, so `open/device_secret` measures the added work alone,
//! beside `parse/device_secret_in_clear`, what a store in clear does instead.
//!
//! ```sh
//! cargo bench --bench sealing --features sqlite
//! ```

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use iotauth::service::{Admin, Authenticator};
use iotauth::store::{
    CachedStore, Keyring, MasterKey, SecretField, SecretsAtRest, SqlStore, Store,
};
use iotauth::*;

/// A store with one product and one device; the device's login.
async fn store_with_login(url: &str, secrets: &SecretsAtRest) -> (SqlStore, ConnectCredentials) {
    let store = SqlStore::connect_with(url, secrets).await.expect("store");
    let admin = Admin::new(store.clone());
    let product = admin
        .create_product(None, DynamicRegistration::Off)
        .await
        .expect("product");
    let device = admin
        .register_device(
            product.product_key,
            DeviceName::new("bench-01").expect("name"),
        )
        .await
        .expect("device");
    let cert = DeviceCertificate::new(
        device.product_key,
        device.device_name,
        device.device_secret.clone_secret(),
    );
    let login = build_login(&cert, &LoginOptions::default()).expect("login");
    (store, login)
}

fn sealing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("iotauth-bench-sealing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut clear = SecretsAtRest::default();
    clear.insecure_plaintext = true;
    let variants = [("sealed", SecretsAtRest::default()), ("plaintext", clear)];
    let mut group = c.benchmark_group("login");
    for (name, secrets) in &variants {
        let url = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        let (store, login) = runtime.block_on(store_with_login(&url, secrets));
        let password = login.expose_password();
        let uncached_store: Arc<dyn Store> = Arc::new(store.clone());
        let uncached = Authenticator::new(uncached_store);
        let cached_store: Arc<dyn Store> =
            Arc::new(CachedStore::new(store, Duration::from_secs(300)));
        let cached = Authenticator::new(cached_store);
        for (path, authenticator) in [("uncached", &uncached), ("cached", &cached)] {
            group.bench_function(format!("{path}/{name}"), |b| {
                b.iter(|| {
                    runtime
                        .block_on(authenticator.authenticate(
                            login.client_id(),
                            login.username(),
                            &password,
                        ))
                        .expect("a good login")
                });
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);

    // The work sealing adds to an uncached read, alone: one stored value opened (hex decoded,
    // XChaCha20-Poly1305 checked and decrypted) into a DeviceSecret.
    let keyring = Keyring::new(MasterKey::from_bytes([7; 32]), Vec::new());
    let identity = ("a1BwAGV0001", "bench-01");
    let sealed = keyring
        .seal(
            SecretField::DeviceSecret,
            identity,
            "0123456789abcdefghijklmnopqrstuv",
        )
        .expect("sealed");
    c.bench_function("open/device_secret", |b| {
        b.iter(|| {
            keyring
                .open(SecretField::DeviceSecret, identity, &sealed, |text| {
                    Ok(DeviceSecret::new(text).expect("a secret"))
                })
                .expect("opens")
        });
    });
    c.bench_function("parse/device_secret_in_clear", |b| {
        b.iter(|| DeviceSecret::new("0123456789abcdefghijklmnopqrstuv").expect("a secret"));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = sealing
}
criterion_main!(benches);
