//! What the properties share: fixtures, racers, readers of the event log.

use std::sync::Arc;

use tokio::sync::Barrier;

use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceState, DynamicRegistration, Event};
use crate::mqtt::{
    ConnectKind, ConnectRequest, LoginOptions, RegisterOptions, SecureMode, build_login,
    build_register_connect,
};
use crate::register::RefusalCode;
use crate::register::build_register_form;
use crate::service::{
    Admin, AuthError, Authenticator, IssuedClientIdToken, RegisterError, Registrar,
};
use crate::sign::SignMethod;
use crate::store::{
    ChainHead, DeviceRecord, DeviceStore, EventKind, EventLog, EventRecord, MAX_EVENTS_PER_READ,
    PreRegistrationFree, ProductRecord, ProductStore, RegistrationLimit, verify_chain,
};
use crate::{DeviceCertificate, ProductCertificate};

/// The number of tasks that race to issue one secret.
pub const RACERS: usize = 64;

/// Every event appended after `after`, read in pages, checked to link up from `after` (numbers
/// without gaps, each hash its contents' and its predecessor's) up to the store's head.
pub async fn events_since<S: EventLog>(store: &S, after: ChainHead) -> Vec<EventRecord> {
    let mut events = Vec::new();
    let mut last = after.seq;
    loop {
        let page = store
            .events_after(last, MAX_EVENTS_PER_READ)
            .await
            .unwrap_or_else(|e| panic!("events_after: {e}"));
        let Some(end) = page.last() else { break };
        last = end.seq;
        events.extend(page);
    }
    let reached = verify_chain(after, &events).unwrap_or_else(|e| panic!("event chain: {e}"));
    let head = store.event_head().await.unwrap();
    // Other tests may append meanwhile (a shared database): the head is at or after the end.
    assert!(
        head.seq >= reached.seq,
        "the head ({}) is behind the last event ({})",
        head.seq,
        reached.seq
    );
    if head.seq == reached.seq {
        assert_eq!(head, reached, "the head is the last event");
    }
    events
}

/// The events of `product_key` (and of its devices) after `after`: (device name, kind).
pub(super) async fn product_events<S: EventLog>(
    store: &S,
    after: ChainHead,
    product_key: &ProductKey,
) -> Vec<(Option<String>, EventKind)> {
    events_since(store, after)
        .await
        .into_iter()
        .filter(|e| e.product_key == *product_key)
        .map(|e| (e.device_name.map(|d| d.as_str().to_owned()), e.kind))
        .collect()
}

/// Creates a product named `name` with dynamic registration on, registers four devices
/// (`dev0`…`dev3`), issues `dev0`'s secret by dynamic registration and resets `dev1`; returns
/// every secret the store handed out, the product's first and `dev1`'s new one last: test
/// values, for checks of what the store keeps at rest.
pub async fn hand_out_secrets<S: ProductStore + DeviceStore>(store: &S, name: &str) -> Vec<String> {
    let admin = Admin::new(store);
    let created = admin
        .create_product(Some(name), DynamicRegistration::On)
        .await
        .unwrap_or_else(|e| panic!("create product: {e}"));
    let pk = created.product_key;
    let mut secrets = vec![created.product_secret.expose_secret().to_owned()];
    for i in 0..4 {
        let device = admin
            .register_device(pk, self::name(&format!("dev{i}")))
            .await
            .unwrap_or_else(|e| panic!("register: {e}"));
        secrets.push(device.device_secret.expose_secret().to_owned());
    }
    let issued = register(&Registrar::new(store), &created, self::name("dev0"))
        .await
        .unwrap_or_else(|e| panic!("registration: {e}"));
    secrets.push(issued.into_device_secret().expose_secret().to_owned());
    let dev1 = self::name("dev1");
    admin.apply(&pk, &dev1, Event::Reset).await.unwrap();
    let reset = store.device(&pk, &dev1).await.unwrap().unwrap();
    secrets.push(reset.device_secret.expose_secret().to_owned());
    secrets
}

/// Secrets at rest: after [`hand_out_secrets`], the store's raw rows as `raw_rows` returns
/// them (every stored row, as the database's own dump tool prints it) contain none of the
/// secrets. For adapters that keep secrets sealed (as the SQL stores do); returns the secrets,
/// for checks after later changes (a rekey).
pub async fn no_secret_in_raw_rows<S, F, Fut>(store: S, raw_rows: F) -> Vec<String>
where
    S: ProductStore + DeviceStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let secrets = hand_out_secrets(&store, "sealed at rest").await;
    let rows = raw_rows().await;
    assert!(
        rows.contains("sealed at rest") && rows.contains("dev3"),
        "the raw rows hold the product and its devices"
    );
    for secret in &secrets {
        assert!(
            !rows.contains(secret.as_str()),
            "a secret is in the raw rows"
        );
    }
    secrets
}

