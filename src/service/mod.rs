//! Services over a store: logins, dynamic registration, administration.

mod admin;
mod authenticator;
#[cfg(feature = "import")]
mod import;
mod registrar;
mod view;

pub use admin::{Admin, AdminError, BatchRefusal, MAX_BATCH_DEVICES, ProductUpdate};
pub use authenticator::{AuthError, Authenticator};
#[cfg(feature = "import")]
pub use import::{
    DeviceExport, DeviceImport, ImportError, ImportSummary, MAX_IMPORT_BYTES, ProductImport,
    alibaba_status, parse_device_import, parse_product_import, status_of_alibaba,
};
pub use registrar::{IssuedClientIdToken, IssuedSecret, RegisterError, Registrar};
pub use view::{DeviceView, Exposed, IssuedDeviceView, LimitView, ProductView};

use crate::id::{DeviceName, IssuedClientId, ProductKey};
use crate::lifecycle::{
    Event, IssuancePolicy, SecretEffect, Transition, TransitionError, transition,
};
use crate::random::{Entropy, EntropyError};
use crate::secret::{DeviceSecret, DeviceToken, TokenDigest};
use crate::store::Entity;
use crate::store::{
    ClientIdChange, ClientIdRecord, DeviceRecord, DeviceStore, DeviceUpdate, EventKind, StoreError,
};

/// How often a lost compare-and-set is retried before the contention is reported.
const MAX_ATTEMPTS: usize = 16;

/// The device as it was when the event was applied, what the event did, and what `check`
/// returned for that record.
pub(crate) struct Applied<T> {
    pub(crate) before: DeviceRecord,
    pub(crate) transition: Transition,
    pub(crate) checked: T,
    /// The ClientID and DeviceToken issued ([`SecretEffect::AddClientId`]); the store keeps
    /// only the token's digest, so this is the one copy of the token.
    pub(crate) issued_client_id: Option<(IssuedClientId, DeviceToken)>,
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
            .ok_or(StoreError::NotFound {
                what: Entity::Device,
            })?;
        let checked = check(&before)?;
        // The ClientIDs held are the record's, as read here.
        let event = match event {
            Event::IssueClientId { registration, .. } => Event::IssueClientId {
                registration,
                held: before.client_ids.len(),
            },
            other => other,
        };
        let transition = transition(before.status, event, policy)?;
        let mut issued_client_id = None;
        let update = match (transition.to, transition.secret) {
            (None, _) => DeviceUpdate::Delete,
            (Some(status), SecretEffect::Keep | SecretEffect::Redeliver)
                if status == before.status =>
            {
                return Ok(Applied {
                    before,
                    transition,
                    checked,
                    issued_client_id,
                });
            }
            (Some(status), SecretEffect::Rotate) => DeviceUpdate::Set {
                event: EventKind::of(event),
                status,
                device_secret: Some(DeviceSecret::generate(entropy)?),
                client_ids: ClientIdChange::RevokeAll,
            },
            (Some(status), SecretEffect::AddClientId) => {
                let client_id = IssuedClientId::generate(entropy)?;
                let token = DeviceToken::generate(entropy)?;
                let record = ClientIdRecord {
                    client_id,
                    token_digest: TokenDigest::of(&token),
                };
                issued_client_id = Some((client_id, token));
                DeviceUpdate::Set {
                    event: EventKind::of(event),
                    status,
                    device_secret: None,
                    client_ids: ClientIdChange::Add(record),
                }
            }
            (Some(status), _) => DeviceUpdate::Set {
                event: EventKind::of(event),
                status,
                device_secret: None,
                client_ids: ClientIdChange::Keep,
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
                    issued_client_id,
                });
            }
            Err(StoreError::Precondition { .. }) if attempts < MAX_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
