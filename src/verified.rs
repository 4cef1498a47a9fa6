//! Proof of verification.

use core::ops::Deref;

use crate::id::{DeviceName, ProductKey};

/// A value that only this crate can make, and only after a signature or token checked out.
///
/// A function that takes `Verified<DeviceIdentity>` cannot be handed an identity that was
/// merely claimed. This crate's verifiers return it ([`crate::ConnectRequest::verify_login`],
/// [`crate::service::Authenticator`], the registrar's checks, [`crate::RegisterForm::verify`]),
/// and an issued secret carries it.
///
/// The topic rule ([`crate::TopicRule`]) takes a plain [`DeviceIdentity`] on purpose: the
/// broker hooks' and the Mosquitto plugin's ACL requests name a client the *broker*
/// authenticated (its user name), which this crate did not verify in that request; a
/// `Verified` there would have to be forged from a claim, and would then prove nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(value)
    }

    /// The verified value, giving up the proof.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Who a device is: its product and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    product_key: ProductKey,
    device_name: DeviceName,
}

impl DeviceIdentity {
    /// Pairs a product key and a device name.
    pub fn new(product_key: ProductKey, device_name: DeviceName) -> Self {
        Self {
            product_key,
            device_name,
        }
    }

    /// The product.
    pub fn product_key(&self) -> ProductKey {
        self.product_key
    }

    /// The device's name.
    pub fn device_name(&self) -> DeviceName {
        self.device_name
    }
}
