//! A store adapter of your own: every method of [`ProductStore`], [`DeviceStore`] and
//! [`EventLog`] that an adapter writes, here as a store that counts the operations it passes
//! to another store (a sketch of instrumentation; a real adapter would talk to its database
//! where this one calls `self.inner`). `cargo test --example custom_store --features
//! conformance` runs the store conformance suite on it, one test per property.
//!
//! Run with `cargo run --example custom_store`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use iotauth::service::{Admin, Authenticator};
use iotauth::store::{
    ChainHead, DeviceRecord, DeviceStore, DeviceSummary, DeviceUpdate, EventLog, EventRecord,
    MemoryStore, PreRegistrationFree, ProductRecord, ProductStore, RegistrationLimit, StoreError,
};
use iotauth::{
    DeviceCertificate, DeviceName, DynamicRegistration, LoginOptions, ProductKey, UnixMillis,
    build_login,
};

/// `inner`, with a count of each operation asked of it. The traits require `Send + Sync` (a
/// store is shared by every request) and `Debug` (so that a type holding one can derive it).
#[derive(Debug, Default)]
pub struct Counting<S> {
    inner: S,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl<S> Counting<S> {
    fn count(&self, operation: &'static str) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        *calls.entry(operation).or_default() += 1;
    }

    /// Each operation and how often it was asked for.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl<S: ProductStore> ProductStore for Counting<S> {
    async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.count("insert_product");
        self.inner.insert_product(product).await
    }

    async fn insert_products(&self, products: Vec<ProductRecord>) -> Result<(), StoreError> {
        self.count("insert_products");
        self.inner.insert_products(products).await
    }

    async fn product(&self, key: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
        self.count("product");
        self.inner.product(key).await
    }

    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        self.count("products");
        self.inner.products().await
    }

    async fn set_dynamic_registration(
        &self,
        key: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), StoreError> {
        self.count("set_dynamic_registration");
        self.inner.set_dynamic_registration(key, switch).await
    }

    async fn set_pre_registration_free(
        &self,
        key: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), StoreError> {
        self.count("set_pre_registration_free");
        self.inner.set_pre_registration_free(key, setting).await
    }

    async fn set_registration_limit(
        &self,
        key: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), StoreError> {
        self.count("set_registration_limit");
        self.inner.set_registration_limit(key, limit).await
    }

    async fn take_registration_token(
        &self,
        key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.count("take_registration_token");
        self.inner.take_registration_token(key, now).await
    }

    async fn record_registration_refusal(
        &self,
        key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.count("record_registration_refusal");
        self.inner.record_registration_refusal(key, now).await
    }
}

#[async_trait]
impl<S: DeviceStore> DeviceStore for Counting<S> {
    async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
        self.count("insert_device");
        self.inner.insert_device(device).await
    }

    async fn insert_device_within_quota(
        &self,
        device: DeviceRecord,
        quota: u32,
    ) -> Result<(), StoreError> {
        self.count("insert_device_within_quota");
        self.inner.insert_device_within_quota(device, quota).await
    }

    async fn insert_devices(&self, devices: Vec<DeviceRecord>) -> Result<(), StoreError> {
        self.count("insert_devices");
        self.inner.insert_devices(devices).await
    }

    async fn device(
        &self,
        key: &ProductKey,
        name: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.count("device");
        self.inner.device(key, name).await
    }

    async fn devices(&self, key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
        self.count("devices");
        self.inner.devices(key).await
    }

    async fn compare_and_set(
        &self,
        key: &ProductKey,
        name: &DeviceName,
        expected_revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError> {
        self.count("compare_and_set");
        self.inner
            .compare_and_set(key, name, expected_revision, update)
            .await
    }

    async fn record_registration_random(
        &self,
        key: &ProductKey,
        name: &DeviceName,
        random: &str,
    ) -> Result<bool, StoreError> {
        self.count("record_registration_random");
        self.inner
            .record_registration_random(key, name, random)
            .await
    }

    // The methods with defaults: an adapter overrides them where its database does better
    // (a wrapper must pass them on, or it loses the inner store's versions).
    async fn device_page(
        &self,
        key: &ProductKey,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<DeviceSummary>, StoreError> {
        self.count("device_page");
        self.inner.device_page(key, offset, limit).await
    }

    async fn device_count(&self, key: &ProductKey) -> Result<u64, StoreError> {
        self.count("device_count");
        self.inner.device_count(key).await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.count("check_ready");
        self.inner.check_ready().await
    }
}

#[async_trait]
impl<S: EventLog> EventLog for Counting<S> {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.count("events_after");
        self.inner.events_after(after, limit).await
    }

    async fn event_head(&self) -> Result<ChainHead, StoreError> {
        self.count("event_head");
        self.inner.event_head().await
    }

    async fn appended(&self) -> bool {
        self.inner.appended().await
    }

    fn observe(&self, event: &EventRecord) {
        self.inner.observe(event);
    }

    fn observe_lost_events(&self) {
        self.inner.observe_lost_events();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = std::sync::Arc::new(Counting::<MemoryStore>::default());
    let admin = Admin::new(store.clone());
    let product = admin.create_product(None, DynamicRegistration::Off).await?;
    let device = admin
        .register_device(product.product_key, DeviceName::new("meter-01")?)
        .await?;
    let cert = DeviceCertificate::new(device.product_key, device.device_name, device.device_secret);
    let creds = build_login(&cert, &LoginOptions::default())?;
    let (password, authenticator) = (creds.expose_password(), Authenticator::new(store.clone()));
    let login = authenticator.authenticate(creds.client_id(), creds.username(), &password);
    let who = login.await?;
    println!("logged in: {}/{}", who.product_key(), who.device_name());
    for (operation, count) in store.calls() {
        println!("{operation}: {count}");
    }
    Ok(())
}

/// The adapter proves itself: one test per property of the store conformance suite.
#[cfg(all(test, feature = "conformance"))]
mod conformance {
    iotauth::store_conformance_tests!(|| async {
        std::sync::Arc::new(super::Counting::<iotauth::store::MemoryStore>::default())
    });
}
