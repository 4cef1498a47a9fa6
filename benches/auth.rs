//! The hot path of every connect, against the floor of one HMAC measured in the same run.
//!
//! Ids (stable, compared over time by `benches/report.py`): `baseline/hmac_sha256` (the bare
//! `hmac` crate over the same sign content, key set up per call), `verify_mqtt/{hmacmd5,
//! hmacsha1,hmacsha256}` (parse and verify one CONNECT from its three strings, the secret at
//! hand), `verify_mqtt/{bad_first_byte,bad_last_byte}` (refusals), `sign_mqtt/hmacsha256`,
//! `parse/client_id`, `parse/register_form`, `authenticate/memory` (a full login through the
//! authenticator on a memory store of 100,000 devices).
//!
//! The secret's key schedule is computed on its first use and kept with it (as a store keeps
//! it with the device), so `verify_mqtt/*` measure the steady state of a server.
//! `verify_mqtt/uncached_key` shows a secret's first verification, key setup included.

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use iotauth::service::{Admin, Authenticator};
use iotauth::store::MemoryStore;
use iotauth::*;

const SECRET: &str = "Sh4r3dS3cr3tV4lu3F0rT3st1ngXyZ09";
const CORE: &str = "a2SHaReD0k1&shared-dev-01";
const TIMESTAMP: &str = "1710000000000";

fn cert() -> DeviceCertificate {
    DeviceCertificate::new(
        ProductKey::new("a2SHaReD0k1").unwrap(),
        DeviceName::new("shared-dev-01").unwrap(),
        DeviceSecret::new(SECRET).unwrap(),
    )
}

fn login(cert: &DeviceCertificate, method: SignMethod) -> ConnectCredentials {
    let options = LoginOptions::default()
        .with_client_id(CORE)
        .with_timestamp(TIMESTAMP)
        .with_sign_method(method);
    build_login(cert, &options).unwrap()
}

fn baseline(c: &mut Criterion) {
    let content =
        format!("clientId{CORE}deviceNameshared-dev-01productKeya2SHaReD0k1timestamp{TIMESTAMP}");
    c.bench_function("baseline/hmac_sha256", |b| {
        b.iter(|| {
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(black_box(SECRET.as_bytes())).unwrap();
            mac.update(black_box(content.as_bytes()));
            mac.finalize().into_bytes()
        })
    });
}

fn verify_mqtt(c: &mut Criterion) {
    let cert = cert();
    let mut group = c.benchmark_group("verify_mqtt");
    let verify = |id: &str, user: &str, password: &str| {
        ConnectRequest::parse(id, user, password)
            .map(|r| {
                r.verify_login(cert.device_secret(), Freshness::Unchecked, UnixMillis(0))
                    .is_ok()
            })
            .unwrap_or(false)
    };
    for method in SignMethod::ALL {
        let creds = login(&cert, method);
        let password = creds.expose_password();
        assert!(verify(creds.client_id(), creds.username(), &password));
        group.bench_function(method.name(), |b| {
            b.iter(|| {
                verify(
                    black_box(creds.client_id()),
                    black_box(creds.username()),
                    black_box(&password),
                )
            })
        });
    }
    let creds = login(&cert, SignMethod::HmacSha256);
    let password = creds.expose_password();
    group.bench_function("uncached_key", |b| {
        b.iter_batched_ref(
            || DeviceSecret::new(SECRET).unwrap(),
            |secret| {
                ConnectRequest::parse(
                    black_box(creds.client_id()),
                    black_box(creds.username()),
                    black_box(&password),
                )
                .map(|r| {
                    r.verify_login(secret, Freshness::Unchecked, UnixMillis(0))
                        .is_ok()
                })
                .unwrap_or(false)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let flip = |at: usize| {
        let mut bytes = password.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        String::from_utf8(bytes).unwrap()
    };
    for (id, bad) in [
        ("bad_first_byte", flip(0)),
        ("bad_last_byte", flip(password.len() - 1)),
    ] {
        assert!(!verify(creds.client_id(), creds.username(), &bad));
        group.bench_function(id, |b| {
            b.iter(|| {
                verify(
                    black_box(creds.client_id()),
                    black_box(creds.username()),
                    black_box(&bad),
                )
            })
        });
    }
    group.finish();
}

fn sign_and_parse(c: &mut Criterion) {
    let cert = cert();
    c.bench_function("sign_mqtt/hmacsha256", |b| {
        b.iter(|| login(black_box(&cert), SignMethod::HmacSha256))
    });
    let client_id = "a2SHaReD0k1&shared-dev-01|securemode=2,signmethod=hmacsha1,ext=1,_ss=1,lan=Python,_v=1.2.13,timestamp=1710000000|";
    c.bench_function("parse/client_id", |b| {
        b.iter(|| ClientId::parse(black_box(client_id)).is_ok())
    });
    let form = "productKey=k1VectorPK9&deviceName=reg%40dom.x%3A1&random=9HDmazJGCboiDrA&sign=a36c22b3bb89dc8e47644c0801d44bb90b9a362293dd43939d52a8fa069c63f1&signMethod=hmacsha256";
    c.bench_function("parse/register_form", |b| {
        b.iter(|| RegisterForm::parse(black_box(form.as_bytes())).is_ok())
    });
}

/// A memory store of 100,000 devices, an authenticator over it, and the last device's
/// login (made once, so that the device is Active and the benchmark measures the logins
/// after it).
fn authenticate_fixture(
    runtime: &tokio::runtime::Runtime,
) -> (Authenticator<Arc<MemoryStore>>, ConnectCredentials, String) {
    const DEVICES: usize = 100_000;
    let store = Arc::new(MemoryStore::new());
    let cert = runtime.block_on(async {
        let admin = Admin::new(store.clone());
        let product = admin
            .create_product(None, DynamicRegistration::Off)
            .await
            .unwrap();
        let mut last = None;
        for i in 0..DEVICES {
            let name = DeviceName::new(&format!("device-{i:06}")).unwrap();
            last = Some(
                admin
                    .register_device(product.product_key, name)
                    .await
                    .unwrap(),
            );
        }
        let device = last.unwrap();
        DeviceCertificate::new(device.product_key, device.device_name, device.device_secret)
    });
    let auth = Authenticator::new(store);
    let creds = login(&cert, SignMethod::HmacSha256);
    let password = creds.expose_password();
    runtime
        .block_on(auth.authenticate(creds.client_id(), creds.username(), &password))
        .unwrap();
    (auth, creds, password.to_string())
}

fn authenticate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Built on first use, so that filtering the other ids out skips it.
    let mut fixture = None;
    c.bench_function("authenticate/memory", |b| {
        let (auth, creds, password) = fixture.get_or_insert_with(|| authenticate_fixture(&runtime));
        b.iter(|| {
            run(
                &runtime,
                auth.authenticate(
                    black_box(creds.client_id()),
                    black_box(creds.username()),
                    black_box(password.as_str()),
                ),
            )
            .is_ok()
        })
    });
}

/// Polls `future` once and, if it is not ready, hands it to `runtime`. The memory store never
/// waits, so this measures the authenticator rather than the executor's entry (which costs
/// about 180 ns per `block_on` here, as much as the HMAC).
fn run<F: Future>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => runtime.block_on(future),
    }
}

criterion_group!(benches, baseline, verify_mqtt, sign_and_parse, authenticate);
criterion_main!(benches);
