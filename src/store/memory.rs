//! The in-memory store: for tests, examples and single-process tools. Nothing survives the
//! process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{DeviceRecord, DeviceStore, DeviceUpdate, ProductRecord, ProductStore, StoreError};
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::DynamicRegistration;

/// A store in a mutex-guarded map. Every operation takes the lock once and never across an
/// `.await`, so each is atomic, compare-and-set included.
///
/// ```
/// # use iotauth::store::*;
/// # use iotauth::*;
/// # tokio_test_block_on(async {
/// let store = MemoryStore::new();
/// let pk = ProductKey::new("a1BwAGV0001")?;
/// store.insert_product(ProductRecord {
///     product_key: pk,
///     product_secret: ProductSecret::new("Yr0iF3HIgNkwiaPj")?,
///     dynamic_registration: DynamicRegistration::On,
///     name: None,
/// }).await?;
/// assert!(store.product(&pk).await?.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    products: BTreeMap<ProductKey, ProductRecord>,
    devices: BTreeMap<ProductKey, BTreeMap<DeviceName, DeviceRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave a half-applied change: every mutation
        // is a single map operation. So a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ProductStore for MemoryStore {
    async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        let mut maps = self.lock();
        if maps.products.contains_key(&product.product_key) {
            return Err(StoreError::AlreadyExists { what: "product" });
        }
        maps.products.insert(product.product_key, product);
        Ok(())
    }

    async fn product(&self, product_key: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
        Ok(self
            .lock()
            .products
            .get(product_key)
            .map(ProductRecord::clone_record))
    }

    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        Ok(self
            .lock()
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
        let mut maps = self.lock();
        let product = maps
            .products
            .get_mut(product_key)
            .ok_or(StoreError::NotFound { what: "product" })?;
        product.dynamic_registration = switch;
        Ok(())
    }
}

#[async_trait]
impl DeviceStore for MemoryStore {
    async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
        let mut maps = self.lock();
        if !maps.products.contains_key(&device.product_key) {
            return Err(StoreError::NotFound { what: "product" });
        }
        let devices = maps.devices.entry(device.product_key).or_default();
        if devices.contains_key(&device.device_name) {
            return Err(StoreError::AlreadyExists { what: "device" });
        }
        devices.insert(device.device_name, device);
        Ok(())
    }

    async fn device(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .lock()
            .devices
            .get(product_key)
            .and_then(|devices| devices.get(device_name))
            .map(DeviceRecord::clone_record))
    }

    async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self
            .lock()
            .devices
            .get(product_key)
            .map(|devices| devices.values().map(DeviceRecord::clone_record).collect())
            .unwrap_or_default())
    }

    async fn compare_and_set(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        expected_revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError> {
        let mut maps = self.lock();
        let devices = maps
            .devices
            .get_mut(product_key)
            .ok_or(StoreError::NotFound { what: "device" })?;
        let device = devices
            .get_mut(device_name)
            .ok_or(StoreError::NotFound { what: "device" })?;
        if device.revision != expected_revision {
            return Err(StoreError::Precondition { what: "device" });
        }
        match update {
            DeviceUpdate::Set {
                status,
                device_secret,
            } => {
                device.status = status;
                if let Some(secret) = device_secret {
                    device.device_secret = secret;
                }
                device.revision = device.revision.wrapping_add(1);
            }
            DeviceUpdate::Delete => {
                devices.remove(device_name);
            }
        }
        Ok(())
    }
}
