//! The conformance suite every store adapter must pass (feature `conformance`).
//!
//! Each function checks one property and panics, like a test, when the store breaks it. Run
//! them all from your adapter's tests with [`run_all`], on a multi-threaded Tokio runtime:
//!
//! ```no_run
//! # use std::sync::Arc;
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn memory_store_conforms() {
//!     iotauth::store::conformance::run_all(|| Arc::new(iotauth::store::MemoryStore::new())).await;
//! }
//! ```
//!
//! Every function creates its own products with random keys, so one shared database (e.g. a
//! PostgreSQL server) can run them all, even concurrently.

use std::sync::Arc;

use tokio::sync::Barrier;

use super::{
    ChainHead, ClientIdChange, DeviceRecord, DeviceStore, DeviceUpdate, EventKind, EventLog,
    EventRecord, MAX_EVENTS_PER_READ, PreRegistrationFree, ProductRecord, ProductStore,
    RANDOM_HISTORY, RegistrationLimit, StoreError, verify_chain,
};
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceState, DeviceStatus, DynamicRegistration, Event, IssuancePolicy};
use crate::mqtt::{
    ConnectKind, ConnectRequest, LoginOptions, RegistrationOptions, SecureMode, build_login,
    build_registration_connect,
};
use crate::policy::{FixedClock, UnixMillis};
use crate::register::RefusalCode;
use crate::register::build_register_form;
use crate::secret::{DeviceSecret, ProductSecret};
use crate::service::{
    Admin, AuthError, Authenticator, IssuedClientIdToken, RegisterError, Registrar,
};
use crate::sign::SignMethod;
use crate::{DeviceCertificate, ProductCertificate};

/// The number of tasks that race to issue one secret.
pub const RACERS: usize = 64;

