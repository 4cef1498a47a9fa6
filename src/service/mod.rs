//! Services over a store: logins, dynamic registration, administration.

mod admin;
mod authenticator;
mod registrar;

pub use admin::{Admin, AdminError};
pub use authenticator::{AuthError, Authenticator};
pub use registrar::{IssuedSecret, RegisterError, Registrar};

use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{
    Event, IssuancePolicy, SecretEffect, Transition, TransitionError, transition,
};
use crate::random::{Entropy, EntropyError};
use crate::secret::DeviceSecret;
use crate::store::{DeviceRecord, DeviceStore, DeviceUpdate, StoreError};

/// How often a lost compare-and-set is retried before the contention is reported.
const MAX_ATTEMPTS: usize = 16;

/// The device as it was when the event was applied, what the event did, and what `check`
/// returned for that record.
pub(crate) struct Applied<T> {
    pub(crate) before: DeviceRecord,
    pub(crate) transition: Transition,
    pub(crate) checked: T,
}

/// Reads the device, runs `check` on it (e.g. verifies a signature against its secret),
/// computes the transition and writes it by compare-and-set; on a lost race, starts over from
/// a fresh read, so `check` always judges the record that is written over.
///
/// A transition that changes nothing is not written: the read was a consistent snapshot, so
/// the outcome is linearizable at that read.
pub(crate) async fn apply_event<S, T, E>(
    store: &S,
    product_key: &ProductKey,
    device_name: &DeviceName,
    event: Event,
    policy: IssuancePolicy,
    entropy: &dyn Entropy,
    mut check: impl FnMut(&DeviceRecord) -> Result<T, E>,
) -> Result<Applied<T>, E>
where
    S: DeviceStore + ?Sized,
    E: From<StoreError> + From<TransitionError> + From<EntropyError>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = store
            .device(product_key, device_name)
            .await?
            .ok_or(StoreError::NotFound { what: "device" })?;
        let checked = check(&before)?;
        let transition = transition(before.status, event, policy)?;
        let update = match (transition.to, transition.secret) {
            (None, _) => DeviceUpdate::Delete,
            (Some(status), SecretEffect::Keep | SecretEffect::Redeliver)
                if status == before.status =>
            {
                return Ok(Applied {
                    before,
                    transition,
                    checked,
                });
            }
            (Some(status), SecretEffect::Rotate) => DeviceUpdate::Set {
                status,
                device_secret: Some(DeviceSecret::generate(entropy)?),
            },
            (Some(status), _) => DeviceUpdate::Set {
                status,
                device_secret: None,
            },
        };
        match store
            .compare_and_set(product_key, device_name, before.revision, update)
            .await
        {
            Ok(()) => {
                return Ok(Applied {
                    before,
                    transition,
                    checked,
                });
            }
            Err(StoreError::Precondition { .. }) if attempts < MAX_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
