use std::sync::Arc;

use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceStatus, DynamicRegistration, Event, IssuancePolicy, TransitionError};
use crate::random::{Entropy, EntropyError, OsEntropy};
use crate::secret::{DeviceSecret, ProductSecret};
use crate::store::Entity;
use crate::store::{
    DeviceRecord, DeviceStore, DeviceSummary, LimitError, PreRegistrationFree, ProductRecord,
    ProductStore, RegistrationLimit, StoreError,
};

#[cfg(feature = "import")]
use std::collections::{HashMap, hash_map::Entry};

#[cfg(feature = "import")]
use subtle::ConstantTimeEq;

#[cfg(feature = "import")]
use super::import::{DeviceImport, ImportError, ImportSummary, ProductImport};

use super::{MAX_ATTEMPTS, apply_event};

/// Why an administrative operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The store refused or failed (not found, already exists, outage).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The lifecycle refuses the event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The random source failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The event is the device's own (issue, login), not one an operator may apply
    /// ([`Admin::apply`]).
    #[error("{} is not an operator's event", event.name())]
    NotAnOperatorEvent {
        /// The event.
        event: Event,
    },
    /// A product name must be 1–64 characters without control characters.
    #[error("a product name must be 1 to 64 characters without control characters")]
    InvalidName,
    /// A batch registration names no device, or more than `max`.
    #[error("a batch registers 1 to {max} devices")]
    BatchSize {
        /// [`MAX_BATCH_DEVICES`].
        max: usize,
    },
    /// A name of a batch registration is refused (never shown: named by its index).
    #[error("device {index} of the batch (counting from 0) {reason}")]
    InBatch {
        /// Its index in the batch, from 0.
        index: usize,
        /// Why.
        reason: BatchRefusal,
    },
    /// A registration limit is out of its range.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// An imported product or device exists with another value of `field` (a secret, never
    /// shown).
    #[error("the stored {what} has another {field}")]
    Conflict {
        /// Which.
        what: Entity,
        /// The field that differs, by Alibaba's name (`ProductSecret`, `DeviceSecret`).
        field: &'static str,
    },
}

/// Why a name of a batch registration is refused ([`AdminError::InBatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchRefusal {
    /// It is given twice in the batch.
    #[error("repeats an earlier name")]
    Repeated,
    /// The product has a device of that name.
    #[error("is already registered")]
    Taken,
}

/// A product name as stored: 1–64 characters without control characters.
fn valid_name(name: Option<&str>) -> Result<Option<String>, AdminError> {
    match name {
        Some(name)
            if !(1..=64).contains(&name.chars().count()) || name.chars().any(char::is_control) =>
        {
            Err(AdminError::InvalidName)
        }
        name => Ok(name.map(str::to_owned)),
    }
}

/// The most devices one batch registration ([`Admin::register_devices`]) registers:
/// Alibaba's BatchRegisterDevice limit.
pub const MAX_BATCH_DEVICES: usize = 10_000;

/// A change to a product's settings ([`Admin::update_product`]): what is `None` is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProductUpdate {
    /// Dynamic registration on or off.
    pub dynamic_registration: Option<DynamicRegistration>,
    /// Registration without pre-registration (regnwl) on or off.
    pub pre_registration_free: Option<bool>,
    /// The most devices the product may have for regnwl to create another.
    pub device_quota: Option<u32>,
    /// Registrations issued a second ([`RegistrationLimit::with_rate`]).
    pub rate: Option<u32>,
    /// Registrations issued at once.
    pub burst: Option<u32>,
    /// Refusals that switch dynamic registration off ([`RegistrationLimit::with_refusals`]).
    pub refusal_threshold: Option<u32>,
    /// The window of `refusal_threshold`, in seconds.
    pub refusal_window_secs: Option<u32>,
    /// Whether a registration's random must be new for the device.
    pub unique_random: Option<bool>,
}

/// Creates products and devices with generated keys and secrets, and drives the operator's
/// lifecycle events (disable, enable, reset, delete), all through the transition function.
pub struct Admin<S> {
    store: S,
    entropy: Arc<dyn Entropy>,
}

impl<S: ProductStore + DeviceStore> Admin<S> {
    /// Administration of `store`, generating from the OS random source.
    pub fn new(store: S) -> Self {
        Self {
            store,
            entropy: Arc::new(OsEntropy),
        }
    }