/// Every property, in order; `new_store` is called once per property.
pub async fn run_all<S, F>(new_store: F)
where
    S: ProductStore + DeviceStore + EventLog + Clone + 'static,
    F: Fn() -> S,
{
    event_log_records_every_change(new_store()).await;
    race_event_log(new_store()).await;
    batch_inserts_all_or_none(new_store()).await;
    device_pages(new_store()).await;
    products(new_store()).await;
    devices(new_store()).await;
    compare_and_set(new_store()).await;
    login_lifecycle(new_store()).await;
    registration_lifecycle(new_store()).await;
    dynamic_registration_switch(new_store()).await;
    disabled_devices(new_store()).await;
    reset_and_reregister_give_new_secrets(new_store()).await;
    race_issue_once(new_store(), IssuancePolicy::Once).await;
    race_issue_once(new_store(), IssuancePolicy::RedeliverUntilFirstLogin).await;
    registration_without_pre_registration(new_store()).await;
    race_client_ids(new_store()).await;
    race_device_quota(new_store()).await;
    race_registration_tokens(new_store()).await;
    refusals_switch_registration_off(new_store()).await;
    race_registration_randoms(new_store()).await;
    registration_limits_of_the_registrar(new_store()).await;
}

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
async fn product_events<S: EventLog>(
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

/// The event log records each change, once, atomically with it: after every operation that
/// changed something (and every operator's setting, also of an unchanged value), exactly its
/// event is new; after every operation that failed or changed nothing (a duplicate, a lost
/// compare-and-set, a refused login or registration, a login of an active device, an unknown
/// key), nothing is. The log links up, and the store's head is its last event.
pub async fn event_log_records_every_change<S>(store: S)
where
    S: ProductStore + DeviceStore + EventLog,
{
    let mut head = store.event_head().await.unwrap();
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let dn = name("event-dev");
    let device_of = |kind| (Some("event-dev".to_owned()), kind);
    let mut check = async |expected: Vec<(Option<String>, EventKind)>, what: &str| {
        let found = product_events(&store, head, &pk).await;
        assert_eq!(found, expected, "events after {what}");
        head = store.event_head().await.unwrap();
    };
    check(vec![(None, EventKind::ProductCreated)], "create product").await;

    // Failures write nothing.
    assert!(matches!(
        store.insert_product(product.clone_record()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let ghost = ProductKey::new("a1EventGhst").unwrap();
    assert!(
        store
            .set_dynamic_registration(&ghost, DynamicRegistration::On)
            .await
            .is_err()
    );
    check(vec![], "a duplicate product and an unknown one").await;

    admin
        .set_dynamic_registration(&pk, DynamicRegistration::On)
        .await
        .unwrap();
    admin
        .set_pre_registration_free(&pk, PreRegistrationFree::OFF)
        .await
        .unwrap();
    admin
        .set_registration_limit(&pk, RegistrationLimit::DEFAULT)
        .await
        .unwrap();
    check(
        vec![
            (None, EventKind::DynamicRegistrationOn),
            (None, EventKind::PreRegistrationFreeSet),
            (None, EventKind::RegistrationLimitSet),
        ],
        "the product's settings",
    )
    .await;

    let device = admin.register_device(pk, dn).await.unwrap();
    assert!(admin.register_device(pk, dn).await.is_err());
    check(
        vec![device_of(EventKind::DeviceRegistered)],
        "register (and a duplicate)",
    )
    .await;

    let product = store.product(&pk).await.unwrap().unwrap();
    let registrar = Registrar::new(&store);
    register(&registrar, &product, dn).await.unwrap();
    assert!(register(&registrar, &product, dn).await.is_err());
    check(
        vec![device_of(EventKind::SecretIssued)],
        "issue (and a refused second issue)",
    )
    .await;

    let impostor = DeviceRecord {
        device_secret: DeviceSecret::new("not-the-device-secret").unwrap(),
        ..device.clone_record()
    };
    assert!(login(&store, &impostor).await.is_err());
    login(&store, &device).await.unwrap();
    login(&store, &device).await.unwrap();
    check(
        vec![device_of(EventKind::Activated)],
        "a refused login and two good ones",
    )
    .await;

    let stale = store
        .compare_and_set(
            &pk,
            &dn,
            0,
            DeviceUpdate::Set {
                event: EventKind::Disabled,
                status: DeviceStatus::NEW,
                device_secret: None,
                client_ids: ClientIdChange::Keep,
            },
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Precondition { .. })));
    check(vec![], "a lost compare-and-set").await;

    for event in [Event::Disable, Event::Enable, Event::Reset, Event::Delete] {
        admin.apply(&pk, &dn, event).await.unwrap();
    }
    assert!(admin.apply(&pk, &dn, Event::Delete).await.is_err());
    check(
        vec![
            device_of(EventKind::Disabled),
            device_of(EventKind::Enabled),
            device_of(EventKind::Reset),
            device_of(EventKind::Deleted),
        ],
        "disable, enable, reset, delete (and a second delete)",
    )
    .await;

    // Registration without pre-registration creates the device and issues it a ClientID; one
    // over the quota, and one after the switch went off, log nothing.
    let setting = PreRegistrationFree {
        on: true,
        device_quota: 1,
    };
    admin.set_pre_registration_free(&pk, setting).await.unwrap();
    let product = store.product(&pk).await.unwrap().unwrap();
    regnwl(&registrar, &product, "regnwl-dev").await.unwrap();
    assert!(regnwl(&registrar, &product, "regnwl-other").await.is_err());
    admin
        .set_dynamic_registration(&pk, DynamicRegistration::Off)
        .await
        .unwrap();
    assert!(regnwl(&registrar, &product, "regnwl-dev").await.is_err());
    let regnwl_of = |kind| (Some("regnwl-dev".to_owned()), kind);
    check(
        vec![
            (None, EventKind::PreRegistrationFreeSet),
            regnwl_of(EventKind::DeviceRegistered),
            regnwl_of(EventKind::ClientIdIssued),
            (None, EventKind::DynamicRegistrationOff),
        ],
        "regnwl (and one over the quota, one switched off)",
    )
    .await;
}

/// Under [`RACERS`] concurrent changes the log stays one chain, numbered without gaps: each
/// racer registers and disables a device of its own, and all race to disable one shared device
/// at the same revision; exactly the winners' events are logged, each once.
pub async fn race_event_log<S>(store: S)
where
    S: ProductStore + DeviceStore + EventLog + Clone + 'static,
{
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let shared = name("shared-dev");
    admin.register_device(pk, shared).await.unwrap();
    let head = store.event_head().await.unwrap();
    let disabled = DeviceStatus {
        state: DeviceState::Inactive,
        enabled: false,
    };
    let racer = move |store: S| async move {
        let mut own = [0u8; 8];
        getrandom::fill(&mut own).unwrap();
        let own = name(&format!("racer-{}", hex::encode(own)));
        let admin = Admin::new(&store);
        admin.register_device(pk, own).await.unwrap();
        admin.apply(&pk, &own, Event::Disable).await.unwrap();
        let update = DeviceUpdate::Set {
            event: EventKind::Disabled,
            status: disabled,
            device_secret: None,
            client_ids: ClientIdChange::Keep,
        };
        store.compare_and_set(&pk, &shared, 0, update).await.is_ok()
    };
    let winners = racers_succeeding(&store, racer).await;
    assert_eq!(winners, 1, "one compare-and-set wins");
    let events = product_events(&store, head, &pk).await;
    let count = |kind| events.iter().filter(|(_, k)| *k == kind).count();
    assert_eq!(count(EventKind::DeviceRegistered), RACERS);
    assert_eq!(count(EventKind::Disabled), RACERS + 1);
    assert_eq!(events.len(), 2 * RACERS + 1);
    let shared_events: Vec<_> = events
        .iter()
        .filter(|(dn, _)| dn.as_deref() == Some("shared-dev"))
        .collect();
    assert_eq!(shared_events.len(), 1, "the shared device's one change");
    // Each racer's own device: registered before disabled.
    for (dn, kind) in &events {
        if *kind == EventKind::Disabled && dn.as_deref() != Some("shared-dev") {
            let position = |kind| {
                events
                    .iter()
                    .position(|e| e == &(dn.clone(), kind))
                    .unwrap_or_else(|| panic!("{dn:?}: no {kind} event"))
            };
            assert!(
                position(EventKind::DeviceRegistered) < position(EventKind::Disabled),
                "{dn:?}: events in the order of the changes"
            );
        }
    }
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
    secrets.push(issued.device_secret().expose_secret().to_owned());
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
async fn racers_succeeding<S, F, Fut>(store: &S, attempt: F) -> usize
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
async fn limited_product<S: ProductStore + DeviceStore>(
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

/// The registration token bucket: of [`RACERS`] concurrent takes at one instant, exactly the
/// burst succeed; a second later, the rate's worth more; the limit is stored with the product.
pub async fn race_registration_tokens<S>(store: S)
where
    S: ProductStore + DeviceStore + Clone + 'static,
{
    let limit = RegistrationLimit::DEFAULT.with_rate(2, 10).unwrap();
    let (_, product) = limited_product(&store, limit).await;
    let pk = product.product_key;
    let stored = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(stored.registration_limit, limit);
    let now = UnixMillis(1_800_000_000_000);
    let taken = racers_succeeding(&store, |store| async move {
        store.take_registration_token(&pk, now).await.unwrap()
    })
    .await;
    assert_eq!(taken, 10, "exactly the burst");
    let later = UnixMillis(now.0 + 1000);
    let refilled = [
        store.take_registration_token(&pk, later).await.unwrap(),
        store.take_registration_token(&pk, later).await.unwrap(),
        store.take_registration_token(&pk, later).await.unwrap(),
    ];
    assert_eq!(refilled, [true, true, false], "2 a second");

    // A node whose clock runs 120 s ahead takes one: this clock is throttled for one interval
    // (half a second), not for 120 s.
    let (_, product) = limited_product(&store, limit).await;
    let pk = product.product_key;
    let t = UnixMillis(1_900_000_000_000);
    let ahead = UnixMillis(t.0 + 120_000);
    assert!(store.take_registration_token(&pk, ahead).await.unwrap());
    assert!(!store.take_registration_token(&pk, t).await.unwrap());
    let half_a_second = UnixMillis(t.0 + 500);
    assert!(
        store
            .take_registration_token(&pk, half_a_second)
            .await
            .unwrap()
    );
}

/// The circuit breaker: as many refusals as the threshold within the window leave the switch
/// on, however they are spread; one more within the window switches it off, once however many
/// race, recording when; refusals older than the window no longer count; an operator's
/// switch forgets the refusals counted.
pub async fn refusals_switch_registration_off<S>(store: S)
where
    S: ProductStore + DeviceStore + EventLog + Clone + 'static,
{
    let limit = RegistrationLimit::DEFAULT.with_refusals(5, 60).unwrap();
    let (admin, product) = limited_product(&store, limit).await;
    let pk = product.product_key;
    let head = store.event_head().await.unwrap();
    let at = |seconds: u64| UnixMillis(1_800_000_000_000 + seconds * 1000);
    let refuse = |seconds: u64| {
        let store = store.clone();
        async move {
            store
                .record_registration_refusal(&pk, at(seconds))
                .await
                .unwrap()
        }
    };
    // 5 within 60 s, spread over 59 s: not more than the threshold.
    for seconds in [0, 15, 30, 45, 59] {
        assert!(!refuse(seconds).await);
    }
    // At 61 s the refusal of 0 s is out of the window: still 5 within it.
    assert!(!refuse(61).await);
    let on = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(on.dynamic_registration, DynamicRegistration::On);
    // Another at 62 s makes 6 within the last 60 s (15, 30, 45, 59, 61, 62): off.
    assert!(
        refuse(62).await,
        "the 6th within the window switches it off"
    );
    let off = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(off.dynamic_registration, DynamicRegistration::Off);
    assert_eq!(off.switched_off_by_breaker_at, Some(at(62)));
    // Off: refusals are not counted, nothing switches again.
    assert!(!refuse(63).await);

    // The operator turns it on: the refusals counted are forgotten, and a full threshold is
    // needed again.
    admin
        .set_dynamic_registration(&pk, DynamicRegistration::On)
        .await
        .unwrap();
    let on = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(on.switched_off_by_breaker_at, None);
    for _ in 0..5 {
        assert!(!refuse(64).await);
    }
    admin
        .set_dynamic_registration(&pk, DynamicRegistration::On)
        .await
        .unwrap();
    for _ in 0..5 {
        assert!(!refuse(65).await, "the switch forgot the 5 before");
    }
    // A burst: one of the racers switches it off.
    let switched = racers_succeeding(&store, |store| async move {
        store
            .record_registration_refusal(&pk, at(66))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(switched, 1, "switched off once");
    let off = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(off.dynamic_registration, DynamicRegistration::Off);
    // Each switch-off, by the breaker or an operator, is an event; counted refusals are not.
    assert_eq!(
        product_events(&store, head, &pk).await,
        [
            EventKind::BreakerTripped,
            EventKind::DynamicRegistrationOn,
            EventKind::DynamicRegistrationOn,
            EventKind::BreakerTripped,
        ]
        .map(|kind| (None, kind))
    );
}

/// The `random` history: of concurrent records of one random, one is new; a random seen
/// before is refused; each device keeps the [`RANDOM_HISTORY`] recorded last, in order.
pub async fn race_registration_randoms<S>(store: S)
where
    S: ProductStore + DeviceStore + Clone + 'static,
{
    let (_, product) = new_product(&store, DynamicRegistration::On).await;
    let (pk, dn) = (product.product_key, name("random-dev"));
    let new = racers_succeeding(&store, |store| async move {
        store
            .record_registration_random(&pk, &dn, "r-0")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(new, 1, "one record of a random is new");
    // Another device's history is its own.
    let other = name("random-other");
    assert!(
        store
            .record_registration_random(&pk, &other, "r-0")
            .await
            .unwrap()
    );
    for i in 1..=RANDOM_HISTORY {
        let fresh = store
            .record_registration_random(&pk, &dn, &format!("r-{i}"))
            .await
            .unwrap();
        assert!(fresh, "r-{i} is new");
    }
    // r-1 … r-32 are kept (the oldest of them too), r-0 was forgotten.
    for kept in ["r-1".to_owned(), format!("r-{RANDOM_HISTORY}")] {
        let again = store
            .record_registration_random(&pk, &dn, &kept)
            .await
            .unwrap();
        assert!(!again, "{kept} is still remembered");
    }
    assert!(
        store
            .record_registration_random(&pk, &dn, "r-0")
            .await
            .unwrap(),
        "the oldest was forgotten"
    );
    assert!(
        !store
            .record_registration_random(&pk, &dn, "r-0")
            .await
            .unwrap(),
        "and is remembered again"
    );
}

/// The registrar applies the limits: a harvest gets the burst, then 429; refusals switch the
/// product off; with `unique_random`, a replayed form is refused before and after a reset, a
/// fresh random is not; a refused request takes no token.
pub async fn registration_limits_of_the_registrar<S>(store: S)
where
    S: ProductStore + DeviceStore + Clone,
{
    let limit = RegistrationLimit::DEFAULT
        .with_rate(1, 3)
        .and_then(|l| l.with_refusals(4, 60))
        .unwrap();
    let (admin, product) = limited_product(&store, limit).await;
    let pk = product.product_key;
    let now = Arc::new(FixedClock(UnixMillis(1_800_000_000_000)));
    let registrar = Registrar::new(store.clone()).with_clock(now);
    let names: Vec<DeviceName> = (0..5).map(|i| name(&format!("harvest-{i}"))).collect();
    for dn in &names {
        admin.register_device(pk, *dn).await.unwrap();
    }
    let mut codes = Vec::new();
    for dn in &names {
        let code = register(&registrar, &product, *dn)
            .await
            .map_or_else(|e| e.code().code(), |_| 200);
        codes.push(code);
    }
    assert_eq!(
        codes,
        [200, 200, 200, 429, 429],
        "the burst, then throttled"
    );
    // Refusals (already issued, unknown device) take no token, and the 5th switches the
    // product off. A second later the bucket holds one token: one more issue, not two.
    for dn in [names[0], names[1], name("nobody-1"), name("nobody-2")] {
        assert!(register(&registrar, &product, dn).await.is_err());
    }
    let registrar = registrar.with_clock(Arc::new(FixedClock(UnixMillis(1_800_000_001_000))));
    let mut after = Vec::new();
    for dn in [names[3], names[4]] {
        let code = register(&registrar, &product, dn)
            .await
            .map_or_else(|e| e.code().code(), |_| 200);
        after.push(code);
    }
    assert_eq!(after, [200, 429], "the refusals took no token");
    assert_eq!(
        store
            .product(&pk)
            .await
            .unwrap()
            .unwrap()
            .dynamic_registration,
        DynamicRegistration::On,
        "4 refusals: not more than the threshold"
    );
    let refused = register(&registrar, &product, name("nobody-3"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), RefusalCode::DeviceNotFound);
    assert_eq!(registrar.breaker_trips(), 1);
    let off = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(off.dynamic_registration, DynamicRegistration::Off);
    assert_eq!(
        register(&registrar, &product, names[4])
            .await
            .unwrap_err()
            .code(),
        RefusalCode::DynamicRegistrationDisabled
    );

    // Replay, on a product that asks for unique randoms.
    let limit = RegistrationLimit::DEFAULT.with_unique_random(true);
    let (admin, product) = limited_product(&store, limit).await;
    let pk = product.product_key;
    let dn = name("replayed");
    admin.register_device(pk, dn).await.unwrap();
    let registrar =
        Registrar::new(store.clone()).with_policy(IssuancePolicy::RedeliverUntilFirstLogin);
    let cert = ProductCertificate::new(pk, product.product_secret.clone_secret());
    let form = |random: &str| {
        build_register_form(&cert, dn, random, SignMethod::HmacSha256)
            .unwrap()
            .body()
            .to_owned()
    };
    let captured = form("captured1");
    registrar.register_form(captured.as_bytes()).await.unwrap();
    let replayed = registrar
        .register_form(captured.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(replayed.code(), RefusalCode::RandomReused);
    registrar
        .register_form(form("fresh2").as_bytes())
        .await
        .unwrap();
    admin.apply(&pk, &dn, Event::Reset).await.unwrap();
    let replayed = registrar
        .register_form(captured.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(
        replayed.code(),
        RefusalCode::RandomReused,
        "after a reset too"
    );
    let issued = registrar
        .register_form(form("fresh3").as_bytes())
        .await
        .unwrap();
    let stored = store.device(&pk, &dn).await.unwrap().unwrap();
    assert_eq!(
        issued.device_secret().expose_secret(),
        stored.device_secret.expose_secret(),
        "a fresh random gets the new secret"
    );
}

/// [`ProductStore::insert_products`] and [`DeviceStore::insert_devices`] insert all or none:
/// a batch that holds a taken key or name, one given twice, or a device of an unknown product
/// inserts nothing and logs nothing; a batch that succeeds stores each as given and logs each
/// one's events in order: `product_created`; `device_registered`, then `activated` for an
/// Active device and `disabled` for a disabled one. A batch larger than one SQL statement's
/// rows is one write too.
pub async fn batch_inserts_all_or_none<S>(store: S)
where
    S: ProductStore + DeviceStore + EventLog,
{
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let imported = |key: &str| ProductRecord {
        product_key: ProductKey::new(key).unwrap(),
        product_secret: ProductSecret::new(&format!("secret-of-{key}")).unwrap(),
        dynamic_registration: DynamicRegistration::On,
        name: None,
        pre_registration_free: PreRegistrationFree::OFF,
        registration_limit: RegistrationLimit::DEFAULT,
        switched_off_by_breaker_at: None,
    };
    let before = store.event_head().await.unwrap();
    let fresh = format!("b{}", &pk.as_str()[1..]);
    for (products, what) in [
        (vec![imported(&fresh), imported(pk.as_str())], "a taken key"),
        (vec![imported(&fresh), imported(&fresh)], "a key twice"),
    ] {
        let refused = store.insert_products(products).await;
        assert!(
            matches!(refused, Err(StoreError::AlreadyExists { .. })),
            "a product batch with {what} is refused: {refused:?}"
        );
        let fresh_key = ProductKey::new(&fresh).unwrap();
        assert!(
            store.product(&fresh_key).await.unwrap().is_none(),
            "{what}: nothing inserted"
        );
        assert_eq!(
            product_events(&store, before, &fresh_key).await,
            vec![],
            "a product batch with {what} logs nothing"
        );
    }
    let second = format!("c{}", &pk.as_str()[1..]);
    store
        .insert_products(vec![imported(&fresh), imported(&second)])
        .await
        .unwrap();
    let stored = store
        .product(&ProductKey::new(&second).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.product_secret.expose_secret(),
        format!("secret-of-{second}")
    );
    // Other tests may append meanwhile (a shared database): these two products' events.
    let kinds: Vec<_> = events_since(&store, before)
        .await
        .into_iter()
        .filter(|e| [fresh.as_str(), second.as_str()].contains(&e.product_key.as_str()))
        .map(|e| (e.product_key.as_str().to_owned(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (fresh.clone(), EventKind::ProductCreated),
            (second, EventKind::ProductCreated)
        ]
    );
    admin
        .register_device(pk, name("batch-taken"))
        .await
        .unwrap();
    let device = |text: &str, state, enabled| DeviceRecord {
        product_key: pk,
        device_name: name(text),
        device_secret: DeviceSecret::new(&format!("secret-of-{text}")).unwrap(),
        status: DeviceStatus { state, enabled },
        revision: 0,
        client_ids: Vec::new(),
    };
    let batch = |last: DeviceRecord| {
        let mut devices: Vec<DeviceRecord> = (0..250)
            .map(|i| device(&format!("batch-{i:03}"), DeviceState::Inactive, true))
            .collect();
        devices.push(last);
        devices
    };
    let head = store.event_head().await.unwrap();
    let ghost = ProductKey::new("a1BatchGhst").unwrap();
    let refusals = [
        (
            batch(device("batch-taken", DeviceState::Inactive, true)),
            "a taken name",
        ),
        (
            batch(device("batch-007", DeviceState::Inactive, true)),
            "a name twice",
        ),
        (
            batch(DeviceRecord {
                product_key: ghost,
                ..device("batch-ghost", DeviceState::Inactive, true)
            }),
            "an unknown product",
        ),
    ];
    for (devices, what) in refusals {
        let refused = store.insert_devices(devices).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::AlreadyExists { .. } | StoreError::NotFound { .. })
            ),
            "a batch with {what} is refused: {refused:?}"
        );
        assert!(
            store
                .device(&pk, &name("batch-000"))
                .await
                .unwrap()
                .is_none(),
            "a batch with {what} inserts nothing"
        );
        assert_eq!(
            product_events(&store, head, &pk).await,
            vec![],
            "a batch with {what} logs nothing"
        );
    }

    let mut devices = batch(device("batch-online", DeviceState::Active, true));
    devices.push(device("batch-disabled", DeviceState::Active, false));
    devices.push(device("batch-unactive-off", DeviceState::Inactive, false));
    store.insert_devices(devices).await.unwrap();
    let stored = store
        .device(&pk, &name("batch-249"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.device_secret.expose_secret(), "secret-of-batch-249");
    assert_eq!(stored.status, DeviceStatus::NEW);
    let stored = store
        .device(&pk, &name("batch-disabled"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.status,
        DeviceStatus {
            state: DeviceState::Active,
            enabled: false
        }
    );
    assert_eq!(store.device_count(&pk).await.unwrap(), 254);
    let registered = |text: &str| (Some(text.to_owned()), EventKind::DeviceRegistered);
    let mut expected: Vec<_> = (0..250)
        .map(|i| registered(&format!("batch-{i:03}")))
        .collect();
    expected.extend([
        registered("batch-online"),
        (Some("batch-online".to_owned()), EventKind::Activated),
        registered("batch-disabled"),
        (Some("batch-disabled".to_owned()), EventKind::Activated),
        (Some("batch-disabled".to_owned()), EventKind::Disabled),
        registered("batch-unactive-off"),
        (Some("batch-unactive-off".to_owned()), EventKind::Disabled),
    ]);
    assert_eq!(product_events(&store, head, &pk).await, expected);
}

/// [`DeviceStore::device_page`] cuts a product's devices, ordered bytewise by name (`Page-b`
/// before `page-a`, whatever the database's collation), into pages that together hold each
/// device once, with its status and without its secret; past the end, and for an unknown
/// product, a page is empty.
pub async fn device_pages<S>(store: S)
where
    S: ProductStore + DeviceStore,
{
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    for text in ["page-c", "page-a", "page-e", "Page-b", "page-d"] {
        admin.register_device(pk, name(text)).await.unwrap();
    }
    admin
        .apply(&pk, &name("page-d"), Event::Disable)
        .await
        .unwrap();
    let mut listed = Vec::new();
    for offset in [0, 2, 4] {
        let page = store.device_page(&pk, offset, 2).await.unwrap();
        assert!(page.len() <= 2, "a page holds at most its limit");
        listed.extend(page);
    }
    let names: Vec<&str> = listed.iter().map(|d| d.device_name.as_str()).collect();
    assert_eq!(names, ["Page-b", "page-a", "page-c", "page-d", "page-e"]);
    assert!(listed.iter().all(|d| d.product_key == pk));
    assert_eq!(
        listed[3].status,
        DeviceStatus {
            state: DeviceState::Inactive,
            enabled: false
        }
    );
    assert!(store.device_page(&pk, 5, 2).await.unwrap().is_empty());
    let ghost = ProductKey::new("a1PageGhost").unwrap();
    assert!(store.device_page(&ghost, 0, 10).await.unwrap().is_empty());
}

fn name(text: &str) -> DeviceName {
    DeviceName::new(text).unwrap_or_else(|e| panic!("test device name: {e}"))
}

async fn new_product<S: ProductStore + DeviceStore>(
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

/// Create, read, list; duplicates are `AlreadyExists`; unknown products are `NotFound`.
pub async fn products<S: ProductStore + DeviceStore>(store: S) {
    let (_, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let read = store
        .product(&pk)
        .await
        .unwrap()
        .expect("created product is readable");
    assert_eq!(read.product_key, pk);
    assert_eq!(
        read.product_secret.expose_secret(),
        product.product_secret.expose_secret()
    );
    assert_eq!(read.dynamic_registration, DynamicRegistration::Off);
    assert!(
        store
            .products()
            .await
            .unwrap()
            .iter()
            .any(|p| p.product_key == pk)
    );

    let duplicate = store
        .insert_product(ProductRecord {
            product_key: pk,
            product_secret: ProductSecret::new("another-secret").unwrap(),
            dynamic_registration: DynamicRegistration::On,
            name: None,
            pre_registration_free: PreRegistrationFree::OFF,
            registration_limit: crate::store::RegistrationLimit::DEFAULT,
            switched_off_by_breaker_at: None,
        })
        .await;
    assert!(matches!(
        duplicate,
        Err(StoreError::AlreadyExists { what: "product" })
    ));
    let kept = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(
        kept.product_secret.expose_secret(),
        product.product_secret.expose_secret()
    );

    store
        .set_dynamic_registration(&pk, DynamicRegistration::On)
        .await
        .unwrap();
    let flipped = store.product(&pk).await.unwrap().unwrap();
    assert_eq!(flipped.dynamic_registration, DynamicRegistration::On);

    let unknown = ProductKey::new("unknownProduct0000000000000000").unwrap();
    assert!(store.product(&unknown).await.unwrap().is_none());
    assert!(matches!(
        store
            .set_dynamic_registration(&unknown, DynamicRegistration::On)
            .await,
        Err(StoreError::NotFound { what: "product" })
    ));
}

/// Register, read, list (ordered by name); duplicates and unknown products are refused.
pub async fn devices<S: ProductStore + DeviceStore>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let b = admin.register_device(pk, name("dev-b")).await.unwrap();
    let a = admin.register_device(pk, name("dev-a")).await.unwrap();
    assert_eq!(a.status, DeviceStatus::NEW);
    assert_ne!(
        a.device_secret.expose_secret(),
        b.device_secret.expose_secret()
    );

    let read = store.device(&pk, &name("dev-a")).await.unwrap().unwrap();
    assert_eq!(
        read.device_secret.expose_secret(),
        a.device_secret.expose_secret()
    );
    assert_eq!((read.status, read.revision), (DeviceStatus::NEW, 0));
    let names: Vec<_> = store
        .devices(&pk)
        .await
        .unwrap()
        .iter()
        .map(|d| d.device_name.to_string())
        .collect();
    assert_eq!(names, ["dev-a", "dev-b"]);

    assert!(matches!(
        admin.register_device(pk, name("dev-a")).await,
        Err(crate::service::AdminError::Store(
            StoreError::AlreadyExists { what: "device" }
        ))
    ));
    let unknown = ProductKey::new("unknownProduct0000000000000001").unwrap();
    assert!(matches!(
        admin.register_device(unknown, name("dev-a")).await,
        Err(crate::service::AdminError::Store(StoreError::NotFound {
            what: "product"
        }))
    ));
    assert!(store.device(&pk, &name("dev-c")).await.unwrap().is_none());
    assert!(store.devices(&unknown).await.unwrap().is_empty());
}

/// A compare-and-set with the current revision wins and bumps it; a stale one loses with
/// `Precondition` and changes nothing; a missing device is `NotFound`.
pub async fn compare_and_set<S: ProductStore + DeviceStore>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let dn = name("cas-device");
    admin.register_device(pk, dn).await.unwrap();
    let issued = DeviceStatus {
        state: DeviceState::Issued,
        enabled: true,
    };
    let set = |status| DeviceUpdate::Set {
        event: EventKind::SecretIssued,
        status,
        device_secret: None,
        client_ids: ClientIdChange::Keep,
    };
    store
        .compare_and_set(&pk, &dn, 0, set(issued))
        .await
        .unwrap();
    let after = store.device(&pk, &dn).await.unwrap().unwrap();
    assert_eq!((after.status, after.revision), (issued, 1));

    let stale = store
        .compare_and_set(&pk, &dn, 0, set(DeviceStatus::NEW))
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::Precondition { what: "device" })
    ));
    let unchanged = store.device(&pk, &dn).await.unwrap().unwrap();
    assert_eq!((unchanged.status, unchanged.revision), (issued, 1));

    let rotated = DeviceSecret::new("rotated-secret-for-conformance").unwrap();
    store
        .compare_and_set(
            &pk,
            &dn,
            1,
            DeviceUpdate::Set {
                event: EventKind::Reset,
                status: DeviceStatus::NEW,
                device_secret: Some(rotated.clone_secret()),
                client_ids: ClientIdChange::Keep,
            },
        )
        .await
        .unwrap();
    let reset = store.device(&pk, &dn).await.unwrap().unwrap();
    assert_eq!(reset.device_secret.expose_secret(), rotated.expose_secret());
    assert_eq!((reset.status, reset.revision), (DeviceStatus::NEW, 2));

    assert!(matches!(
        store
            .compare_and_set(&pk, &dn, 1, DeviceUpdate::Delete)
            .await,
        Err(StoreError::Precondition { .. })
    ));
    store
        .compare_and_set(&pk, &dn, 2, DeviceUpdate::Delete)
        .await
        .unwrap();
    assert!(store.device(&pk, &dn).await.unwrap().is_none());
    assert!(matches!(
        store.compare_and_set(&pk, &dn, 3, set(issued)).await,
        Err(StoreError::NotFound { what: "device" })
    ));
}

async fn login<S: DeviceStore>(store: &S, device: &DeviceRecord) -> Result<(), AuthError> {
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

async fn state<S: DeviceStore>(store: &S, pk: &ProductKey, dn: &DeviceName) -> DeviceState {
    store
        .device(pk, dn)
        .await
        .unwrap()
        .expect("device exists")
        .status
        .state
}

/// Per-device certificate: the first good login makes an Inactive device Active; a wrong
/// secret is refused and changes nothing.
pub async fn login_lifecycle<S: ProductStore + DeviceStore>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::Off).await;
    let pk = product.product_key;
    let device = admin.register_device(pk, name("login-dev")).await.unwrap();
    let dn = device.device_name;

    let impostor = DeviceRecord {
        device_secret: DeviceSecret::new("not-the-device-secret").unwrap(),
        ..device.clone_record()
    };
    assert!(matches!(
        login(&store, &impostor).await,
        Err(AuthError::Verify(_))
    ));
    assert_eq!(state(&store, &pk, &dn).await, DeviceState::Inactive);

    login(&store, &device).await.unwrap();
    assert_eq!(state(&store, &pk, &dn).await, DeviceState::Active);
    login(&store, &device).await.unwrap();
    assert_eq!(state(&store, &pk, &dn).await, DeviceState::Active);

    let ghost = DeviceRecord {
        device_name: name("ghost-dev"),
        ..device.clone_record()
    };
    assert!(matches!(
        login(&store, &ghost).await,
        Err(AuthError::UnknownDevice)
    ));
}

async fn register<S: ProductStore + DeviceStore>(
    registrar: &Registrar<S>,
    product: &ProductRecord,
    device_name: DeviceName,
) -> Result<crate::service::IssuedSecret, RegisterError> {
    let cert = ProductCertificate::new(product.product_key, product.product_secret.clone_secret());
    let form =
        build_register_form(&cert, device_name, "conformance1", SignMethod::HmacSha256).unwrap();
    registrar.register_form(form.body().as_bytes()).await
}

/// Per-product certificate: a registered device obtains its secret once; the secret then
/// logs in; a second registration is refused, before and after the login.
pub async fn registration_lifecycle<S: ProductStore + DeviceStore + Clone>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::On).await;
    let pk = product.product_key;
    let registered = admin.register_device(pk, name("reg-dev")).await.unwrap();
    let dn = registered.device_name;
    let registrar = Registrar::new(store.clone());

    let issued = register(&registrar, &product, dn).await.unwrap();
    assert_eq!(
        issued.device_secret().expose_secret(),
        registered.device_secret.expose_secret()
    );
    assert!(!issued.redelivered());
    assert_eq!(state(&store, &pk, &dn).await, DeviceState::Issued);
    assert!(matches!(
        register(&registrar, &product, dn).await,
        Err(RegisterError::Refused(_))
    ));

    login(&store, &registered).await.unwrap();
    assert_eq!(state(&store, &pk, &dn).await, DeviceState::Active);
    let again = Registrar::new(store.clone()).with_policy(IssuancePolicy::RedeliverUntilFirstLogin);
    assert!(matches!(
        register(&again, &product, dn).await,
        Err(RegisterError::Refused(_))
    ));

    assert!(matches!(
        register(&registrar, &product, name("never-registered")).await,
        Err(RegisterError::UnknownDevice)
    ));
    let wrong = ProductRecord {
        product_secret: ProductSecret::new("not-the-product-secret").unwrap(),
        product_key: pk,
        dynamic_registration: DynamicRegistration::On,
        name: None,
        pre_registration_free: PreRegistrationFree::OFF,
        registration_limit: crate::store::RegistrationLimit::DEFAULT,
        switched_off_by_breaker_at: None,
    };
    let other = admin.register_device(pk, name("reg-dev-2")).await.unwrap();
    assert!(matches!(
        register(&registrar, &wrong, other.device_name).await,
        Err(RegisterError::Verify(_))
    ));
    assert_eq!(
        state(&store, &pk, &other.device_name).await,
        DeviceState::Inactive
    );
}

/// The switch off refuses new activations and leaves issued and active devices alone.
pub async fn dynamic_registration_switch<S: ProductStore + DeviceStore + Clone>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::On).await;
    let pk = product.product_key;
    let active = admin
        .register_device(pk, name("switch-active"))
        .await
        .unwrap();
    let waiting = admin
        .register_device(pk, name("switch-waiting"))
        .await
        .unwrap();
    let registrar = Registrar::new(store.clone());
    register(&registrar, &product, active.device_name)
        .await
        .unwrap();
    login(&store, &active).await.unwrap();

    admin
        .set_dynamic_registration(&pk, DynamicRegistration::Off)
        .await
        .unwrap();
    let refused = register(&registrar, &product, waiting.device_name).await;
    assert!(matches!(
        refused,
        Err(RegisterError::Refused(
            crate::TransitionError::DynamicRegistrationOff
        ))
    ));
    assert_eq!(
        state(&store, &pk, &waiting.device_name).await,
        DeviceState::Inactive
    );
    login(&store, &active).await.unwrap();

    admin
        .set_dynamic_registration(&pk, DynamicRegistration::On)
        .await
        .unwrap();
    register(&registrar, &product, waiting.device_name)
        .await
        .unwrap();
}

/// A disabled device can neither log in nor register; enabled again, it can.
pub async fn disabled_devices<S: ProductStore + DeviceStore + Clone>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::On).await;
    let pk = product.product_key;
    let device = admin
        .register_device(pk, name("disabled-dev"))
        .await
        .unwrap();
    let dn = device.device_name;
    admin.apply(&pk, &dn, Event::Disable).await.unwrap();
    assert!(matches!(
        login(&store, &device).await,
        Err(AuthError::Disabled)
    ));
    let registrar = Registrar::new(store.clone());
    assert!(matches!(
        register(&registrar, &product, dn).await,
        Err(RegisterError::Refused(
            crate::TransitionError::Disabled { .. }
        ))
    ));
    assert_eq!(state(&store, &pk, &dn).await, DeviceState::Inactive);

    admin.apply(&pk, &dn, Event::Enable).await.unwrap();
    register(&registrar, &product, dn).await.unwrap();
    login(&store, &device).await.unwrap();
}

