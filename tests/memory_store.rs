//! The memory adapter passes the store conformance suite, including the 64-task issue race
//! under both issuance policies.
#![cfg(feature = "conformance")]

use std::sync::Arc;

use iotauth::store::{ClientIdChange, MemoryStore, conformance};

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

/// The memory adapter: one test per property, named after it.
mod memory_store {
    iotauth::store_conformance_tests!(|| async { super::store() });
}

/// The memory adapter behind the read cache.
mod cached_memory_store {
    use iotauth::store::{CachedStore, MemoryStore};
    use std::sync::Arc;
    use std::time::Duration;
    iotauth::store_conformance_tests!(|| async {
        Arc::new(CachedStore::new(
            MemoryStore::new(),
            Duration::from_secs(60),
        ))
    });
}

/// A store whose compare-and-set ignores the revision (a read-then-write adapter): the race
/// property must catch it, or it proves nothing.
mod broken {
    use async_trait::async_trait;
    use iotauth::store::*;
    use iotauth::{DeviceName, DynamicRegistration, ProductKey};

    #[derive(Debug, Default)]
    pub struct IgnoresRevision(MemoryStore);

    #[async_trait]
    impl ProductStore for IgnoresRevision {
        async fn insert_product(&self, p: ProductRecord) -> Result<(), StoreError> {
            self.0.insert_product(p).await
        }
        async fn insert_products(&self, p: Vec<ProductRecord>) -> Result<(), StoreError> {
            self.0.insert_products(p).await
        }
        async fn product(&self, pk: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
            self.0.product(pk).await
        }
        async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
            self.0.products().await
        }
        async fn set_dynamic_registration(
            &self,
            pk: &ProductKey,
            switch: DynamicRegistration,
        ) -> Result<(), StoreError> {
            self.0.set_dynamic_registration(pk, switch).await
        }
        async fn set_pre_registration_free(
            &self,
            pk: &ProductKey,
            setting: PreRegistrationFree,
        ) -> Result<(), StoreError> {
            self.0.set_pre_registration_free(pk, setting).await
        }
        async fn set_registration_limit(
            &self,
            pk: &ProductKey,
            limit: RegistrationLimit,
        ) -> Result<(), StoreError> {
            self.0.set_registration_limit(pk, limit).await
        }
        async fn take_registration_token(
            &self,
            pk: &ProductKey,
            now: iotauth::UnixMillis,
        ) -> Result<bool, StoreError> {
            self.0.take_registration_token(pk, now).await
        }
        async fn record_registration_refusal(
            &self,
            pk: &ProductKey,
            now: iotauth::UnixMillis,
        ) -> Result<bool, StoreError> {
            self.0.record_registration_refusal(pk, now).await
        }
    }

    #[async_trait]
    impl EventLog for IgnoresRevision {
        async fn events_after(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<EventRecord>, StoreError> {
            self.0.events_after(after, limit).await
        }
        async fn event_head(&self) -> Result<ChainHead, StoreError> {
            self.0.event_head().await
        }
    }

    #[async_trait]
    impl DeviceStore for IgnoresRevision {
        async fn record_registration_random(
            &self,
            pk: &ProductKey,
            dn: &DeviceName,
            random: &str,
        ) -> Result<bool, StoreError> {
            self.0.record_registration_random(pk, dn, random).await
        }
        async fn insert_device(&self, d: DeviceRecord) -> Result<(), StoreError> {
            self.0.insert_device(d).await
        }
        async fn insert_device_within_quota(
            &self,
            d: DeviceRecord,
            quota: u32,
        ) -> Result<(), StoreError> {
            // Counts, then inserts: not atomic.
            let count = self.0.devices(&d.product_key).await?.len();
            tokio::task::yield_now().await;
            if count >= quota as usize {
                return Err(StoreError::QuotaReached);
            }
            self.0.insert_device(d).await
        }
        async fn insert_devices(&self, d: Vec<DeviceRecord>) -> Result<(), StoreError> {
            self.0.insert_devices(d).await
        }
        async fn device(
            &self,
            pk: &ProductKey,
            dn: &DeviceName,
        ) -> Result<Option<DeviceRecord>, StoreError> {
            let read = self.0.device(pk, dn).await;
            // Let the other racers read too, as a slow database would.
            tokio::task::yield_now().await;
            read
        }
        async fn devices(&self, pk: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
            self.0.devices(pk).await
        }
        async fn compare_and_set(
            &self,
            pk: &ProductKey,
            dn: &DeviceName,
            _expected_revision: u64,
            update: DeviceUpdate,
        ) -> Result<(), StoreError> {
            let current = self.0.device(pk, dn).await?.ok_or(StoreError::NotFound {
                what: Entity::Device,
            })?;
            // And a ClientID replaces the list it was read with rather than joining the list
            // as it is now: the lost update of a read-modify-write without the revision.
            if let DeviceUpdate::Set {
                status,
                client_ids: ClientIdChange::Add(record),
                ..
            } = update
            {
                let revoke = DeviceUpdate::Set {
                    event: EventKind::Reset,
                    status,
                    device_secret: None,
                    client_ids: ClientIdChange::RevokeAll,
                };
                self.0
                    .compare_and_set(pk, dn, current.revision, revoke)
                    .await?;
                let add = DeviceUpdate::Set {
                    event: EventKind::ClientIdIssued,
                    status,
                    device_secret: None,
                    client_ids: ClientIdChange::Add(record),
                };
                return self
                    .0
                    .compare_and_set(pk, dn, current.revision + 1, add)
                    .await;
            }
            self.0
                .compare_and_set(pk, dn, current.revision, update)
                .await
        }
    }
}

