//! A short cache of device reads, found and not found, in front of any store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    ChainHead, DeviceRecord, DeviceStore, DeviceSummary, DeviceUpdate, EventLog, EventRecord,
    PreRegistrationFree, ProductRecord, ProductStore, RegistrationLimit, StoreError,
};
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::DynamicRegistration;
use crate::policy::UnixMillis;

/// Each device read: when, and what (`None`: no such device).
type Entries = HashMap<(ProductKey, DeviceName), (Instant, Option<DeviceRecord>)>;

/// The most entries a cache holds; past it, it drops the absent names, and starts over empty
/// when the devices alone fill it.
const MAX_ENTRIES: usize = 100_000;

/// Serves device reads from a snapshot for at most `ttl` after it was read (a hard limit: a
/// hit does not extend it), so a broker under a reconnect storm asks its database once per
/// device and period.
///
/// Every write through the cache (issue, login, disable, enable, reset, delete) drops the
/// device's entry, and so does a lost compare-and-set, so that the retry reads afresh. A change
/// made around the cache, e.g. by an admin command in another process, is seen within `ttl`,
/// or at once by a process that follows the store's event log and calls
/// [`CachedStore::forget`] for each event (`iotauth serve` and the Mosquitto plugin do).
/// Products are not cached.
///
/// A device that does not exist is cached as absent too, so that a login for an unknown name
/// costs what one for a known name costs: otherwise the time of a refusal tells an attacker
/// which device names exist. A device created elsewhere (an admin command in another process)
/// is therefore seen within `ttl` of a failed lookup of its name.
#[derive(Debug)]
pub struct CachedStore<S> {
    inner: S,
    ttl: Duration,
    shared: Arc<Shared>,
    /// Device reads go to the store ([`CachedStore::with_fresh_reads`]).
    fresh_reads: bool,
}

/// The entries, shared by a cache's handles.
#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<Entries>,
    /// Bumped by every invalidation: a read that saw another value when it started may have
    /// read what a write just replaced, so it is not cached.
    epoch: AtomicU64,
}

impl<S> CachedStore<S> {
    /// A cache of `ttl` in front of `inner`.
    pub fn new(inner: S, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            shared: Arc::default(),
            fresh_reads: false,
        }
    }

    /// Another handle on the same cache whose device reads go to the store (and are not
    /// cached), while its writes drop entries as every handle's do: for decisions that must
    /// see the latest state, such as a registration right after an operator deleted and
    /// registered the device again in another process, while logins use the cache.
    pub fn with_fresh_reads(&self) -> Self
    where
        S: Clone,
    {
        Self {
            inner: self.inner.clone(),
            ttl: self.ttl,
            shared: Arc::clone(&self.shared),
            fresh_reads: true,
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // Every change is a single map operation: a panic elsewhere cannot leave it half done.
        self.shared
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the device's entry (a change made around the cache, seen in the event log): the
    /// next read asks the store, and a read in flight is not cached.
    pub fn forget(&self, product_key: &ProductKey, device_name: &DeviceName) {
        let mut entries = self.entries();
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        entries.remove(&(*product_key, *device_name));
    }
}

#[async_trait]
impl<S: ProductStore> ProductStore for CachedStore<S> {
    async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.inner.insert_product(product).await
    }

    async fn insert_products(&self, products: Vec<ProductRecord>) -> Result<(), StoreError> {
        self.inner.insert_products(products).await
    }

    async fn product(&self, product_key: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
        self.inner.product(product_key).await
    }

    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        self.inner.products().await
    }

    async fn set_dynamic_registration(
        &self,
        product_key: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), StoreError> {
        self.inner
            .set_dynamic_registration(product_key, switch)
            .await
    }

    async fn set_pre_registration_free(
        &self,
        product_key: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), StoreError> {
        self.inner
            .set_pre_registration_free(product_key, setting)
            .await
    }

    async fn set_registration_limit(
        &self,
        product_key: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), StoreError> {
        self.inner.set_registration_limit(product_key, limit).await
    }

    async fn take_registration_token(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.inner.take_registration_token(product_key, now).await
    }

    async fn record_registration_refusal(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.inner
            .record_registration_refusal(product_key, now)
            .await
    }
}

#[async_trait]
impl<S: DeviceStore> DeviceStore for CachedStore<S> {
    async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
        let key = (device.product_key, device.device_name);
        let result = self.inner.insert_device(device).await;
        self.forget(&key.0, &key.1);
        result
    }

    async fn insert_device_within_quota(
        &self,
        device: DeviceRecord,
        device_quota: u32,
    ) -> Result<(), StoreError> {
        let key = (device.product_key, device.device_name);
        let result = self
            .inner
            .insert_device_within_quota(device, device_quota)
            .await;
        self.forget(&key.0, &key.1);
        result
    }

    async fn insert_devices(&self, devices: Vec<DeviceRecord>) -> Result<(), StoreError> {
        let keys: Vec<_> = devices
            .iter()
            .map(|device| (device.product_key, device.device_name))
            .collect();
        let result = self.inner.insert_devices(devices).await;
        for (product_key, device_name) in &keys {
            self.forget(product_key, device_name);
        }
        result
    }

    async fn device(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        if self.fresh_reads {
            return self.inner.device(product_key, device_name).await;
        }
        let key = (*product_key, *device_name);
        if let Some((read_at, record)) = self.entries().get(&key)
            && read_at.elapsed() < self.ttl
        {
            return Ok(record.as_ref().map(DeviceRecord::clone_record));
        }
        let read_at = Instant::now();
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let fresh = self.inner.device(product_key, device_name).await?;
        let mut entries = self.entries();
        if self.shared.epoch.load(Ordering::SeqCst) == epoch {
            if entries.len() >= MAX_ENTRIES {
                // Absent names go first: anyone can add them (a refused login with a new
                // name), and they must not push the fleet's devices out.
                entries.retain(|_, (_, record)| record.is_some());
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(
                key,
                (read_at, fresh.as_ref().map(DeviceRecord::clone_record)),
            );
        }
        Ok(fresh)
    }

    async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
        self.inner.devices(product_key).await
    }

    async fn device_page(
        &self,
        product_key: &ProductKey,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<DeviceSummary>, StoreError> {
        self.inner.device_page(product_key, offset, limit).await
    }

    async fn device_count(&self, product_key: &ProductKey) -> Result<u64, StoreError> {
        self.inner.device_count(product_key).await
    }

    async fn compare_and_set(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        expected_revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError> {
        // Dropped before (a concurrent read must not cache the old state for a full period)
        // and after (a read racing the write may have cached the state it replaced).
        self.forget(product_key, device_name);
        let result = self
            .inner
            .compare_and_set(product_key, device_name, expected_revision, update)
            .await;
        self.forget(product_key, device_name);
        result
    }

    async fn record_registration_random(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        random: &str,
    ) -> Result<bool, StoreError> {
        self.inner
            .record_registration_random(product_key, device_name, random)
            .await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.inner.check_ready().await
    }
}

#[async_trait]
impl<S: EventLog> EventLog for CachedStore<S> {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.inner.events_after(after, limit).await
    }

    async fn event_head(&self) -> Result<ChainHead, StoreError> {
        self.inner.event_head().await
    }

    async fn appended(&self) -> bool {
        self.inner.appended().await
    }

    fn observe(&self, event: &EventRecord) {
        if let Some(device_name) = &event.device_name {
            self.forget(&event.product_key, device_name);
        }
        self.inner.observe(event);
    }

    fn observe_lost_events(&self) {
        let mut entries = self.entries();
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        entries.clear();
        drop(entries);
        self.inner.observe_lost_events();
    }
}
