use std::sync::Arc;

use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceStatus, DynamicRegistration, Event, IssuancePolicy, TransitionError};
use crate::random::{Entropy, EntropyError, OsEntropy};
use crate::secret::{DeviceSecret, ProductSecret};
use crate::store::{
    DeviceRecord, DeviceStore, PreRegistrationFree, ProductRecord, ProductStore, RegistrationLimit,
    StoreError,
};

use subtle::ConstantTimeEq;

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
    /// A product name must be 1–64 characters without control characters.
    #[error("a product name must be 1 to 64 characters without control characters")]
    InvalidName,
    /// An imported product or device exists with another value of `field` (a secret, never
    /// shown).
    #[error("the stored {what} has another {field}")]
    Conflict {
        /// `"product"` or `"device"`.
        what: &'static str,
        /// The field that differs, by Alibaba's name (`ProductSecret`, `DeviceSecret`).
        field: &'static str,
    },
}

/// What an import did with one product or device ([`Admin::import_product`],
/// [`Admin::import_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Imported {
    /// It was created as given.
    Created,
    /// It existed with the same secret: left as it is (a re-run of an import changes nothing;
    /// a device's state, which its logins move on, is not set back).
    Unchanged,
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
            let product_key = ProductKey::generate(&*self.entropy)?;
            let product_secret = ProductSecret::generate(&*self.entropy)?;
            let record = ProductRecord {
                product_key,
                product_secret: product_secret.clone_secret(),
                dynamic_registration,
                name: name.clone(),
                pre_registration_free: PreRegistrationFree::OFF,
                registration_limit: RegistrationLimit::DEFAULT,
                switched_off_by_breaker_at: None,
            };
            match self.store.insert_product(record).await {
                Ok(()) => {
                    return Ok(ProductRecord {
                        product_key,
                        product_secret,
                        dynamic_registration,
                        name,
                        pre_registration_free: PreRegistrationFree::OFF,
                        registration_limit: RegistrationLimit::DEFAULT,
                        switched_off_by_breaker_at: None,
                    });
                }
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
        let device_secret = DeviceSecret::generate(&*self.entropy)?;
        self.store
            .insert_device(DeviceRecord {
                product_key,
                device_name,
                device_secret: device_secret.clone_secret(),
                status: DeviceStatus::NEW,
                revision: 0,
                client_ids: Vec::new(),
            })
            .await?;
        Ok(DeviceRecord {
            product_key,
            device_name,
            device_secret,
            status: DeviceStatus::NEW,
            revision: 0,
            client_ids: Vec::new(),
        })
    }

    /// What [`Admin::import_product`] would do, without writing: for an import to check every
    /// line before it writes any.
    ///
    /// # Errors
    /// As [`Admin::import_product`].
    pub async fn check_product_import(
        &self,
        product_key: &ProductKey,
        product_secret: &ProductSecret,
    ) -> Result<Imported, AdminError> {
        match self.store.product(product_key).await? {
            None => Ok(Imported::Created),
            Some(existing) if bool::from(existing.product_secret.ct_eq(product_secret)) => {
                Ok(Imported::Unchanged)
            }
            Some(_) => Err(AdminError::Conflict {
                what: "product",
                field: "ProductSecret",
            }),
        }
    }

    /// What [`Admin::import_device`] would do, without writing.
    ///
    /// # Errors
    /// As [`Admin::import_device`].
    pub async fn check_device_import(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        device_secret: &DeviceSecret,
    ) -> Result<Imported, AdminError> {
        match self.store.device(product_key, device_name).await? {
            None if self.store.product(product_key).await?.is_none() => {
                Err(StoreError::NotFound { what: "product" }.into())
            }
            None => Ok(Imported::Created),
            Some(existing) if bool::from(existing.device_secret.ct_eq(device_secret)) => {
                Ok(Imported::Unchanged)
            }
            Some(_) => Err(AdminError::Conflict {
                what: "device",
                field: "DeviceSecret",
            }),
        }
    }

    /// Brings in a product whose key and secret were issued elsewhere (Alibaba's), unchanged,
    /// with dynamic registration `switch` and an optional `name`. A product that exists with
    /// the same secret is left as it is.
    ///
    /// # Errors
    /// [`AdminError::Conflict`] when it exists with another secret; [`AdminError::InvalidName`];
    /// an outage.
    pub async fn import_product(
        &self,
        product_key: ProductKey,
        product_secret: ProductSecret,
        name: Option<&str>,
        switch: DynamicRegistration,
    ) -> Result<Imported, AdminError> {
        if self
            .check_product_import(&product_key, &product_secret)
            .await?
            == Imported::Unchanged
        {
            return Ok(Imported::Unchanged);
        }
        self.store
            .insert_product(ProductRecord {
                product_key,
                product_secret,
                dynamic_registration: switch,
                name: valid_name(name)?,
                pre_registration_free: PreRegistrationFree::OFF,
                registration_limit: RegistrationLimit::DEFAULT,
                switched_off_by_breaker_at: None,
            })
            .await?;
        Ok(Imported::Created)
    }

    /// Brings in a device whose DeviceSecret was issued elsewhere (Alibaba's), unchanged, with
    /// `status`. A device that exists with the same secret is left as it is.
    ///
    /// # Errors
    /// [`AdminError::Conflict`] when it exists with another secret; [`StoreError::NotFound`]
    /// for an unknown product; an outage.
    pub async fn import_device(
        &self,
        product_key: ProductKey,
        device_name: DeviceName,
        device_secret: DeviceSecret,
        status: DeviceStatus,
    ) -> Result<Imported, AdminError> {
        let check = self.check_device_import(&product_key, &device_name, &device_secret);
        if check.await? == Imported::Unchanged {
            return Ok(Imported::Unchanged);
        }
        self.store
            .insert_device(DeviceRecord {
                product_key,
                device_name,
                device_secret,
                status,
                revision: 0,
                client_ids: Vec::new(),
            })
            .await?;
        Ok(Imported::Created)
    }

    /// Applies an operator's event: [`Event::Disable`], [`Event::Enable`], [`Event::Reset`]
    /// (new secret, back to Inactive) or [`Event::Delete`]. Returns the new status, `None`
    /// after a delete.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown device; [`TransitionError`] for an event that
    /// is not an operator's; an outage.
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
            return Err(AdminError::Transition(
                TransitionError::NotAnOperatorEvent {
                    event: event.name(),
                },
            ));
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