/// Runs `attempt` on [`RACERS`] tasks, each with its own clone of `store`, released together;
/// how many returned `true`.
pub(super) async fn racers_succeeding<S, F, Fut>(store: &S, attempt: F) -> usize
where
    S: Clone + Send + 'static,
    F: Fn(S) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (attempt, barrier) = (attempt(store.clone()), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                attempt.await
            })
        })
        .collect();
    let mut succeeded = 0;
    for racer in racers {
        succeeded += usize::from(racer.await.expect("racer task panicked"));
    }
    succeeded
}

/// A product with dynamic registration on and `limit`.
pub(super) async fn limited_product<S: ProductStore + DeviceStore>(
    store: &S,
    limit: RegistrationLimit,
) -> (Admin<&S>, ProductRecord) {
    let (admin, mut product) = new_product(store, DynamicRegistration::On).await;
    admin
        .set_registration_limit(&product.product_key, limit)
        .await
        .unwrap();
    product.registration_limit = limit;
    (admin, product)
}

pub(super) fn name(text: &str) -> DeviceName {
    DeviceName::new(text).unwrap_or_else(|e| panic!("test device name: {e}"))
}

pub(super) async fn new_product<S: ProductStore + DeviceStore>(
    store: &S,
    switch: DynamicRegistration,
) -> (Admin<&S>, ProductRecord) {
    let admin = Admin::new(store);
    let product = admin
        .create_product(None, switch)
        .await
        .unwrap_or_else(|e| panic!("create product: {e}"));
    (admin, product)
}

pub(super) async fn login<S: DeviceStore>(
    store: &S,
    device: &DeviceRecord,
) -> Result<(), AuthError> {
    let cert = DeviceCertificate::new(
        device.product_key,
        device.device_name,
        device.device_secret.clone_secret(),
    );
    let creds = build_login(&cert, &LoginOptions::default()).unwrap();
    Authenticator::new(store)
        .authenticate(
            creds.client_id(),
            creds.username(),
            &creds.expose_password(),
        )
        .await
        .map(|_| ())
}

pub(super) async fn state<S: DeviceStore>(
    store: &S,
    pk: &ProductKey,
    dn: &DeviceName,
) -> DeviceState {
    store
        .device(pk, dn)
        .await
        .unwrap()
        .expect("device exists")
        .status
        .state
}

pub(super) async fn register<S: ProductStore + DeviceStore>(
    registrar: &Registrar<S>,
    product: &ProductRecord,
    device_name: DeviceName,
) -> Result<crate::service::IssuedSecret, RegisterError> {
    let cert = ProductCertificate::new(product.product_key, product.product_secret.clone_secret());
    let form =
        build_register_form(&cert, device_name, "conformance1", SignMethod::HmacSha256).unwrap();
    registrar.register_form(form.body().as_bytes()).await
}

/// A product with dynamic registration and registration without pre-registration on, and a
/// device quota.
pub(super) async fn pre_registration_free_product<S: ProductStore + DeviceStore>(
    store: &S,
    device_quota: u32,
) -> (Admin<&S>, ProductRecord) {
    let (admin, product) = new_product(store, DynamicRegistration::On).await;
    let setting = PreRegistrationFree {
        on: true,
        device_quota,
    };
    admin
        .set_pre_registration_free(&product.product_key, setting)
        .await
        .unwrap_or_else(|e| panic!("pre-registration-free: {e}"));
    (admin, product)
}

/// A `regnwl` CONNECT as Link SDK 4.x builds it, and the registrar's answer.
pub(super) async fn regnwl<S: ProductStore + DeviceStore>(
    registrar: &Registrar<S>,
    product: &ProductRecord,
    device_name: &str,
) -> Result<IssuedClientIdToken, RegisterError> {
    let cert = ProductCertificate::new(product.product_key, product.product_secret.clone_secret());
    let options = RegisterOptions::new(ConnectKind::RegisterNoPreregistration, "3154792371")
        .with_sign_method(SignMethod::HmacSha256)
        .with_secure_mode(SecureMode::TLS);
    let connect = build_register_connect(&cert, name(device_name), &options)
        .unwrap_or_else(|e| panic!("regnwl connect: {e}"));
    let password = connect.expose_password();
    let request = ConnectRequest::parse(connect.client_id(), connect.username(), &password)
        .unwrap_or_else(|e| panic!("regnwl parse: {e}"));
    registrar.register_client_id(&request).await
}

/// A `connwl` login with `client_id` and `token`, as Link SDK 4.x sends it.
pub(super) async fn connwl<S: DeviceStore>(
    store: &S,
    product: &ProductRecord,
    device_name: &str,
    client_id: &str,
    token: &str,
) -> Result<(), AuthError> {
    let client_id =
        format!("{client_id}|authType=connwl,securemode=-2,_ss=1,ext=3,_v=sdk-c-4.2.0|");
    let username = format!("{device_name}&{}", product.product_key);
    Authenticator::new(store)
        .authenticate(&client_id, &username, token)
        .await
        .map(|_| ())
}

pub(super) fn refusal<T>(result: Result<T, RegisterError>) -> RefusalCode {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.code(),
    }
}
