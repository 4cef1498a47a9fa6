//! Products and devices as the CLI prints them and the admin API answers with: one JSON
//! shape each (camelCase), so that a script can move from one to the other. A secret appears
//! only in the views whose names say they expose it.

use serde::Serialize;

use crate::id::{DeviceName, IssuedClientId, ProductKey};
use crate::lifecycle::{DeviceState, DynamicRegistration};
use crate::store::{DeviceRecord, DeviceSummary, ProductRecord};

/// A secret a view exposes: serialized as its text, shown by `Debug` as `"[redacted]"`, so
/// that logging a view never logs the secret it carries.
#[derive(Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct Exposed<'a>(pub(super) &'a str);

impl Exposed<'_> {
    /// The secret's text.
    pub fn expose_secret(&self) -> &str {
        self.0
    }
}

impl std::fmt::Debug for Exposed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

/// A product. `productSecret` only in [`ProductView::exposing_secret`].
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "admin-api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ProductView<'a> {
    /// `ProductKey`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String, example = "a1B2c3D4e5F"))]
    pub product_key: ProductKey,
    /// `ProductSecret`: only when the product is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "admin-api", schema(value_type = Option<String>))]
    pub product_secret: Option<Exposed<'a>>,
    /// Dynamic registration on.
    pub dynamic_registration: bool,
    /// Registration without pre-registration (regnwl) on.
    pub pre_registration_free: bool,
    /// The most devices the product may have for regnwl to create another.
    pub device_quota: u32,
    /// The limits on dynamic registration.
    pub registration_limit: LimitView,
    /// When the circuit breaker switched dynamic registration off (Unix milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switched_off_by_breaker_at: Option<u64>,
    /// `ProductName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "admin-api", schema(value_type = Option<String>))]
    pub name: Option<&'a str>,
}

/// A product's limits on dynamic registration.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "admin-api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LimitView {
    /// Registrations issued a second.
    pub rate: u32,
    /// Registrations issued at once.
    pub burst: u32,
    /// Refusals within `refusalWindowSecs` that switch dynamic registration off (0: never).
    pub refusal_threshold: u32,
    /// The window of `refusalThreshold`, in seconds.
    pub refusal_window_secs: u32,
    /// Whether a registration's random must be new for the device.
    pub unique_random: bool,
}

impl<'a> ProductView<'a> {
    /// `product` without its secret.
    pub fn of(product: &'a ProductRecord) -> Self {
        Self {
            product_key: product.product_key,
            product_secret: None,
            dynamic_registration: product.dynamic_registration == DynamicRegistration::On,
            pre_registration_free: product.pre_registration_free.on,
            device_quota: product.pre_registration_free.device_quota,
            registration_limit: LimitView {
                rate: product.registration_limit.rate_per_sec(),
                burst: product.registration_limit.burst(),
                refusal_threshold: product.registration_limit.refusal_threshold(),
                refusal_window_secs: product.registration_limit.refusal_window_secs(),
                unique_random: product.registration_limit.unique_random(),
            },
            switched_off_by_breaker_at: product.switched_off_by_breaker_at.map(|at| at.0),
            name: product.name.as_deref(),
        }
    }

    /// `product` with its secret: for the reply that creates it.
    pub fn exposing_secret(product: &'a ProductRecord) -> Self {
        Self {
            product_secret: Some(Exposed(product.product_secret.expose_secret())),
            ..Self::of(product)
        }
    }
}

/// A device, never with its secret.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "admin-api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DeviceView {
    /// `ProductKey`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String))]
    pub product_key: ProductKey,
    /// `DeviceName`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String))]
    pub device_name: DeviceName,
    /// `inactive`, `issued` or `active`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String, pattern = "^(inactive|issued|active)$"))]
    pub state: DeviceState,
    /// Not disabled.
    pub enabled: bool,
    /// The ClientIDs issued by regnwl (never their tokens, which are not stored).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "admin-api", schema(value_type = Vec<String>))]
    pub client_ids: Vec<IssuedClientId>,
}

impl DeviceView {
    /// `device`, without its secret.
    pub fn of(device: &DeviceRecord) -> Self {
        Self::of_summary(DeviceSummary::of(device))
    }

    /// A device as a listing read it ([`crate::store::DeviceStore::device_page`]).
    pub fn of_summary(device: DeviceSummary) -> Self {
        Self {
            product_key: device.product_key,
            device_name: device.device_name,
            state: device.status.state,
            enabled: device.status.enabled,
            client_ids: device.client_ids,
        }
    }
}

/// A device with its DeviceSecret: for the replies that create or replace the secret
/// (register, reset), the one time it is shown.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "admin-api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IssuedDeviceView<'a> {
    /// `ProductKey`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String))]
    pub product_key: ProductKey,
    /// `DeviceName`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String))]
    pub device_name: DeviceName,
    /// `DeviceSecret`.
    #[cfg_attr(feature = "admin-api", schema(value_type = String))]
    pub device_secret: Exposed<'a>,
    /// `inactive` (a new or reset device).
    #[cfg_attr(feature = "admin-api", schema(value_type = String, pattern = "^(inactive|issued|active)$"))]
    pub state: DeviceState,
}

impl<'a> IssuedDeviceView<'a> {
    /// `device` with its secret.
    pub fn exposing_secret(device: &'a DeviceRecord) -> Self {
        Self {
            product_key: device.product_key,
            device_name: device.device_name,
            device_secret: Exposed(device.device_secret.expose_secret()),
            state: device.status.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::DeviceStatus;
    use crate::secret::{DeviceSecret, ProductSecret};
    use crate::store::{PreRegistrationFree, RegistrationLimit};

    /// The views that expose a secret serialize it and never show it in `Debug`.
    #[test]
    fn debug_of_a_view_never_shows_its_secret() {
        let product = ProductRecord {
            product_key: ProductKey::new("a1ViewTest1").unwrap(),
            product_secret: ProductSecret::new("product-secret-in-view").unwrap(),
            dynamic_registration: DynamicRegistration::On,
            name: None,
            pre_registration_free: PreRegistrationFree::OFF,
            registration_limit: RegistrationLimit::DEFAULT,
            switched_off_by_breaker_at: None,
        };
        let device = DeviceRecord {
            product_key: product.product_key,
            device_name: DeviceName::new("view-dev").unwrap(),
            device_secret: DeviceSecret::new("device-secret-in-view").unwrap(),
            status: DeviceStatus::NEW,
            revision: 0,
            client_ids: Vec::new(),
        };
        let product_view = ProductView::exposing_secret(&product);
        let device_view = IssuedDeviceView::exposing_secret(&device);
        let export = crate::service::DeviceExport::of(&device, true);
        for (json, debug, secret) in [
            (
                serde_json::to_string(&product_view).unwrap(),
                format!("{product_view:?}"),
                "product-secret-in-view",
            ),
            (
                serde_json::to_string(&device_view).unwrap(),
                format!("{device_view:?}"),
                "device-secret-in-view",
            ),
            (
                serde_json::to_string(&export).unwrap(),
                format!("{export:?}"),
                "device-secret-in-view",
            ),
        ] {
            assert!(json.contains(secret), "serialized: {json}");
            assert!(!debug.contains(secret), "Debug: {debug}");
            assert!(debug.contains("[redacted]"), "Debug: {debug}");
        }
    }
}
