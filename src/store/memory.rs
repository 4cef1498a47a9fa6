//! The in-memory store: for tests, examples and single-process tools. Nothing survives the
//! process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use super::{
    Actor, ChainHead, ClientIdChange, ClientIdRecord, DeviceRecord, DeviceStore, DeviceUpdate,
    EventKind, EventLog, EventRecord, MAX_EVENTS_PER_READ, NewEvent, PreRegistrationFree,
    ProductRecord, ProductStore, RANDOM_HISTORY, RegistrationLimit, StoreError,
};
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceStatus, DynamicRegistration};
use crate::policy::{Clock, SystemClock, UnixMillis};
use crate::secret::DeviceSecret;
use crate::store::Entity;

/// A store in lock-guarded maps. Every operation takes the lock once and never across an
/// `.await`, so each is atomic, compare-and-set included. Logins only read, so they share the
/// lock; a device costs its name, its secret and a small fixed record (no copy of its product
/// key), looked up by hash.
///
/// ```
/// # use iotauth::store::*;
/// # use iotauth::*;
/// # tokio_test_block_on(async {
/// let store = MemoryStore::new();
/// let pk = ProductKey::new("a1BwAGV0001")?;
/// let secret = ProductSecret::new("Yr0iF3HIgNkwiaPj")?;
/// store.insert_product(ProductRecord::new(pk, secret, DynamicRegistration::On)).await?;
/// assert!(store.product(&pk).await?.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    inner: RwLock<Maps>,
    actor: Actor,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            actor: Actor::library(),
        }
    }
}

#[derive(Debug, Default)]
struct Maps {
    products: BTreeMap<ProductKey, ProductRecord>,
    devices: HashMap<ProductKey, HashMap<DeviceName, StoredDevice>>,
    /// Each product's token bucket, as its theoretical arrival time in microseconds (see
    /// [`RegistrationLimit`]).
    issue_tats: HashMap<ProductKey, i64>,
    /// Each product's refusals within its window, as times in microseconds, oldest first.
    refusals: HashMap<ProductKey, std::collections::VecDeque<i64>>,
    /// The newest `random` values of each device's registrations, oldest first.
    randoms: HashMap<(ProductKey, DeviceName), std::collections::VecDeque<Box<str>>>,
    /// The event log, oldest first (`events[i].seq == i + 1`).
    events: Vec<EventRecord>,
}