/// Reset rotates the secret and allows one new issue; delete then register gives a new
/// secret too; the old secret no longer logs in.
pub async fn reset_and_reregister_give_new_secrets<S: ProductStore + DeviceStore + Clone>(
    store: S,
) {
    let (admin, product) = new_product(&store, DynamicRegistration::On).await;
    let pk = product.product_key;
    let first = admin.register_device(pk, name("reset-dev")).await.unwrap();
    let dn = first.device_name;
    let registrar = Registrar::new(store.clone());
    register(&registrar, &product, dn).await.unwrap();
    login(&store, &first).await.unwrap();

    let status = admin.apply(&pk, &dn, Event::Reset).await.unwrap();
    assert_eq!(status.map(|s| s.state), Some(DeviceState::Inactive));
    let second = register(&registrar, &product, dn).await.unwrap();
    assert_ne!(
        second.device_secret().expose_secret(),
        first.device_secret.expose_secret()
    );
    assert!(matches!(
        login(&store, &first).await,
        Err(AuthError::Verify(_))
    ));

    assert_eq!(admin.apply(&pk, &dn, Event::Delete).await.unwrap(), None);
    assert!(store.device(&pk, &dn).await.unwrap().is_none());
    let third = admin.register_device(pk, dn).await.unwrap();
    assert_ne!(
        third.device_secret.expose_secret(),
        second.device_secret().expose_secret()
    );
    assert_eq!(third.status, DeviceStatus::NEW);
    let issued = register(&registrar, &product, dn).await.unwrap();
    assert_eq!(
        issued.device_secret().expose_secret(),
        third.device_secret.expose_secret()
    );
}