    /// Uses another random source (tests).
    #[must_use]
    pub fn with_entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    /// Creates a product with a generated ProductKey and ProductSecret, and an optional name
    /// (1–64 characters, no control characters).
    ///
    /// # Errors
    /// [`AdminError::InvalidName`]; [`AdminError::Store`] on an outage (or when every generated
    /// key collided, which takes astronomically many products).
    pub async fn create_product(
        &self,
        name: Option<&str>,
        dynamic_registration: DynamicRegistration,
    ) -> Result<ProductRecord, AdminError> {
        let name = valid_name(name)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut record = ProductRecord::new(
                ProductKey::generate(&*self.entropy)?,
                ProductSecret::generate(&*self.entropy)?,
                dynamic_registration,
            );
            record.name.clone_from(&name);
            match self.store.insert_product(record.clone_record()).await {
                Ok(()) => return Ok(record),
                Err(StoreError::AlreadyExists { .. }) if attempts < MAX_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Flips a product's dynamic-registration switch. Off refuses new activations; devices
    /// already issued or active are not affected.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn set_dynamic_registration(
        &self,
        product_key: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), AdminError> {
        Ok(self
            .store
            .set_dynamic_registration(product_key, switch)
            .await?)
    }

    /// Sets a product's registration without pre-registration: the switch (in effect only
    /// while dynamic registration is on) and the device quota.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn set_pre_registration_free(
        &self,
        product_key: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), AdminError> {
        Ok(self
            .store
            .set_pre_registration_free(product_key, setting)
            .await?)
    }

