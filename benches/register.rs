//! Issue-once registration throughput: one HTTPS-form registration of a pre-registered device
//! per iteration (parse, verify, lifecycle, compare-and-set), on each store. The devices are
//! registered outside the timed region. `register/postgres` runs when `DATABASE_URL` is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use iotauth::service::{Admin, Registrar};
use iotauth::store::{MemoryStore, SecretsAtRest, SqlStore, Store};
use iotauth::*;

static DEVICES: AtomicUsize = AtomicUsize::new(0);

/// Pre-registers `n` devices and returns their registration bodies.
async fn bodies(store: &Arc<dyn Store>, n: u64) -> Vec<String> {
    let admin = Admin::new(store.clone());
    let product = admin
        .create_product(None, DynamicRegistration::On)
        .await
        .unwrap();
    let cert = ProductCertificate::new(product.product_key, product.product_secret.clone_secret());
    let mut out = Vec::new();
    for _ in 0..n {
        let name = format!("bench-{:08}", DEVICES.fetch_add(1, Ordering::Relaxed));
        let dn = DeviceName::new(&name).unwrap();
        admin
            .register_device(product.product_key, dn)
            .await
            .unwrap();
        let form =
            build_register_form(&cert, dn, "0123456789abcde", SignMethod::HmacSha256).unwrap();
        out.push(form.body().to_owned());
    }
    out
}

fn bench_store(
    c: &mut Criterion,
    id: &str,
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn Store>,
) {
    let registrar = Arc::new(Registrar::new(store.clone()));
    c.benchmark_group("register").bench_function(id, |b| {
        b.to_async(runtime).iter_custom(|iters| {
            let (store, registrar) = (store.clone(), registrar.clone());
            async move {
                let bodies = bodies(&store, iters).await;
                let start = Instant::now();
                for body in &bodies {
                    registrar
                        .register_form(std::hint::black_box(body.as_bytes()))
                        .await
                        .unwrap();
                }
                start.elapsed()
            }
        });
    });
}

fn register(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_store(c, "memory", &runtime, Arc::new(MemoryStore::new()));

    let dir = std::env::temp_dir().join(format!("iotauth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(runtime.block_on(SqlStore::connect(&url)).unwrap());
    bench_store(c, "sqlite", &runtime, sqlite);
    std::fs::remove_dir_all(&dir).ok();

    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            // The key .ci/postgres.sh made for its cluster.
            let key = std::env::var_os("IOTAUTH_TEST_MASTER_KEY_FILE")
                .expect("IOTAUTH_TEST_MASTER_KEY_FILE (.ci/postgres.sh sets it with DATABASE_URL)");
            let secrets = SecretsAtRest::sealed_under(key);
            let postgres: Arc<dyn Store> = Arc::new(
                runtime
                    .block_on(SqlStore::connect_with(&url, &secrets))
                    .unwrap(),
            );
            bench_store(c, "postgres", &runtime, postgres);
        }
        _ => eprintln!("register/postgres skipped: DATABASE_URL is not set"),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(20);
    targets = register
}
criterion_main!(benches);