/// [`RACERS`] tasks released together ask for one device's secret. Under `Once` exactly one
/// gets it and the rest are refused; under `RedeliverUntilFirstLogin` exactly one makes the
/// first delivery and every other gets the same secret as a redelivery.
pub async fn race_issue_once<S: ProductStore + DeviceStore + Clone + 'static>(
    store: S,
    policy: IssuancePolicy,
) {
    race_issue_once_on(move || store.clone(), policy).await;
}

/// [`race_issue_once`] with each racer on the store `node()` returns, e.g. pools of several
/// broker nodes on one database, taken in turn.
pub async fn race_issue_once_on<S, F>(node: F, policy: IssuancePolicy)
where
    S: ProductStore + DeviceStore + 'static,
    F: Fn() -> S,
{
    let store = node();
    let (admin, product) = new_product(&store, DynamicRegistration::On).await;
    let device = admin
        .register_device(product.product_key, name("race-dev"))
        .await
        .unwrap();
    let cert = ProductCertificate::new(product.product_key, product.product_secret.clone_secret());
    let body = build_register_form(&cert, device.device_name, "race", SignMethod::HmacSha1)
        .unwrap()
        .body()
        .to_owned();
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let registrar = Registrar::new(node()).with_policy(policy);
            let (barrier, body) = (barrier.clone(), body.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                registrar.register_form(body.as_bytes()).await
            })
        })
        .collect();
    let (mut first, mut again, mut refused) = (0, 0, 0);
    for racer in racers {
        match racer.await.expect("racer task panicked") {
            Ok(issued) => {
                assert_eq!(
                    issued.device_secret().expose_secret(),
                    device.device_secret.expose_secret()
                );
                if issued.redelivered() {
                    again += 1;
                } else {
                    first += 1;
                }
            }
            Err(RegisterError::Refused(_)) => refused += 1,
            Err(other) => panic!("unexpected refusal in the race: {other}"),
        }
    }
    println!(
        "issue race, {policy:?}: {RACERS} racers, {first} first delivery, {again} redeliveries, {refused} refused"
    );
    assert_eq!(first, 1, "exactly one first delivery ({policy:?})");
    match policy {
        IssuancePolicy::Once => assert_eq!((again, refused), (0, RACERS - 1)),
        IssuancePolicy::RedeliverUntilFirstLogin => assert_eq!((again, refused), (RACERS - 1, 0)),
    }
    let stored = store
        .device(&product.product_key, &device.device_name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status.state, DeviceState::Issued);
}