    /// Sets a product's limits on dynamic registration (rate, burst, the circuit breaker's
    /// threshold and window, `unique_random`); build them with
    /// [`RegistrationLimit::with_rate`] and its siblings, which check their ranges.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn set_registration_limit(
        &self,
        product_key: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), AdminError> {
        Ok(self
            .store
            .set_registration_limit(product_key, limit)
            .await?)
    }

    /// A product.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn product(&self, product_key: &ProductKey) -> Result<ProductRecord, AdminError> {
        self.store
            .product(product_key)
            .await?
            .ok_or(AdminError::Store(StoreError::NotFound {
                what: Entity::Product,
            }))
    }

    /// Every product, by key.
    ///
    /// # Errors
    /// An outage.
    pub async fn products(&self) -> Result<Vec<ProductRecord>, AdminError> {
        let mut products = self.store.products().await?;
        products.sort_by(|a, b| a.product_key.as_str().cmp(b.product_key.as_str()));
        Ok(products)
    }

    /// A device.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown device (or product); an outage.
    pub async fn device(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
    ) -> Result<DeviceRecord, AdminError> {
        self.store
            .device(product_key, device_name)
            .await?
            .ok_or(AdminError::Store(StoreError::NotFound {
                what: Entity::Device,
            }))
    }

    /// A product's devices, by name.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, AdminError> {
        self.product(product_key).await?;
        let mut devices = self.store.devices(product_key).await?;
        devices.sort_by(|a, b| a.device_name.as_str().cmp(b.device_name.as_str()));
        Ok(devices)
    }

    /// A page of a product's devices by name, without secrets
    /// ([`DeviceStore::device_page`]: the store reads the page alone), and how many devices
    /// the product has.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn device_page(
        &self,
        product_key: &ProductKey,
        offset: u64,
        limit: u32,
    ) -> Result<(u64, Vec<DeviceSummary>), AdminError> {
        self.product(product_key).await?;
        let total = self.store.device_count(product_key).await?;
        let page = self.store.device_page(product_key, offset, limit).await?;
        Ok((total, page))
    }

    /// Changes a product's settings: what `update` leaves `None` is kept. A limit that does
    /// not change is not written (setting the limits refills the product's bucket). Returns
    /// the product as it is then.
    ///
    /// # Errors
    /// [`AdminError::Limit`] for a limit out of its range (nothing is written);
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    pub async fn update_product(
        &self,
        product_key: &ProductKey,
        update: ProductUpdate,
    ) -> Result<ProductRecord, AdminError> {
        let current = self.product(product_key).await?;
        let was = current.registration_limit;
        let limit = was
            .with_rate(
                update.rate.unwrap_or(was.rate_per_sec()),
                update.burst.unwrap_or(was.burst()),
            )?
            .with_refusals(
                update.refusal_threshold.unwrap_or(was.refusal_threshold()),
                update
                    .refusal_window_secs
                    .unwrap_or(was.refusal_window_secs()),
            )?
            .with_unique_random(update.unique_random.unwrap_or(was.unique_random()));
        let setting = PreRegistrationFree {
            on: update
                .pre_registration_free
                .unwrap_or(current.pre_registration_free.on),
            device_quota: update
                .device_quota
                .unwrap_or(current.pre_registration_free.device_quota),
        };
        if let Some(switch) = update.dynamic_registration {
            self.set_dynamic_registration(product_key, switch).await?;
        }
        if update.pre_registration_free.is_some() || update.device_quota.is_some() {
            self.set_pre_registration_free(product_key, setting).await?;
        }
        if limit != was {
            self.set_registration_limit(product_key, limit).await?;
        }
        self.product(product_key).await
    }

    /// Registers 1 to [`MAX_BATCH_DEVICES`] devices (Inactive, enabled), each with a
    /// generated DeviceSecret, all or none ([`DeviceStore::insert_devices`]): Alibaba's
    /// BatchRegisterDevice.
    ///
    /// # Errors
    /// [`AdminError::BatchSize`]; [`AdminError::InBatch`] naming the first name given twice
    /// or already registered (by its index in `device_names`);
    /// [`StoreError::NotFound`] for an unknown product; an outage. Nothing is registered
    /// then.
    pub async fn register_devices(
        &self,
        product_key: ProductKey,
        device_names: &[DeviceName],
    ) -> Result<Vec<DeviceRecord>, AdminError> {
        if !(1..=MAX_BATCH_DEVICES).contains(&device_names.len()) {
            return Err(AdminError::BatchSize {
                max: MAX_BATCH_DEVICES,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(device_names.len());
        if let Some(index) = device_names.iter().position(|name| !seen.insert(*name)) {
            return Err(AdminError::InBatch {
                index,
                reason: BatchRefusal::Repeated,
            });
        }
        self.product(&product_key).await?;
        let mut devices = Vec::with_capacity(device_names.len());
        for device_name in device_names {
            devices.push(DeviceRecord::new(
                product_key,
                *device_name,
                DeviceSecret::generate(&*self.entropy)?,
            ));
        }
        let inserted = self
            .store
            .insert_devices(devices.iter().map(DeviceRecord::clone_record).collect())
            .await;
        match inserted {
            Ok(()) => Ok(devices),
            Err(StoreError::AlreadyExists { .. }) => {
                // Which one, for the operator: read only on this path.
                for (index, name) in device_names.iter().enumerate() {
                    if self.store.device(&product_key, name).await?.is_some() {
                        return Err(AdminError::InBatch {
                            index,
                            reason: BatchRefusal::Taken,
                        });
                    }
                }
                Err(StoreError::AlreadyExists {
                    what: Entity::Device,
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Registers a device (Inactive, enabled) with a generated DeviceSecret.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product, [`StoreError::AlreadyExists`] for a
    /// taken name; an outage.
    pub async fn register_device(
        &self,
        product_key: ProductKey,
        device_name: DeviceName,
    ) -> Result<DeviceRecord, AdminError> {
        let device = DeviceRecord::new(
            product_key,
            device_name,
            DeviceSecret::generate(&*self.entropy)?,
        );
        self.store.insert_device(device.clone_record()).await?;
        Ok(device)
    }

    /// Brings in products whose keys and secrets were issued elsewhere (Alibaba's),
    /// unchanged: every one is checked against the store, then the new ones are inserted in
    /// one write ([`ProductStore::insert_products`]), all or none. A product that exists with
    /// the same secret is left as it is (its name and switches too: an import creates, it
    /// never updates), so a re-run of an import changes nothing.
    ///
    /// # Errors
    /// [`ImportError::Store`] naming the line ([`AdminError::Conflict`] when a product exists
    /// with another secret, an outage); [`ImportError::Field`] for a `ProductName` out of its
    /// rule; [`ImportError::Write`] when the write is refused (a product created meanwhile,
    /// an outage). Nothing is written then.
    #[cfg(feature = "import")]
    pub async fn import_products(
        &self,
        products: Vec<ProductImport>,
    ) -> Result<ImportSummary, ImportError> {
        let mut summary = ImportSummary::default();
        let mut new = Vec::new();
        for product in products {
            let at = |source| ImportError::Store {
                line: product.line,
                source,
            };
            let existing = self.store.product(&product.product_key).await;
            match existing.map_err(|e| at(e.into()))? {
                None => {
                    let name =
                        valid_name(product.name.as_deref()).map_err(|e| ImportError::Field {
                            line: product.line,
                            field: "ProductName",
                            reason: e.to_string(),
                        })?;
                    new.push((product, name));
                }
                Some(existing)
                    if bool::from(existing.product_secret.ct_eq(&product.product_secret)) =>
                {
                    summary.unchanged += 1;
                }
                Some(_) => {
                    return Err(at(AdminError::Conflict {
                        what: Entity::Product,
                        field: "ProductSecret",
                    }));
                }
            }
        }
        summary.created = new.len() as u64;
        let records = new
            .into_iter()
            .map(|(product, name)| {
                let mut record = ProductRecord::new(
                    product.product_key,
                    product.product_secret,
                    product.dynamic_registration,
                );
                record.name = name;
                record
            })
            .collect::<Vec<_>>();
        if !records.is_empty() {
            self.store
                .insert_products(records)
                .await
                .map_err(|e| ImportError::Write { source: e.into() })?;
        }
        Ok(summary)
    }

    /// Brings in devices whose DeviceSecrets were issued elsewhere (Alibaba's), unchanged,
    /// with their statuses: every one is checked against the store (one read of each
    /// product's devices), then the new ones are inserted in one write
    /// ([`DeviceStore::insert_devices`]), all or none. A device that exists with the same
    /// secret is left as it is (its state, which its logins move on, is not set back), so a
    /// re-run of an import changes nothing. `checked` is told how many devices have been
    /// checked, for a progress display.
    ///
    /// # Errors
    /// [`ImportError::Store`] naming the line: [`AdminError::Conflict`] when a device exists
    /// with another secret, [`StoreError::NotFound`] for an unknown product, an outage;
    /// [`ImportError::Write`] when the write is refused (a device registered meanwhile, an
    /// outage). Nothing is written then.
    #[cfg(feature = "import")]
    pub async fn import_devices(
        &self,
        devices: Vec<DeviceImport>,
        mut checked: impl FnMut(usize),
    ) -> Result<ImportSummary, ImportError> {
        let mut summary = ImportSummary::default();
        let mut stored: HashMap<ProductKey, HashMap<DeviceName, DeviceRecord>> = HashMap::new();
        let mut new = Vec::new();
        for (done, device) in devices.into_iter().enumerate() {
            let at = |source| ImportError::Store {
                line: device.line,
                source,
            };
            let devices = match stored.entry(device.product_key) {
                Entry::Occupied(devices) => devices.into_mut(),
                Entry::Vacant(entry) => {
                    entry.insert(self.stored_devices(&device.product_key).await.map_err(at)?)
                }
            };
            match devices.get(&device.device_name) {
                None => new.push({
                    let mut record = DeviceRecord::new(
                        device.product_key,
                        device.device_name,
                        device.device_secret,
                    );
                    record.status = device.status;
                    record
                }),
                Some(existing)
                    if bool::from(existing.device_secret.ct_eq(&device.device_secret)) =>
                {
                    summary.unchanged += 1;
                }
                Some(_) => {
                    return Err(at(AdminError::Conflict {
                        what: Entity::Device,
                        field: "DeviceSecret",
                    }));
                }
            }
            checked(done + 1);
        }
        summary.created = new.len() as u64;
        if !new.is_empty() {
            self.store
                .insert_devices(new)
                .await
                .map_err(|e| ImportError::Write { source: e.into() })?;
        }
        Ok(summary)
    }

    /// The devices of `product_key`, by name.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown product; an outage.
    #[cfg(feature = "import")]
    async fn stored_devices(
        &self,
        product_key: &ProductKey,
    ) -> Result<HashMap<DeviceName, DeviceRecord>, AdminError> {
        if self.store.product(product_key).await?.is_none() {
            return Err(StoreError::NotFound {
                what: Entity::Product,
            }
            .into());
        }
        let devices = self.store.devices(product_key).await?;
        Ok(devices
            .into_iter()
            .map(|device| (device.device_name, device))
            .collect())
    }

    /// Applies an operator's event: [`Event::Disable`], [`Event::Enable`], [`Event::Reset`]
    /// (new secret, back to Inactive) or [`Event::Delete`]. Returns the new status, `None`
    /// after a delete.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown device; [`AdminError::NotAnOperatorEvent`] for an
    /// event that is not an operator's; an outage.
    pub async fn apply(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        event: Event,
    ) -> Result<Option<DeviceStatus>, AdminError> {
        if !matches!(
            event,
            Event::Disable | Event::Enable | Event::Reset | Event::Delete
        ) {
            return Err(AdminError::NotAnOperatorEvent { event });
        }
        let applied = apply_event(
            &self.store,
            product_key,
            device_name,
            event,
            IssuancePolicy::default(),
            &*self.entropy,
            |_| Ok::<(), AdminError>(()),
        )
        .await?;
        Ok(applied.transition.to)
    }
}
