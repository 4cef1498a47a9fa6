//! Certificates: what a device holds.

use crate::id::{DeviceName, ProductKey};
use crate::secret::{DeviceSecret, ProductSecret};

/// A per-device certificate ("一机一密"): ProductKey + DeviceName + DeviceSecret.
///
/// ```
/// # use iotauth::{DeviceCertificate, DeviceName, DeviceSecret, ProductKey};
/// let cert = DeviceCertificate::new(
///     ProductKey::new("a1BwAGV0001")?,
///     DeviceName::new("meter-01")?,
///     DeviceSecret::new("mz2Canp4GB7qRVf1OYPNtRqB2anuXXXX")?,
/// );
/// assert!(!format!("{cert:?}").contains("mz2Canp4"));
/// # Ok::<(), iotauth::ParseError>(())
/// ```
#[derive(Debug)]
pub struct DeviceCertificate {
    product_key: ProductKey,
    device_name: DeviceName,
    device_secret: DeviceSecret,
}

impl DeviceCertificate {
    /// Bundles the three parts.
    pub fn new(
        product_key: ProductKey,
        device_name: DeviceName,
        device_secret: DeviceSecret,
    ) -> Self {
        Self {
            product_key,
            device_name,
            device_secret,
        }
    }

    /// The product the device belongs to.
    pub fn product_key(&self) -> ProductKey {
        self.product_key
    }

    /// The device's name.
    pub fn device_name(&self) -> DeviceName {
        self.device_name
    }

    /// The device's secret.
    pub fn device_secret(&self) -> &DeviceSecret {
        &self.device_secret
    }
}

/// A per-product certificate ("一型一密"): ProductKey + ProductSecret, carried by every device
/// of the product and used only to obtain the device's own secret by dynamic registration.
#[derive(Debug)]
pub struct ProductCertificate {
    product_key: ProductKey,
    product_secret: ProductSecret,
}

impl ProductCertificate {
    /// Bundles the two parts.
    pub fn new(product_key: ProductKey, product_secret: ProductSecret) -> Self {
        Self {
            product_key,
            product_secret,
        }
    }

    /// The product.
    pub fn product_key(&self) -> ProductKey {
        self.product_key
    }

    /// The product's secret.
    pub fn product_secret(&self) -> &ProductSecret {
        &self.product_secret
    }
}