/// A product with dynamic registration and registration without pre-registration on, and a
/// device quota.
async fn pre_registration_free_product<S: ProductStore + DeviceStore>(
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
async fn regnwl<S: ProductStore + DeviceStore>(
    registrar: &Registrar<S>,
    product: &ProductRecord,
    device_name: &str,
) -> Result<IssuedClientIdToken, RegisterError> {
    let cert = ProductCertificate::new(product.product_key, product.product_secret.clone_secret());
    let options = RegistrationOptions {
        kind: ConnectKind::RegisterNoPreregistration,
        random: "3154792371",
        sign_method: SignMethod::HmacSha256,
        secure_mode: SecureMode::TLS,
        instance_id: None,
    };
    let connect = build_registration_connect(&cert, name(device_name), &options)
        .unwrap_or_else(|e| panic!("regnwl connect: {e}"));
    let password = connect.expose_password();
    let request = ConnectRequest::parse(connect.client_id(), connect.username(), &password)
        .unwrap_or_else(|e| panic!("regnwl parse: {e}"));
    registrar.register_client_id(&request).await
}

/// A `connwl` login with `client_id` and `token`, as Link SDK 4.x sends it.
async fn connwl<S: DeviceStore>(
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

fn refusal<T>(result: Result<T, RegisterError>) -> RefusalCode {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.code(),
    }
}

/// `regnwl` creates a device that was not registered, within the quota, and issues ClientIDs
/// (at most five) whose tokens log in with `connwl` (a first login like any other); the store
/// keeps no token; reset revokes them; the switches and disabled devices refuse.
pub async fn registration_without_pre_registration<S: ProductStore + DeviceStore>(store: S) {
    let (admin, product) = pre_registration_free_product(&store, 3).await;
    let registrar = Registrar::new(&store);
    let issued = regnwl(&registrar, &product, "nwl-dev-1")
        .await
        .unwrap_or_else(|e| panic!("regnwl: {e}"));
    let token = issued.token().expose_secret().to_owned();
    let client_id = issued.client_id();
    assert_eq!(issued.identity().device_name().as_str(), "nwl-dev-1");
    let payload: serde_json::Value = serde_json::from_str(&issued.to_ext_regnwl_payload()).unwrap();
    assert_eq!(payload["clientId"], client_id.as_str());
    assert_eq!(payload["deviceToken"], token.as_str());
    let stored = store
        .device(&product.product_key, &name("nwl-dev-1"))
        .await
        .unwrap()
        .expect("the device was created");
    assert_eq!(stored.status.state, DeviceState::Issued);
    assert_eq!(stored.client_ids.len(), 1);
    assert_eq!(stored.client_ids[0].client_id, client_id);
    assert!(stored.client_ids[0].token_digest.matches(&token));

    // connwl: the token logs in (Issued → Active); another token, another ClientID do not.
    connwl(&store, &product, "nwl-dev-1", client_id.as_str(), &token)
        .await
        .unwrap_or_else(|e| panic!("connwl: {e}"));
    let state = store
        .device(&product.product_key, &name("nwl-dev-1"))
        .await
        .unwrap()
        .map(|d| d.status.state);
    assert_eq!(state, Some(DeviceState::Active));
    let other_id = "A".repeat(24);
    for (id, password) in [
        (client_id.as_str(), "0".repeat(32)),
        (other_id.as_str(), token.clone()),
    ] {
        assert!(matches!(
            connwl(&store, &product, "nwl-dev-1", id, &password).await,
            Err(AuthError::Verify(_))
        ));
    }

    // Up to five ClientIDs per device; the sixth is refused. Each one's token logs in.
    let mut tokens = vec![(client_id, token)];
    for _ in 1..crate::MAX_CLIENT_IDS {
        let more = regnwl(&registrar, &product, "nwl-dev-1").await.unwrap();
        tokens.push((more.client_id(), more.token().expose_secret().to_owned()));
    }
    assert_eq!(
        refusal(regnwl(&registrar, &product, "nwl-dev-1").await),
        RefusalCode::TooManyClientIds
    );
    for (id, token) in &tokens {
        connwl(&store, &product, "nwl-dev-1", id.as_str(), token)
            .await
            .unwrap_or_else(|e| panic!("connwl with each ClientID: {e}"));
    }

    // A device registered in advance may use regnwl too; the quota (3) counts every device.
    admin
        .register_device(product.product_key, name("nwl-dev-2"))
        .await
        .unwrap();
    regnwl(&registrar, &product, "nwl-dev-2").await.unwrap();
    regnwl(&registrar, &product, "nwl-dev-3").await.unwrap();
    assert_eq!(
        refusal(regnwl(&registrar, &product, "nwl-dev-4").await),
        RefusalCode::DeviceQuotaReached
    );
    assert!(
        store
            .device(&product.product_key, &name("nwl-dev-4"))
            .await
            .unwrap()
            .is_none()
    );

    // Reset revokes every ClientID; disable refuses connwl and regnwl.
    admin
        .apply(&product.product_key, &name("nwl-dev-1"), Event::Reset)
        .await
        .unwrap();
    for (id, token) in &tokens {
        assert!(
            connwl(&store, &product, "nwl-dev-1", id.as_str(), token)
                .await
                .is_err()
        );
    }
    let fresh = regnwl(&registrar, &product, "nwl-dev-1").await.unwrap();
    admin
        .apply(&product.product_key, &name("nwl-dev-1"), Event::Disable)
        .await
        .unwrap();
    assert!(matches!(
        connwl(
            &store,
            &product,
            "nwl-dev-1",
            fresh.client_id().as_str(),
            fresh.token().expose_secret()
        )
        .await,
        Err(AuthError::Disabled)
    ));
    assert_eq!(
        refusal(regnwl(&registrar, &product, "nwl-dev-1").await),
        RefusalCode::DeviceDisabled
    );

    // A device that logged in with its DeviceSecret gets no ClientID: whoever holds the
    // ProductSecret gets no second way in to it.
    let (admin, own) = pre_registration_free_product(&store, 10).await;
    let device = admin
        .register_device(own.product_key, name("nwl-own-1"))
        .await
        .unwrap();
    login(&store, &device).await.unwrap();
    assert_eq!(
        refusal(regnwl(&registrar, &own, "nwl-own-1").await),
        RefusalCode::AlreadyIssued
    );

    // Without the pre-registration-free switch, or with dynamic registration off: refused,
    // and no device is created.
    let (admin, plain) = new_product(&store, DynamicRegistration::On).await;
    assert_eq!(
        refusal(regnwl(&registrar, &plain, "nwl-dev-5").await),
        RefusalCode::DynamicRegistrationDisabled
    );
    let (_, off) = pre_registration_free_product(&store, 10).await;
    admin
        .set_dynamic_registration(&off.product_key, DynamicRegistration::Off)
        .await
        .unwrap();
    assert_eq!(
        refusal(regnwl(&registrar, &off, "nwl-dev-5").await),
        RefusalCode::DynamicRegistrationDisabled
    );
    for product in [&plain, &off] {
        assert!(
            store
                .devices(&product.product_key)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// [`RACERS`] concurrent `regnwl` for one device that does not exist yet: one device is
/// created, at most five ClientIDs are issued, every issued token logs in and is stored (none
/// lost), and after a reset none does.
pub async fn race_client_ids<S: ProductStore + DeviceStore + Clone + 'static>(store: S) {
    let (admin, product) = pre_registration_free_product(&store, 10).await;
    let product = Arc::new(product);
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, product, barrier) = (store.clone(), product.clone(), barrier.clone());
            tokio::spawn(async move {
                let registrar = Registrar::new(store);
                barrier.wait().await;
                regnwl(&registrar, &product, "nwl-race")
                    .await
                    .map(|issued| {
                        (
                            issued.client_id(),
                            issued.token().expose_secret().to_owned(),
                        )
                    })
            })
        })
        .collect();
    let mut issued = Vec::new();
    for racer in racers {
        match racer.await.expect("racer task panicked") {
            Ok(token) => issued.push(token),
            Err(
                RegisterError::Refused(_) | RegisterError::Store(StoreError::Precondition { .. }),
            ) => {}
            Err(other) => panic!("unexpected refusal in the race: {other}"),
        }
    }
    println!("ClientID race: {RACERS} racers, {} issued", issued.len());
    assert!(
        (1..=crate::MAX_CLIENT_IDS).contains(&issued.len()),
        "{} ClientIDs issued",
        issued.len()
    );
    let stored = store
        .device(&product.product_key, &name("nwl-race"))
        .await
        .unwrap()
        .expect("one device created");
    assert_eq!(stored.client_ids.len(), issued.len(), "no token lost");
    assert_eq!(store.devices(&product.product_key).await.unwrap().len(), 1);
    for (id, token) in &issued {
        connwl(&store, &product, "nwl-race", id.as_str(), token)
            .await
            .unwrap_or_else(|e| panic!("an issued token logs in: {e}"));
    }
    admin
        .apply(&product.product_key, &name("nwl-race"), Event::Reset)
        .await
        .unwrap();
    for (id, token) in &issued {
        assert!(
            connwl(&store, &product, "nwl-race", id.as_str(), token)
                .await
                .is_err()
        );
    }
}

