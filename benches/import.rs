//! Importing an Alibaba fleet (issue 17's goal: 100,000 devices in under 30 s on SQLite):
//! `import/sqlite_100k` parses a 100,000-row CSV export (`parse_device_import`) and imports it
//! (`Admin::import_devices`: one read of the product's devices, one write) into a fresh sealed
//! SQLite file, as `iotauth device import` does. The baseline in the same run,
//! `import/one_transaction_each_1k`, inserts 1,000 devices one `insert_device` each, the way
//! imports went before `insert_devices`; compare per device (criterion's element throughput).
//!
//! ```sh
//! cargo bench --bench import --features sqlite,import
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotauth::service::{Admin, parse_device_import};
use iotauth::store::{DeviceRecord, DeviceStore, SecretsAtRest, SqlStore};
use iotauth::*;

const FLEET: u64 = 100_000;
const BASELINE: u64 = 1_000;

/// A fresh SQLite store with one product, in `dir`.
async fn fresh_store(dir: &std::path::Path, run: u64) -> (SqlStore, ProductKey) {
    let url = format!(
        "sqlite://{}",
        dir.join(format!("import-{run}.db")).display()
    );
    let store = SqlStore::connect_with(&url, &SecretsAtRest::default())
        .await
        .expect("store");
    let product = Admin::new(store.clone())
        .create_product(None, DynamicRegistration::Off)
        .await
        .expect("product");
    (store, product.product_key)
}

/// A BatchQueryDeviceDetail-shaped CSV of `count` devices of `product_key`.
fn export(product_key: &ProductKey, count: u64) -> Vec<u8> {
    let mut csv = String::from("IotId,ProductKey,DeviceName,DeviceSecret,Status\n");
    for i in 0..count {
        csv.push_str(&format!(
            "iot-{i},{product_key},dev-{i:06},{:032x},UNACTIVE\n",
            u128::from(i) * 0x9e37_79b9_7f4a_7c15
        ));
    }
    csv.into_bytes()
}

fn import(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("iotauth-bench-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let runs = AtomicU64::new(0);
    let mut group = c.benchmark_group("import");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(40));

    group.throughput(Throughput::Elements(FLEET));
    group.bench_function("sqlite_100k", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let run = runs.fetch_add(1, Ordering::Relaxed);
                let (store, product_key) = runtime.block_on(fresh_store(&dir, run));
                let file = export(&product_key, FLEET);
                let started = Instant::now();
                let devices = parse_device_import(&file).expect("parsed");
                let summary = runtime
                    .block_on(Admin::new(store).import_devices(devices, |_| {}))
                    .expect("imported");
                total += started.elapsed();
                assert_eq!(summary.created, FLEET);
            }
            total
        });
    });

    group.throughput(Throughput::Elements(BASELINE));
    group.bench_function("one_transaction_each_1k", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let run = runs.fetch_add(1, Ordering::Relaxed);
                let (store, product_key) = runtime.block_on(fresh_store(&dir, run));
                let started = Instant::now();
                runtime.block_on(async {
                    for i in 0..BASELINE {
                        let device = DeviceRecord::new(
                            product_key,
                            DeviceName::new(&format!("dev-{i:06}")).expect("name"),
                            DeviceSecret::new(&format!("{i:032x}")).expect("secret"),
                        );
                        store.insert_device(device).await.expect("inserted");
                    }
                });
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, import);
criterion_main!(benches);