/// Runs `property` through the suite's runner on the broken store; its panic message.
fn failure_on_a_broken_store<Fut>(
    name: &str,
    property: fn(Arc<broken::IgnoresRevision>) -> Fut,
) -> String
where
    Fut: std::future::Future<Output = ()>,
{
    let failure = std::panic::catch_unwind(|| {
        conformance::run(
            name,
            || async { Arc::new(broken::IgnoresRevision::default()) },
            property,
        )
    })
    .expect_err("the property must fail on a store that ignores the revision");
    failure.downcast::<String>().map(|m| *m).unwrap_or_default()
}

#[test]
fn quota_race_catches_a_store_that_counts_then_inserts_and_names_the_property() {
    let message = failure_on_a_broken_store("race_device_quota", conformance::race_device_quota);
    assert!(
        message.starts_with("store conformance property `race_device_quota` failed: "),
        "{message}"
    );
    assert!(message.contains("devices stored"), "{message}");
}

#[test]
fn client_id_race_catches_a_store_whose_compare_and_set_is_not_atomic() {
    let message = failure_on_a_broken_store("race_client_ids", conformance::race_client_ids);
    assert!(
        message.starts_with("store conformance property `race_client_ids` failed: "),
        "{message}"
    );
    assert!(
        message.contains("ClientIDs issued") || message.contains("no token lost"),
        "{message}"
    );
}

#[test]
fn issue_race_catches_a_store_whose_compare_and_set_is_not_atomic() {
    let message = failure_on_a_broken_store(
        "race_issue_once_under_once",
        conformance::race_issue_once_under_once,
    );
    assert!(
        message.starts_with("store conformance property `race_issue_once_under_once` failed: "),
        "{message}"
    );
}

/// A memory store behind a 200 ms cache, an admin over the cache, and a product's key.
async fn cached_product() -> (
    Arc<MemoryStore>,
    Arc<iotauth::store::CachedStore<Arc<MemoryStore>>>,
    iotauth::service::Admin<Arc<iotauth::store::CachedStore<Arc<MemoryStore>>>>,
    iotauth::ProductKey,
) {
    let inner = Arc::new(MemoryStore::new());
    let cached = Arc::new(iotauth::store::CachedStore::new(
        inner.clone(),
        std::time::Duration::from_millis(200),
    ));
    let admin = iotauth::service::Admin::new(cached.clone());
    let product = admin
        .create_product(None, iotauth::DynamicRegistration::Off)
        .await
        .unwrap();
    (inner, cached, admin, product.product_key)
}

#[tokio::test]
async fn the_cache_serves_a_snapshot_for_its_ttl_and_writes_through_it_drop_it() {
    use iotauth::store::{DeviceStore, DeviceUpdate, EventKind};
    use iotauth::{DeviceName, DeviceState, DeviceStatus, Event};
    let (inner, cached, admin, pk) = cached_product().await;
    let dn = DeviceName::new("cached-01").unwrap();
    admin.register_device(pk, dn).await.unwrap();
    assert!(
        cached
            .device(&pk, &dn)
            .await
            .unwrap()
            .unwrap()
            .status
            .enabled
    );

    // Written around the cache: not seen until the snapshot expires.
    let disabled = DeviceStatus::new(DeviceState::Inactive, false);
    inner
        .compare_and_set(
            &pk,
            &dn,
            0,
            DeviceUpdate::Set {
                event: EventKind::Disabled,
                status: disabled,
                device_secret: None,
                client_ids: ClientIdChange::Keep,
            },
        )
        .await
        .unwrap();
    assert!(
        cached
            .device(&pk, &dn)
            .await
            .unwrap()
            .unwrap()
            .status
            .enabled,
        "served from the snapshot"
    );
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert!(
        !cached
            .device(&pk, &dn)
            .await
            .unwrap()
            .unwrap()
            .status
            .enabled,
        "the snapshot expired"
    );

    // Written through the cache: seen at once.
    admin.apply(&pk, &dn, Event::Enable).await.unwrap();
    assert!(
        cached
            .device(&pk, &dn)
            .await
            .unwrap()
            .unwrap()
            .status
            .enabled
    );
    admin.apply(&pk, &dn, Event::Delete).await.unwrap();
    assert!(cached.device(&pk, &dn).await.unwrap().is_none());
}

/// An unknown name is cached as absent (a refusal for it costs what one for a known device
/// costs); a device created through the cache is seen at once, one created around it within
/// the TTL.
#[tokio::test]
async fn the_cache_keeps_an_absent_device_absent_for_its_ttl_unless_created_through_it() {
    use iotauth::store::{DeviceRecord, DeviceStore};
    use iotauth::{DeviceName, DeviceSecret};
    let (inner, cached, _admin, pk) = cached_product().await;
    let record = |name: &str| {
        DeviceRecord::new(
            pk,
            DeviceName::new(name).unwrap(),
            DeviceSecret::new("s3cr3t-of-a-device").unwrap(),
        )
    };

    let around = DeviceName::new("around-01").unwrap();
    assert!(cached.device(&pk, &around).await.unwrap().is_none());
    inner.insert_device(record("around-01")).await.unwrap();
    assert!(
        cached.device(&pk, &around).await.unwrap().is_none(),
        "absent, from the snapshot"
    );
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert!(
        cached.device(&pk, &around).await.unwrap().is_some(),
        "the snapshot expired"
    );

    let through = DeviceName::new("through-01").unwrap();
    assert!(cached.device(&pk, &through).await.unwrap().is_none());
    cached.insert_device(record("through-01")).await.unwrap();
    assert!(
        cached.device(&pk, &through).await.unwrap().is_some(),
        "seen at once"
    );
}