/// `now` in microseconds, as the buckets count.
fn micros(now: UnixMillis) -> i64 {
    i64::try_from(now.0.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A device as kept: its identity is the two map keys.
#[derive(Debug)]
struct StoredDevice {
    device_secret: DeviceSecret,
    status: DeviceStatus,
    revision: u64,
    client_ids: Vec<ClientIdRecord>,
}

impl StoredDevice {
    fn record(&self, product_key: ProductKey, device_name: DeviceName) -> DeviceRecord {
        DeviceRecord {
            product_key,
            device_name,
            device_secret: self.device_secret.clone_secret(),
            status: self.status,
            revision: self.revision,
            client_ids: self.client_ids.clone(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store with its events written by `actor` (instead of [`Actor::library`]).
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    // A panic while holding the lock cannot leave a half-applied change: every mutation is a
    // single map operation. So a poisoned lock is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn update_product(
        &self,
        product_key: &ProductKey,
        kind: EventKind,
        change: impl FnOnce(&mut ProductRecord),
    ) -> Result<(), StoreError> {
        let mut maps = self.write();
        let product = maps
            .products
            .get_mut(product_key)
            .ok_or(StoreError::NotFound {
                what: Entity::Product,
            })?;
        change(product);
        maps.log(&self.actor, NewEvent::product(*product_key, kind));
        Ok(())
    }
}

impl Maps {
    /// Appends the event of a change made under the same lock.
    fn log(&mut self, actor: &Actor, new: NewEvent) {
        let head = self
            .events
            .last()
            .map_or(ChainHead::EMPTY, |last| ChainHead {
                seq: last.seq,
                hash: last.hash,
            });
        let event = EventRecord::chain(head.seq, head.hash, SystemClock.now(), actor, new);
        self.events.push(event);
    }

    /// Inserts `device`, within `device_quota` devices of its product when given.
    fn insert_device(
        &mut self,
        actor: &Actor,
        device: DeviceRecord,
        device_quota: Option<u32>,
    ) -> Result<(), StoreError> {
        if !self.products.contains_key(&device.product_key) {
            return Err(StoreError::NotFound {
                what: Entity::Product,
            });
        }
        let devices = self.devices.entry(device.product_key).or_default();
        if devices.contains_key(&device.device_name) {
            return Err(StoreError::AlreadyExists {
                what: Entity::Device,
            });
        }
        if device_quota.is_some_and(|quota| devices.len() >= quota as usize) {
            return Err(StoreError::QuotaReached);
        }
        devices.insert(
            device.device_name,
            StoredDevice {
                device_secret: device.device_secret,
                status: device.status,
                // The store assigns revisions: a new device starts at 0.
                revision: 0,
                client_ids: device.client_ids,
            },
        );
        for new in NewEvent::of_insert(device.product_key, device.device_name, device.status) {
            self.log(actor, new);
        }
        Ok(())
    }
}

#[async_trait]
impl ProductStore for MemoryStore {
    async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.insert_products(vec![product]).await
    }

    async fn insert_products(&self, products: Vec<ProductRecord>) -> Result<(), StoreError> {
        let mut maps = self.write();
        // Every product is checked before any is inserted: all or none.
        let mut keys = std::collections::HashSet::new();
        for product in &products {
            if maps.products.contains_key(&product.product_key) || !keys.insert(product.product_key)
            {
                return Err(StoreError::AlreadyExists {
                    what: Entity::Product,
                });
            }
        }
        for product in products {
            let product_key = product.product_key;
            maps.products.insert(product_key, product);
            maps.log(
                &self.actor,
                NewEvent::product(product_key, EventKind::ProductCreated),
            );
        }
        Ok(())
    }

    async fn product(&self, product_key: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
        Ok(self
            .read()
            .products
            .get(product_key)
            .map(ProductRecord::clone_record))
    }

    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        Ok(self
            .read()
            .products
            .values()
            .map(ProductRecord::clone_record)
            .collect())
    }

    async fn set_dynamic_registration(
        &self,
        product_key: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), StoreError> {
        let mut maps = self.write();
        let product = maps
            .products
            .get_mut(product_key)
            .ok_or(StoreError::NotFound {
                what: Entity::Product,
            })?;
        product.dynamic_registration = switch;
        product.switched_off_by_breaker_at = None;
        maps.refusals.remove(product_key);
        maps.log(
            &self.actor,
            NewEvent::product(*product_key, EventKind::of_switch(switch)),
        );
        Ok(())
    }

    async fn set_pre_registration_free(
        &self,
        product_key: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), StoreError> {
        self.update_product(product_key, EventKind::PreRegistrationFreeSet, |product| {
            product.pre_registration_free = setting;
        })
    }

    async fn set_registration_limit(
        &self,
        product_key: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), StoreError> {
        let mut maps = self.write();
        let product = maps
            .products
            .get_mut(product_key)
            .ok_or(StoreError::NotFound {
                what: Entity::Product,
            })?;
        product.registration_limit = limit;
        maps.issue_tats.remove(product_key);
        maps.log(
            &self.actor,
            NewEvent::product(*product_key, EventKind::RegistrationLimitSet),
        );
        Ok(())
    }

    async fn take_registration_token(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut maps = self.write();
        let Some(limit) = maps.products.get(product_key).map(|p| p.registration_limit) else {
            return Ok(false);
        };
        let tat = maps.issue_tats.entry(*product_key).or_default();
        let (next, admitted) = limit.admit_issue(*tat, micros(now));
        *tat = next;
        Ok(admitted)
    }

    async fn record_registration_refusal(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut guard = self.write();
        let maps = &mut *guard;
        let Maps {
            products, refusals, ..
        } = &mut *maps;
        let Some(product) = products.get_mut(product_key) else {
            return Ok(false);
        };
        let limit = product.registration_limit;
        if product.dynamic_registration != DynamicRegistration::On || limit.refusal_threshold() == 0
        {
            return Ok(false);
        }
        let now = micros(now);
        let counted = refusals.entry(*product_key).or_default();
        counted.push_back(now);
        while counted
            .front()
            .is_some_and(|&at| at <= now - limit.window_micros())
        {
            counted.pop_front();
        }
        let tripped = counted.len() > limit.refusal_threshold() as usize;
        if tripped {
            product.dynamic_registration = DynamicRegistration::Off;
            product.switched_off_by_breaker_at = Some(UnixMillis(now as u64 / 1000));
            refusals.remove(product_key);
            maps.log(
                &self.actor,
                NewEvent::product(*product_key, EventKind::BreakerTripped),
            );
        }
        Ok(tripped)
    }
}

#[async_trait]
impl DeviceStore for MemoryStore {
    async fn record_registration_random(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        random: &str,
    ) -> Result<bool, StoreError> {
        let mut maps = self.write();
        let seen = maps
            .randoms
            .entry((*product_key, *device_name))
            .or_default();
        if seen.iter().any(|r| &**r == random) {
            return Ok(false);
        }
        if seen.len() == RANDOM_HISTORY {
            seen.pop_front();
        }
        seen.push_back(random.into());
        Ok(true)
    }

    async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
        self.write().insert_device(&self.actor, device, None)
    }

    async fn insert_device_within_quota(
        &self,
        device: DeviceRecord,
        device_quota: u32,
    ) -> Result<(), StoreError> {
        self.write()
            .insert_device(&self.actor, device, Some(device_quota))
    }

    async fn insert_devices(&self, devices: Vec<DeviceRecord>) -> Result<(), StoreError> {
        let mut maps = self.write();
        // Every device is checked before any is inserted: all or none.
        let mut names = std::collections::HashSet::new();
        for device in &devices {
            if !maps.products.contains_key(&device.product_key) {
                return Err(StoreError::NotFound {
                    what: Entity::Product,
                });
            }
            let taken = maps
                .devices
                .get(&device.product_key)
                .is_some_and(|names| names.contains_key(&device.device_name));
            if taken || !names.insert((device.product_key, device.device_name)) {
                return Err(StoreError::AlreadyExists {
                    what: Entity::Device,
                });
            }
        }
        for device in devices {
            maps.insert_device(&self.actor, device, None)?;
        }
        Ok(())
    }

    async fn device(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .read()
            .devices
            .get(product_key)
            .and_then(|devices| devices.get(device_name))
            .map(|device| device.record(*product_key, *device_name)))
    }

    async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut devices: Vec<DeviceRecord> = self
            .read()
            .devices
            .get(product_key)
            .map(|devices| {
                devices
                    .iter()
                    .map(|(name, device)| device.record(*product_key, *name))
                    .collect()
            })
            .unwrap_or_default();
        devices.sort_unstable_by_key(|device| device.device_name);
        Ok(devices)
    }
    async fn device_count(&self, product_key: &ProductKey) -> Result<u64, StoreError> {
        Ok(self
            .read()
            .devices
            .get(product_key)
            .map_or(0, |devices| devices.len() as u64))
    }

    async fn compare_and_set(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        expected_revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError> {
        let mut maps = self.write();
        let devices = maps
            .devices
            .get_mut(product_key)
            .ok_or(StoreError::NotFound {
                what: Entity::Device,
            })?;
        let device = devices.get_mut(device_name).ok_or(StoreError::NotFound {
            what: Entity::Device,
        })?;
        if device.revision != expected_revision {
            return Err(StoreError::Precondition {
                what: Entity::Device,
            });
        }
        let kind = match update {
            DeviceUpdate::Set {
                event,
                status,
                device_secret,
                client_ids,
            } => {
                // Refused before anything changes: no half-applied update.
                if matches!(client_ids, ClientIdChange::Add(_))
                    && device.client_ids.len() >= crate::IssuedClientId::MAX_PER_DEVICE
                {
                    return Err(StoreError::Precondition {
                        what: Entity::Device,
                    });
                }
                device.status = status;
                if let Some(secret) = device_secret {
                    device.device_secret = secret;
                }
                match client_ids {
                    ClientIdChange::Keep => {}
                    ClientIdChange::Add(record) => device.client_ids.push(record),
                    ClientIdChange::RevokeAll => device.client_ids.clear(),
                }
                device.revision = device.revision.wrapping_add(1);
                event
            }
            DeviceUpdate::Delete => {
                devices.remove(device_name);
                EventKind::Deleted
            }
        };
        maps.log(
            &self.actor,
            NewEvent::device(*product_key, *device_name, kind),
        );
        Ok(())
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let maps = self.read();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(maps
            .events
            .iter()
            .skip(start)
            .take(limit.min(MAX_EVENTS_PER_READ))
            .cloned()
            .collect())
    }

    async fn event_head(&self) -> Result<ChainHead, StoreError> {
        Ok(self
            .read()
            .events
            .last()
            .map_or(ChainHead::EMPTY, |last| ChainHead {
                seq: last.seq,
                hash: last.hash,
            }))
    }
}
