//! Service scenarios: the authenticator, registrar and admin on the store, as devices use them.

use std::sync::Arc;

use tokio::sync::Barrier;

use crate::ProductCertificate;
use crate::id::DeviceName;
use crate::lifecycle::{DeviceState, DeviceStatus, DynamicRegistration, Event, IssuancePolicy};
use crate::policy::{FixedClock, UnixMillis};
use crate::register::RefusalCode;
use crate::register::build_register_form;
use crate::secret::{DeviceSecret, ProductSecret};
use crate::service::{AuthError, RegisterError, Registrar};
use crate::sign::SignMethod;
use crate::store::{
    DeviceRecord, DeviceStore, PreRegistrationFree, ProductRecord, ProductStore, RegistrationLimit,
    StoreError,
};

use super::support::*;

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
        issued.into_device_secret().expose_secret(),
        stored.device_secret.expose_secret(),
        "a fresh random gets the new secret"
    );
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

/// Per-product certificate: a registered device obtains its secret once; the secret then
/// logs in; a second registration is refused, before and after the login.
pub async fn registration_lifecycle<S: ProductStore + DeviceStore + Clone>(store: S) {
    let (admin, product) = new_product(&store, DynamicRegistration::On).await;
    let pk = product.product_key;
    let registered = admin.register_device(pk, name("reg-dev")).await.unwrap();
    let dn = registered.device_name;
    let registrar = Registrar::new(store.clone());

    let issued = register(&registrar, &product, dn).await.unwrap();
    assert!(!issued.redelivered());
    assert_eq!(
        issued.into_device_secret().expose_secret(),
        registered.device_secret.expose_secret()
    );
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
    let second = register(&registrar, &product, dn)
        .await
        .unwrap()
        .into_device_secret();
    assert_ne!(second.expose_secret(), first.device_secret.expose_secret());
    assert!(matches!(
        login(&store, &first).await,
        Err(AuthError::Verify(_))
    ));

    assert_eq!(admin.apply(&pk, &dn, Event::Delete).await.unwrap(), None);
    assert!(store.device(&pk, &dn).await.unwrap().is_none());
    let third = admin.register_device(pk, dn).await.unwrap();
    assert_ne!(third.device_secret.expose_secret(), second.expose_secret());
    assert_eq!(third.status, DeviceStatus::NEW);
    let issued = register(&registrar, &product, dn).await.unwrap();
    assert_eq!(
        issued.into_device_secret().expose_secret(),
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

/// [`race_issue_once`] under [`IssuancePolicy::Once`]: one racer gets the secret, every other
/// is refused.
pub async fn race_issue_once_under_once<S>(store: S)
where
    S: ProductStore + DeviceStore + Clone + 'static,
{
    race_issue_once(store, IssuancePolicy::Once).await;
}

/// [`race_issue_once`] under [`IssuancePolicy::RedeliverUntilFirstLogin`]: one first delivery,
/// every other racer gets the same secret as a redelivery.
pub async fn race_issue_once_under_redelivery<S>(store: S)
where
    S: ProductStore + DeviceStore + Clone + 'static,
{
    race_issue_once(store, IssuancePolicy::RedeliverUntilFirstLogin).await;
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
                let redelivered = issued.redelivered();
                assert_eq!(
                    issued.into_device_secret().expose_secret(),
                    device.device_secret.expose_secret()
                );
                if redelivered {
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
    let payload: serde_json::Value =
        serde_json::from_str(&issued.into_ext_regnwl_payload()).unwrap();
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
    for _ in 1..crate::IssuedClientId::MAX_PER_DEVICE {
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
        (1..=crate::IssuedClientId::MAX_PER_DEVICE).contains(&issued.len()),
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
