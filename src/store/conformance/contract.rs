//! The store contract: what every adapter promises, property by property.

use crate::id::ProductKey;
use crate::lifecycle::{DeviceState, DeviceStatus, DynamicRegistration, Event};
use crate::policy::UnixMillis;
use crate::secret::{DeviceSecret, ProductSecret};
use crate::service::{Admin, Registrar};
use crate::store::Entity;
use crate::store::{
    ClientIdChange, DeviceRecord, DeviceStore, DeviceUpdate, EventKind, EventLog,
    PreRegistrationFree, ProductRecord, ProductStore, RANDOM_HISTORY, RegistrationLimit,
    StoreError,
};

use super::support::*;

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
        Err(StoreError::AlreadyExists {
            what: Entity::Product
        })
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
        Err(StoreError::NotFound {
            what: Entity::Product
        })
    ));
}

/// Register, read, list (ordered by name); duplicates and unknown products are refused; the
/// store assigns revisions (a new device is at revision 0, whatever its record said, alone or
/// in a batch).
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
    assert_eq!(
        names,
        ["dev-a", "dev-b"],
        "devices() lists every device of the product, by name"
    );

    assert!(matches!(
        admin.register_device(pk, name("dev-a")).await,
        Err(crate::service::AdminError::Store(
            StoreError::AlreadyExists {
                what: Entity::Device
            }
        ))
    ));
    let unknown = ProductKey::new("unknownProduct0000000000000001").unwrap();
    assert!(matches!(
        admin.register_device(unknown, name("dev-a")).await,
        Err(crate::service::AdminError::Store(StoreError::NotFound {
            what: Entity::Product
        }))
    ));
    assert!(store.device(&pk, &name("dev-c")).await.unwrap().is_none());
    assert!(store.devices(&unknown).await.unwrap().is_empty());

    let claiming = |text: &str| {
        let mut record = DeviceRecord::new(pk, name(text), DeviceSecret::new("s3cr3t").unwrap());
        record.revision = 7;
        record
    };
    store.insert_device(claiming("dev-rev-1")).await.unwrap();
    store
        .insert_devices(vec![claiming("dev-rev-2")])
        .await
        .unwrap();
    for text in ["dev-rev-1", "dev-rev-2"] {
        let read = store.device(&pk, &name(text)).await.unwrap().unwrap();
        assert_eq!(read.revision, 0, "{text}: the store assigns revisions");
    }
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
        Err(StoreError::Precondition {
            what: Entity::Device
        })
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
        Err(StoreError::NotFound {
            what: Entity::Device
        })
    ));
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
