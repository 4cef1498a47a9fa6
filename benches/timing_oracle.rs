//! Whether the time of a refused login tells which device names exist, with the device cache
//! on (`--cache-ttl-secs`): medians of `IOTAUTH_SAMPLES` (default 2,500) refused logins each,
//! interleaved, through `Services::login` (what every hook and the broker call) on a SQLite
//! store behind a 300 s cache.
//!
//! * repeated name: the attacker asks about the same name again and again (both cached);
//! * control: the same against another known name as long as the unknown one: the noise floor;
//! * first contact: each sample a name not asked about before (both read from SQLite);
//! * baseline: an unknown name read from SQLite against a known one served from the cache:
//!   what a cache of existing devices only (before issue 14) answered.
//!
//! ```sh
//! cargo bench --bench timing_oracle --features server,sqlite
//! cargo bench --bench timing_oracle --features server,sqlite -- --test   # 200 samples
//! ```

#[path = "support/run_size.rs"]
mod run_size;

use std::sync::Arc;
use std::time::{Duration, Instant};

use iotauth::http::{ServerConfig, Services};
use iotauth::store::{DeviceRecord, DeviceStore, ProductRecord, ProductStore, SqlStore};
use iotauth::*;
use run_size::run_size;

fn login(pk: &ProductKey, name: &str) -> ConnectCredentials {
    let cert = DeviceCertificate::new(
        *pk,
        DeviceName::new(name).expect("a name"),
        // Not the device's secret: every login below is refused.
        DeviceSecret::new("the-wrong-secret-for-every-device").expect("a secret"),
    );
    build_login(&cert, &LoginOptions::default()).expect("credentials")
}

/// The time `services` takes to refuse `creds`.
async fn time(services: &Services, creds: ConnectCredentials) -> Duration {
    let started = Instant::now();
    let refused = services
        .login(
            creds.client_id(),
            creds.username(),
            &creds.expose_password(),
        )
        .await
        .is_err();
    let elapsed = started.elapsed();
    assert!(refused, "every login here is refused");
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let Some(samples) = run_size("IOTAUTH_SAMPLES", 2_500, 200) else {
        return;
    };
    let samples = usize::try_from(samples).expect("a sample count");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("iotauth-timing-oracle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let url = format!("sqlite://{}", dir.join("iotauth.db").display());
    let pk = ProductKey::new("a1TimingPK1").expect("a product key");

    runtime.block_on(async {
        let sql = SqlStore::connect(&url).await.expect("the store");
        sql.insert_product(ProductRecord::new(
            pk,
            ProductSecret::new("product-secret-0123456789abcdef").expect("secret"),
            DynamicRegistration::Off,
        ))
        .await
        .expect("a product");
        // One device asked about repeatedly, a control device with a name as long as the
        // unknown one, and one per first-contact sample.
        let names = (0..=samples)
            .map(|i| format!("known-{i:05}"))
            .chain(["control-0000".to_owned()]);
        for name in names {
            sql.insert_device(DeviceRecord::new(
                pk,
                DeviceName::new(&name).expect("a name"),
                DeviceSecret::new("the-right-secret-of-the-device").expect("secret"),
            ))
            .await
            .expect("a device");
        }
        let mut config = ServerConfig::default();
        config.set("cache_ttl_secs", "300").expect("a ttl");
        let cached = Services::new(config.open_store(&url).await.expect("the store"), config);
        let uncached = Services::new(Arc::new(sql), ServerConfig::default());

        let (known_name, unknown_name, control_name) =
            ("known-00000", "unknown-0000", "control-0000");
        // The repeated names' first lookups fill the cache; they are not measured.
        for name in [known_name, unknown_name, control_name] {
            time(&cached, login(&pk, name)).await;
        }
        let (mut repeated_known, mut repeated_unknown) = (Vec::new(), Vec::new());
        let mut control = Vec::new();
        let (mut first_known, mut first_unknown) = (Vec::new(), Vec::new());
        let mut baseline_unknown = Vec::new();
        for i in 0..samples {
            // Alternate which goes first, so that neither always follows the other.
            let mut order = [
                (login(&pk, known_name), &mut repeated_known),
                (login(&pk, unknown_name), &mut repeated_unknown),
                (login(&pk, control_name), &mut control),
            ];
            order.rotate_left(i % 3);
            for (creds, into) in order {
                into.push(time(&cached, creds).await);
            }
            let fresh_known = login(&pk, &format!("known-{:05}", i + 1));
            let fresh_unknown = login(&pk, &format!("unknown-{:05}", i + 1));
            if i % 2 == 0 {
                first_known.push(time(&cached, fresh_known).await);
                first_unknown.push(time(&cached, fresh_unknown).await);
            } else {
                first_unknown.push(time(&cached, fresh_unknown).await);
                first_known.push(time(&cached, fresh_known).await);
            }
            baseline_unknown.push(time(&uncached, login(&pk, unknown_name)).await);
        }
        let report = |what: &str, known: Vec<Duration>, other: &str, others: Vec<Duration>| {
            let (known, others) = (median(known), median(others));
            println!(
                "{what:<26} known name {:>7} ns   {other:<22} {:>7} ns   ratio {:.3}",
                known.as_nanos(),
                others.as_nanos(),
                others.as_secs_f64() / known.as_secs_f64()
            );
        };
        println!("medians of {samples} refused logins each (a wrong password, or an unknown name)");
        let (known, unknown) = (repeated_known.clone(), repeated_unknown);
        report("repeated name, cache on", known, "unknown name", unknown);
        let known = repeated_known.clone();
        report(
            "repeated name, cache on",
            known,
            "another known name",
            control,
        );
        report(
            "first contact, cache on",
            first_known,
            "unknown name",
            first_unknown,
        );
        let (known, unknown) = (repeated_known, baseline_unknown);
        report(
            "baseline (known cached)",
            known,
            "unknown name, uncached",
            unknown,
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
