//! Connects per second into a real Mosquitto: with the iotauth plugin (SQLite store) against a
//! plugin-free `password_file` config, the same client loop, side by side in one run. Each
//! iteration is one TCP connection: CONNECT, CONNACK, DISCONNECT.
//!
//! Needs `mosquitto`, `mosquitto_passwd` and the plugin (`IOTAUTH_MOSQUITTO_PLUGIN`, as
//! `.ci/run` builds it); skipped with a printed reason otherwise.

#[path = "../tests/common/mosquitto.rs"]
mod support;

use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use iotauth::service::Admin;
use iotauth::store::SqlStore;
use iotauth::{
    DeviceCertificate, DeviceName, DynamicRegistration, LoginOptions, SecureMode, build_login,
};
use support::{Mosquitto, connect_once};

fn connects(c: &mut Criterion) {
    let Ok(plugin) = std::env::var("IOTAUTH_MOSQUITTO_PLUGIN") else {
        eprintln!("mosquitto_connect skipped: IOTAUTH_MOSQUITTO_PLUGIN is not set");
        return;
    };
    let dir = std::env::temp_dir().join(format!("iotauth-bench-mosquitto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // The same device for both brokers: its iotauth credentials, also put in a password file.
    let store_url = format!("sqlite://{}", dir.join("fleet.db").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let device = runtime.block_on(async {
        let store = SqlStore::connect(&store_url).await.unwrap();
        let admin = Admin::new(store);
        let product = admin
            .create_product(None, DynamicRegistration::Off)
            .await
            .unwrap();
        admin
            .register_device(product.product_key, DeviceName::new("bench-01").unwrap())
            .await
            .unwrap()
    });
    let cert = DeviceCertificate::new(device.product_key, device.device_name, device.device_secret);
    let options = LoginOptions::default()
        .with_client_id("bench")
        .with_secure_mode(SecureMode::TCP);
    let creds = build_login(&cert, &options).unwrap();
    let password = creds.expose_password();
    let passwd = dir.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args([creds.username(), &password])
        .status()
        .expect("mosquitto_passwd");
    assert!(made.success());

    let password_file = Mosquitto::start(
        &dir.join("passwd-broker"),
        &format!("password_file {}", passwd.display()),
    );
    let with_plugin = Mosquitto::start(
        &dir.join("plugin-broker"),
        &format!("plugin {plugin}\nplugin_opt_store {store_url}"),
    );
    let mut group = c.benchmark_group("mosquitto_connect");
    for (id, broker) in [("password_file", &password_file), ("plugin", &with_plugin)] {
        assert!(
            connect_once(broker.port, creds.client_id(), creds.username(), &password),
            "{id}: refused"
        );
        group.bench_function(id, |b| {
            b.iter(|| {
                assert!(connect_once(
                    broker.port,
                    creds.client_id(),
                    creds.username(),
                    &password
                ))
            })
        });
    }
    group.finish();
    drop((password_file, with_plugin));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(5));
    targets = connects
}
criterion_main!(benches);