/// [`RACERS`] concurrent `regnwl`, each for a device name of its own, against a quota of five
/// devices: exactly five devices are created, every other racer is refused with the quota.
pub async fn race_device_quota<S: ProductStore + DeviceStore + Clone + 'static>(store: S) {
    const QUOTA: u32 = 5;
    let (_, product) = pre_registration_free_product(&store, QUOTA).await;
    let product = Arc::new(product);
    let barrier = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, product, barrier) = (store.clone(), product.clone(), barrier.clone());
            tokio::spawn(async move {
                let registrar = Registrar::new(store);
                barrier.wait().await;
                regnwl(&registrar, &product, &format!("nwl-quota-{i:02}")).await
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for racer in racers {
        match racer.await.expect("racer task panicked") {
            Ok(_) => created += 1,
            Err(e) if e.code() == RefusalCode::DeviceQuotaReached => refused += 1,
            Err(other) => panic!("unexpected refusal in the quota race: {other}"),
        }
    }
    println!("quota race: {RACERS} racers, {created} devices created, {refused} refused");
    let devices = store.devices(&product.product_key).await.unwrap().len();
    assert_eq!(devices, QUOTA as usize, "devices stored");
    assert_eq!(
        (created, refused),
        (QUOTA as usize, RACERS - QUOTA as usize)
    );
}
