//! Storage: the traits every adapter implements, and the adapters.
//!
//! # The safety-critical promise
//! [`DeviceStore::compare_and_set`] must be atomic: of any number of concurrent calls naming
//! the same device and revision, at most one may succeed; the others fail with
//! [`StoreError::Precondition`]. "Issue the secret once" rests on it. In SQL it is one
//! `UPDATE … WHERE revision = $expected` whose affected-row count decides the winner.
//!
//! The revision (rather than the state) is compared so that a device reset and issued again
//! between another task's read and its write cannot be mistaken for the state that task read.
//!
//! # The contract of an adapter
//! An adapter implements [`ProductStore`], [`DeviceStore`] and [`EventLog`] (together
//! [`Store`]; async traits, written with the `async-trait` crate's `#[async_trait]`, which
//! the adapter depends on too) and keeps these promises, each a property of the conformance suite (feature
//! `conformance`, `store::conformance`, one `#[test]` per property with
//! `iotauth::store_conformance_tests!`):
//! - **Atomic changes, each logged once.** Every change and its [`EventRecord`] (chained by
//!   [`EventRecord::chain`] onto the log's head) commit together or not at all; a failed or
//!   refused operation changes and logs nothing. The log numbers events without gaps.
//! - **Compare-and-set** as above; the **store assigns revisions**: 0 on insertion whatever
//!   the record says, one more on each successful compare-and-set.
//! - **All or none** for [`ProductStore::insert_products`] and [`DeviceStore::insert_devices`].
//! - **Quotas and limits shared by every process of the store**:
//!   [`DeviceStore::insert_device_within_quota`] counts and inserts atomically;
//!   [`ProductStore::take_registration_token`] and
//!   [`ProductStore::record_registration_refusal`] keep one bucket and one window per product.
//! - **Errors say what, never a secret**: [`StoreError::NotFound`] and
//!   [`StoreError::AlreadyExists`] name the [`Entity`]; an outage is
//!   [`StoreError::Unavailable`] with its [`FailureKind`] (the services answer it as
//!   "unavailable", never as a bad password). `Debug` (which the traits require) must not
//!   print a secret: [`DeviceSecret`] and [`ProductSecret`] redact themselves.
//!
//! A complete adapter, every method of the three traits (here counting the operations it
//! passes on to another store; `examples/custom_store.rs`, whose tests run the conformance
//! suite on it):
//!
//! ```
#![cfg_attr(feature = "memory", doc = include_str!("../../examples/custom_store.rs"))]
//! ```

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::id::{DeviceName, IssuedClientId, ProductKey};
use crate::lifecycle::{DeviceStatus, DynamicRegistration};
use crate::policy::UnixMillis;
use crate::secret::{DeviceSecret, ProductSecret, TokenDigest};

mod cache;
#[cfg(feature = "conformance")]
pub mod conformance;
mod event_log;
#[cfg(feature = "memory")]
mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod seal;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
pub use cache::CachedStore;
#[cfg(feature = "server")]
pub use event_log::follow;
pub use event_log::{
    Actor, ActorError, ChainBreak, ChainHash, ChainHead, EventKind, EventLog, EventRecord,
    FOLLOW_POLL_INTERVAL, HashError, MAX_EVENTS_PER_READ, NewEvent, verify_chain,
};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use seal::{KeyFileError, KeyId, Keyring, MasterKey, SecretField};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlStore;

/// A product as stored. Made by [`ProductRecord::new`] (a store adapter reading its rows sets
/// the other fields after); more fields may come.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProductRecord {
    /// The product's key.
    pub product_key: ProductKey,
    /// The secret shared by its devices for dynamic registration.
    pub product_secret: ProductSecret,
    /// The dynamic-registration switch.
    pub dynamic_registration: DynamicRegistration,
    /// An operator's label (see [`crate::service::Admin::create_product`] for its rules).
    pub name: Option<String>,
    /// Registration without pre-registration (`regnwl`).
    pub pre_registration_free: PreRegistrationFree,
    /// The limits on its dynamic registration (rate, automatic switch-off, replay).
    pub registration_limit: RegistrationLimit,
    /// When the circuit breaker switched dynamic registration off (too many refusals);
    /// `None` when it did not, or an operator set the switch since.
    pub switched_off_by_breaker_at: Option<UnixMillis>,
}

/// A product's limits on dynamic registration: what a leaked ProductSecret can do before an
/// operator notices. Issues are rate-limited by a token bucket shared by every process of the
/// store (refused with [`crate::RefusalCode::Throttled`], 429, when empty); when more than
/// `refusal_threshold` refusals that a harvester causes (bad signature, unknown device, already
/// issued, a replayed `random`) arrive within the last `refusal_window_secs`, the product's
/// dynamic registration is switched off, to stay off until an operator turns it on. Devices
/// already activated are not affected.
///
/// Built from [`RegistrationLimit::DEFAULT`] by the `with_*` methods, which check the ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegistrationLimit {
    rate_per_sec: u32,
    burst: u32,
    refusal_threshold: u32,
    refusal_window_secs: u32,
    unique_random: bool,
}

impl RegistrationLimit {
    /// A new product's limits: 10 issues a second, bursts of 100; off after more than 100
    /// refusals within 60 s; `random` not checked.
    pub const DEFAULT: Self = Self {
        rate_per_sec: 10,
        burst: 100,
        refusal_threshold: 100,
        refusal_window_secs: 60,
        unique_random: false,
    };

    /// The most refusals a threshold may name (the stores keep the refusals of the window).
    pub const MAX_REFUSAL_THRESHOLD: u32 = 100_000;

    /// Issues per second the bucket refills: 1 to 1,000,000.
    pub fn rate_per_sec(&self) -> u32 {
        self.rate_per_sec
    }

    /// The bucket's size: how many issues may come at once (at least 1).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Refusals within the window that switch dynamic registration off; 0: never.
    pub fn refusal_threshold(&self) -> u32 {
        self.refusal_threshold
    }

    /// The window of the refusal threshold, in seconds (at least 1).
    pub fn refusal_window_secs(&self) -> u32 {
        self.refusal_window_secs
    }

    /// Whether a registration whose `random` was seen for the device before (also before a
    /// reset) is refused, [`crate::RefusalCode::RandomReused`]: a captured registration cannot
    /// be replayed. Off by default: iotkit-embedded 3.x sends one constant `random`.
    pub fn unique_random(&self) -> bool {
        self.unique_random
    }

    /// The limits with the given issue rate and burst.
    ///
    /// # Errors
    /// [`LimitError`] when `rate_per_sec` is not within 1 to 1,000,000 or `burst` is 0.
    pub fn with_rate(self, rate_per_sec: u32, burst: u32) -> Result<Self, LimitError> {
        if !(1..=1_000_000).contains(&rate_per_sec) {
            return Err(LimitError::Rate);
        }
        if burst == 0 {
            return Err(LimitError::Burst);
        }
        Ok(Self {
            rate_per_sec,
            burst,
            ..self
        })
    }

    /// The limits with the given refusal threshold (0: never switch off) and window.
    ///
    /// # Errors
    /// [`LimitError::Threshold`] above [`RegistrationLimit::MAX_REFUSAL_THRESHOLD`];
    /// [`LimitError::Window`] when `window_secs` is 0.
    pub fn with_refusals(self, threshold: u32, window_secs: u32) -> Result<Self, LimitError> {
        if threshold > Self::MAX_REFUSAL_THRESHOLD {
            return Err(LimitError::Threshold);
        }
        if window_secs == 0 {
            return Err(LimitError::Window);
        }
        Ok(Self {
            refusal_threshold: threshold,
            refusal_window_secs: window_secs,
            ..self
        })
    }

    /// The limits with [`RegistrationLimit::unique_random`] set.
    pub fn with_unique_random(self, unique_random: bool) -> Self {
        Self {
            unique_random,
            ..self
        }
    }

    /// The token bucket as a generic cell rate algorithm: `tat` is the theoretical arrival
    /// time in microseconds; returns its new value and whether an issue is admitted at `now`
    /// (`tat' = max(tat, now) + interval`, admitted while `tat' - now <= burst * interval`). A
    /// debt beyond a full bucket's (written by a node whose clock runs ahead, or before this
    /// clock stepped back) is cut to a full bucket's. The SQL store runs the same arithmetic
    /// in its statements.
    #[cfg(feature = "memory")]
    pub(crate) fn admit_issue(&self, tat: i64, now: i64) -> (i64, bool) {
        let interval = 1_000_000 / i64::from(self.rate_per_sec.max(1));
        let full = i64::from(self.burst) * interval;
        let next = tat.max(now) + interval;
        if next - now <= full {
            (next, true)
        } else {
            (tat.min(now + full), false)
        }
    }

    /// The refusal window in microseconds.
    #[cfg(feature = "memory")]
    pub(crate) fn window_micros(&self) -> i64 {
        i64::from(self.refusal_window_secs) * 1_000_000
    }
}

/// A [`RegistrationLimit`] out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The rate is not within 1 to 1,000,000 a second.
    #[error("the registration rate must be 1 to 1000000 a second")]
    Rate,
    /// The burst is 0.
    #[error("the registration burst must be at least 1")]
    Burst,
    /// The refusal threshold is above [`RegistrationLimit::MAX_REFUSAL_THRESHOLD`].
    #[error("the refusal threshold must be at most 100000")]
    Threshold,
    /// The refusal window is 0 s.
    #[error("the refusal window must be at least 1 s")]
    Window,
}

/// How many `random` values a store keeps per device for
/// [`RegistrationLimit::unique_random`]: the newest ones; an older one is forgotten.
pub const RANDOM_HISTORY: usize = 32;

/// A product's settings for registration without pre-registration (`regnwl`, see the [compatibility notes](crate::manual::compatibility)):
/// devices that are not registered in advance are created by their first registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PreRegistrationFree {
    /// Whether the product allows it; in effect only while dynamic registration is on.
    pub on: bool,
    /// The most devices the product may have for a `regnwl` to create another: a leaked
    /// ProductSecret cannot create devices without bound.
    pub device_quota: u32,
}

impl PreRegistrationFree {
    /// A product's default quota.
    pub const DEFAULT_DEVICE_QUOTA: u32 = 10_000;

    /// Off, with the default quota: a new product's setting.
    pub const OFF: Self = Self {
        on: false,
        device_quota: Self::DEFAULT_DEVICE_QUOTA,
    };
}

/// A ClientID a device holds, and the digest of its DeviceToken.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdRecord {
    /// The ClientID (the client-id CORE of `connwl` logins).
    pub client_id: IssuedClientId,
    /// The SHA-256 of its token.
    pub token_digest: TokenDigest,
}

impl ProductRecord {
    /// A product with `dynamic_registration`, no name, registration without
    /// pre-registration off, [`RegistrationLimit::DEFAULT`], never switched off by the breaker.
    pub fn new(
        product_key: ProductKey,
        product_secret: ProductSecret,
        dynamic_registration: DynamicRegistration,
    ) -> Self {
        Self {
            product_key,
            product_secret,
            dynamic_registration,
            name: None,
            pre_registration_free: PreRegistrationFree::OFF,
            registration_limit: RegistrationLimit::DEFAULT,
            switched_off_by_breaker_at: None,
        }
    }

    /// An explicit copy (the secret has no `Clone`, so copies stay visible in the code).
    pub fn clone_record(&self) -> Self {
        Self {
            product_key: self.product_key,
            product_secret: self.product_secret.clone_secret(),
            dynamic_registration: self.dynamic_registration,
            name: self.name.clone(),
            pre_registration_free: self.pre_registration_free,
            registration_limit: self.registration_limit,
            switched_off_by_breaker_at: self.switched_off_by_breaker_at,
        }
    }
}

/// A device as stored. Made by [`DeviceRecord::new`] (a store adapter reading its rows sets
/// the other fields after); more fields may come.
#[derive(Debug)]
#[non_exhaustive]
pub struct DeviceRecord {
    /// The device's product.
    pub product_key: ProductKey,
    /// The device's name.
    pub device_name: DeviceName,
    /// The device's secret.
    pub device_secret: DeviceSecret,
    /// Lifecycle state and disabled flag.
    pub status: DeviceStatus,
    /// Assigned by the store: 0 on insertion, incremented by every successful
    /// [`DeviceStore::compare_and_set`].
    pub revision: u64,
    /// The ClientIDs issued by registration without pre-registration, oldest first; at most
    /// [`crate::IssuedClientId::MAX_PER_DEVICE`].
    pub client_ids: Vec<ClientIdRecord>,
}

/// A device as a listing shows it ([`DeviceStore::device_page`]): no secret, no token digest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceSummary {
    /// The device's product.
    pub product_key: ProductKey,
    /// The device's name.
    pub device_name: DeviceName,
    /// Lifecycle state and disabled flag.
    pub status: DeviceStatus,
    /// The ClientIDs issued by registration without pre-registration, oldest first.
    pub client_ids: Vec<IssuedClientId>,
}

impl DeviceSummary {
    /// `device` without its secret and token digests.
    pub fn of(device: &DeviceRecord) -> Self {
        Self {
            product_key: device.product_key,
            device_name: device.device_name,
            status: device.status,
            client_ids: device
                .client_ids
                .iter()
                .map(|held| held.client_id)
                .collect(),
        }
    }
}

impl DeviceRecord {
    /// A new device: [`DeviceStatus::NEW`] (Inactive, enabled), revision 0, no ClientIDs.
    pub fn new(product_key: ProductKey, device_name: DeviceName, secret: DeviceSecret) -> Self {
        Self {
            product_key,
            device_name,
            device_secret: secret,
            status: DeviceStatus::NEW,
            revision: 0,
            client_ids: Vec::new(),
        }
    }

    /// An explicit copy (the secret has no `Clone`, so copies stay visible in the code).
    pub fn clone_record(&self) -> Self {
        Self {
            product_key: self.product_key,
            device_name: self.device_name,
            device_secret: self.device_secret.clone_secret(),
            status: self.status,
            revision: self.revision,
            client_ids: self.client_ids.clone(),
        }
    }
}

/// A change to a device, applied by [`DeviceStore::compare_and_set`].
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceUpdate {
    /// Set the status, and the secret when one is given.
    Set {
        /// What the change is, as the event log records it.
        event: EventKind,
        /// The new status.
        status: DeviceStatus,
        /// The new secret (on reset), or `None` to keep the current one.
        device_secret: Option<DeviceSecret>,
        /// What happens to the device's ClientIDs.
        client_ids: ClientIdChange,
    },
    /// Remove the device (logged as [`EventKind::Deleted`]).
    Delete,
}

/// A change to a device's ClientIDs.
#[derive(Debug, Clone, Copy)]
pub enum ClientIdChange {
    /// They stay as they are.
    Keep,
    /// One more is added after them.
    Add(ClientIdRecord),
    /// All are revoked (on reset).
    RevokeAll,
}

/// What a store operation was about: the subject of a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Entity {
    /// A product (its ProductKey).
    Product,
    /// A device (its ProductKey and DeviceName).
    Device,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Product => "product",
            Self::Device => "device",
        })
    }
}

/// Why a store operation failed. The source of an outage is kept, never flattened to a string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The product or device does not exist.
    #[error("{what} not found")]
    NotFound {
        /// Which.
        what: Entity,
    },
    /// A product or device with that key already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// Which.
        what: Entity,
    },
    /// The product has as many devices as its quota allows
    /// ([`PreRegistrationFree::device_quota`]).
    #[error("the product's device quota is reached")]
    QuotaReached,
    /// The record changed since it was read (a compare-and-set lost).
    #[error("{what} was changed concurrently")]
    Precondition {
        /// Which (a device: only devices are compared and set).
        what: Entity,
    },
    /// The store failed or cannot be reached: an outage, not a verdict on the credentials.
    /// `kind` says what an operator should look at; the source keeps the cause (a SQLite
    /// result code, an I/O error, a PostgreSQL SQLSTATE), never a secret.
    #[error("the store failed ({kind})")]
    Unavailable {
        /// What kind of failure.
        kind: FailureKind,
        /// The underlying error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl StoreError {
    /// An outage caused by `source`, of the kind an I/O error's [`std::io::ErrorKind`] says
    /// when `source` is one ([`FailureKind::Unavailable`] otherwise).
    pub fn unavailable(source: impl StdError + Send + Sync + 'static) -> Self {
        let source: Box<dyn StdError + Send + Sync> = Box::new(source);
        let kind = source
            .downcast_ref::<std::io::Error>()
            .map_or(FailureKind::Unavailable, FailureKind::of_io);
        Self::Unavailable { kind, source }
    }

    /// An outage of a known kind.
    pub fn failure(kind: FailureKind, source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Unavailable {
            kind,
            source: Box::new(source),
        }
    }

    /// The kind of an outage; `None` for the other variants (verdicts on the request).
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            Self::Unavailable { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// What made a store fail: what an operator has to fix, counted by the metrics
/// (`iotauth_store_failures_total{kind}`) and named in every log line of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The store's settings are wrong: an unsupported URL, a database that does not exist, a
    /// refused database password, a schema newer than this program.
    Configuration,
    /// Access refused: the database file's owner or mode (e.g. the Mosquitto plugin running as
    /// the `mosquitto` user on a file root created), or a database role's privileges.
    Permission,
    /// The database or the file system holding it is read-only.
    ReadOnly,
    /// The disk, or the database's space, is full.
    Full,
    /// Locked by another writer past the busy timeout, or a transaction conflict: retry.
    Busy,
    /// The SQLite file was deleted or replaced while the store had it open: what the store
    /// writes would be lost, so it refuses.
    Replaced,
    /// Stored data this crate would never write.
    Corrupt,
    /// Anything else: unreachable, timed out, an I/O error.
    Unavailable,
}

impl FailureKind {
    /// Every kind, in the order of [`FailureKind::as_str`]'s table.
    pub const ALL: [Self; 8] = [
        Self::Configuration,
        Self::Permission,
        Self::ReadOnly,
        Self::Full,
        Self::Busy,
        Self::Replaced,
        Self::Corrupt,
        Self::Unavailable,
    ];

    /// The kind's name in logs and metric labels: `configuration`, `permission`,
    /// `read_only`, `full`, `busy`, `replaced`, `corrupt`, `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configuration => "configuration",
            Self::Permission => "permission",
            Self::ReadOnly => "read_only",
            Self::Full => "full",
            Self::Busy => "busy",
            Self::Replaced => "replaced",
            Self::Corrupt => "corrupt",
            Self::Unavailable => "unavailable",
        }
    }

    /// The kind of an I/O error.
    pub fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::PermissionDenied => Self::Permission,
            ErrorKind::ReadOnlyFilesystem => Self::ReadOnly,
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Self::Full,
            ErrorKind::WouldBlock | ErrorKind::ResourceBusy => Self::Busy,
            ErrorKind::NotFound | ErrorKind::InvalidInput | ErrorKind::IsADirectory => {
                Self::Configuration
            }
            ErrorKind::InvalidData => Self::Corrupt,
            _ => Self::Unavailable,
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a SQL store keeps secrets at rest: sealed under which master keys, or in clear. The
/// memory store ignores it. (Sealing: `MasterKey`, with feature `sqlite` or `postgres`.)
///
/// The default: a SQLite file store seals under the key file beside its database
/// (`PATH.key`), created (mode 0600) when the store holds no sealed secret yet; an in-memory
/// SQLite store under a key that lives as long as the process; a PostgreSQL store refuses to
/// open (its nodes must share one key: give [`SecretsAtRest::master_key_file`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecretsAtRest {
    /// The master key file new secrets are sealed under (`--master-key-file`,
    /// `IOTAUTH_MASTER_KEY_FILE`).
    pub master_key_file: Option<PathBuf>,
    /// Older key files whose sealed values still open (`--previous-key-file`), while a
    /// store is re-sealed.
    pub previous_key_files: Vec<PathBuf>,
    /// Store secrets in clear (`--insecure-plaintext-secrets`): a dump of the database is
    /// every device's credentials. Refused together with a key file.
    pub insecure_plaintext: bool,
}

impl SecretsAtRest {
    /// Sealed under the key in `master_key_file`.
    pub fn sealed_under(master_key_file: impl Into<PathBuf>) -> Self {
        Self {
            master_key_file: Some(master_key_file.into()),
            ..Self::default()
        }
    }

    /// The key file beside a SQLite database file: `PATH.key`.
    pub fn default_key_file(database: &Path) -> PathBuf {
        let mut path = database.as_os_str().to_owned();
        path.push(".key");
        PathBuf::from(path)
    }
}

/// Products.
#[async_trait]
pub trait ProductStore: Send + Sync + std::fmt::Debug {
    /// Inserts a new product.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when the key is taken; [`StoreError::Unavailable`].
    async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError>;

    /// Inserts new products, all or none, in one write (an import), each logged as
    /// [`ProductStore::insert_product`] logs it, in the order given.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when a key is taken or given twice;
    /// [`StoreError::Unavailable`]. Then none is inserted.
    async fn insert_products(&self, products: Vec<ProductRecord>) -> Result<(), StoreError>;

    /// The product with this key, if any.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn product(&self, product_key: &ProductKey) -> Result<Option<ProductRecord>, StoreError>;

    /// Every product, ordered by key.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError>;

    /// Flips the dynamic-registration switch.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Unavailable`].
    async fn set_dynamic_registration(
        &self,
        product_key: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), StoreError>;

    /// Sets registration without pre-registration (switch and quota).
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Unavailable`].
    async fn set_pre_registration_free(
        &self,
        product_key: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), StoreError>;

    /// Sets the product's [`RegistrationLimit`], and fills its token bucket.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Unavailable`].
    async fn set_registration_limit(
        &self,
        product_key: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), StoreError>;

    /// Takes one issue from the product's token bucket at `now`
    /// ([`RegistrationLimit::rate_per_sec`], [`RegistrationLimit::burst`]): `false` when it is
    /// empty. Atomic, across every process of the store: of concurrent calls, no more succeed
    /// than the bucket holds.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn take_registration_token(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;

    /// Counts a registration refusal at `now` while dynamic registration is on (and the
    /// threshold is not 0); when more than [`RegistrationLimit::refusal_threshold`] refusals
    /// were counted within the last [`RegistrationLimit::refusal_window_secs`], switches
    /// dynamic registration off and records when ([`ProductRecord::switched_off_by_breaker_at`]).
    /// Returns whether this call switched it off (of concurrent calls, one does).
    /// [`ProductStore::set_dynamic_registration`] forgets the refusals counted.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn record_registration_refusal(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;
}

/// Devices.
#[async_trait]
pub trait DeviceStore: Send + Sync + std::fmt::Debug {
    /// Inserts a new device at revision 0 (the store assigns revisions: the record's
    /// `revision` is ignored), logging
    /// `device_registered`, then `activated` when it is inserted Active and `disabled` when it
    /// is inserted disabled ([`NewEvent::of_insert`]).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when its product does not exist;
    /// [`StoreError::AlreadyExists`] when the name is taken in the product;
    /// [`StoreError::Unavailable`].
    async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError>;

    /// Inserts a new device unless its product has `device_quota` devices or more already;
    /// atomically: of concurrent calls, no more succeed than the quota leaves room for.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when the name is taken (also at the quota);
    /// [`StoreError::QuotaReached`]; otherwise as [`DeviceStore::insert_device`].
    async fn insert_device_within_quota(
        &self,
        device: DeviceRecord,
        device_quota: u32,
    ) -> Result<(), StoreError>;

    /// Inserts new devices, all or none, in one write (an import: 100,000 devices must not
    /// take 100,000 transactions). Each device's events are logged as
    /// [`DeviceStore::insert_device`] logs them, in the order given.
    ///
    /// # Errors
    /// As [`DeviceStore::insert_device`], for the first device refused (also for a name given
    /// twice); then none is inserted.
    async fn insert_devices(&self, devices: Vec<DeviceRecord>) -> Result<(), StoreError>;

    /// The device, if any, read as one consistent snapshot.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn device(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// Every device of a product, ordered by name.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError>;

    /// A page of a product's devices ordered by name (bytewise), without their secrets: at
    /// most `limit` after the first `offset`. For listings, which must not read (or open)
    /// every secret of a large product; an unknown product has none.
    ///
    /// The default reads [`DeviceStore::devices`] and cuts the page from it; adapters
    /// override it with a query that reads the page alone.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn device_page(
        &self,
        product_key: &ProductKey,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<DeviceSummary>, StoreError> {
        let mut devices = self.devices(product_key).await?;
        devices.sort_unstable_by(|a, b| a.device_name.as_str().cmp(b.device_name.as_str()));
        Ok(devices
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(DeviceSummary::of)
            .collect())
    }

    /// How many devices a product has (what [`DeviceStore::insert_device_within_quota`]
    /// counts). The default reads them all; adapters count in place.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn device_count(&self, product_key: &ProductKey) -> Result<u64, StoreError> {
        Ok(self.devices(product_key).await?.len() as u64)
    }

    /// Applies `update` if and only if the device's revision is still `expected_revision`,
    /// and then increments the revision; atomically (see the module's promise).
    ///
    /// # Errors
    /// [`StoreError::Precondition`] when the revision differs (someone else won);
    /// [`StoreError::NotFound`] when the device is gone; [`StoreError::Unavailable`].
    async fn compare_and_set(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        expected_revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError>;

    /// Records that a registration of the device used `random`: `false` when it was recorded
    /// before (a replay), atomically. Keeps the [`RANDOM_HISTORY`] recorded last per device
    /// name (in the order they were recorded), across resets and deletions.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn record_registration_random(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        random: &str,
    ) -> Result<bool, StoreError>;

    /// Whether the store serves requests now: a round trip to it, for readiness probes
    /// (`/readyz`) and watchdogs. A cache passes it through. The default reads a device that
    /// does not exist; adapters may check more (the SQL store checks that its SQLite file was
    /// not deleted or replaced).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], of the kind that says why.
    async fn check_ready(&self) -> Result<(), StoreError> {
        let probe = (ProductKey::new("iotauthprobe"), DeviceName::new("ready"));
        if let (Ok(product_key), Ok(device_name)) = probe {
            self.device(&product_key, &device_name).await?;
        }
        Ok(())
    }
}

/// Products, devices and the log of their changes in one store, as a trait object:
/// `Arc<dyn Store>` serves any adapter chosen at run time (e.g. by a URL).
///
/// Every change an adapter makes through [`ProductStore`] and [`DeviceStore`] (all but the
/// registration limits' counters: tokens, refusals that do not trip the breaker, `random`
/// values) appends one [`EventRecord`] to its [`EventLog`] atomically with the change: no
/// change without its event, no event without its change.
pub trait Store: ProductStore + DeviceStore + EventLog {}

impl<T: ProductStore + DeviceStore + EventLog + ?Sized> Store for T {}

/// Opens the store a URL names: `memory:`, `sqlite://PATH` (feature `sqlite`) or
/// `postgres://…` (feature `postgres`), with the default [`SecretsAtRest`], its events
/// written by [`Actor::library`] (see [`open_with`]).
///
/// # Errors
/// As [`open_with`].
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &SecretsAtRest::default(), Actor::library()).await
}

/// Opens the store a URL names (as [`open`]), keeping secrets at rest as `secrets` says (SQL
/// stores; the memory store ignores it), its events written by `actor`.
///
/// # Errors
/// [`StoreError::Unavailable`] for an unsupported URL, an unreachable database, or master
/// keys that do not fit the store ([`FailureKind::Configuration`]).
pub async fn open_with(
    url: &str,
    secrets: &SecretsAtRest,
    actor: Actor,
) -> Result<Arc<dyn Store>, StoreError> {
    #[cfg(feature = "memory")]
    if url == "memory:" {
        return Ok(Arc::new(MemoryStore::new().with_actor(actor)));
    }
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        Ok(Arc::new(
            SqlStore::connect_with(url, secrets)
                .await?
                .with_actor(actor),
        ))
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    let _ = (secrets, actor);
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    Err(StoreError::failure(
        FailureKind::Configuration,
        std::io::Error::other(format!(
            "unsupported store URL (this build has no SQL stores): {}",
            url.split(':').next().unwrap_or_default()
        )),
    ))
}

/// Forwards both traits through a pointer type, so services can own an `Arc` of a store or
/// borrow one.
macro_rules! forward_store {
    ($($pointer:ty),*) => {$(
        #[async_trait]
        impl<T: ProductStore + ?Sized> ProductStore for $pointer {
            async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError> {
                (**self).insert_product(product).await
            }
            async fn insert_products(&self, products: Vec<ProductRecord>) -> Result<(), StoreError> {
                (**self).insert_products(products).await
            }
            async fn product(
                &self,
                product_key: &ProductKey,
            ) -> Result<Option<ProductRecord>, StoreError> {
                (**self).product(product_key).await
            }
            async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
                (**self).products().await
            }
            async fn set_dynamic_registration(
                &self,
                product_key: &ProductKey,
                switch: DynamicRegistration,
            ) -> Result<(), StoreError> {
                (**self).set_dynamic_registration(product_key, switch).await
            }
            async fn set_pre_registration_free(
                &self,
                product_key: &ProductKey,
                setting: PreRegistrationFree,
            ) -> Result<(), StoreError> {
                (**self).set_pre_registration_free(product_key, setting).await
            }
            async fn set_registration_limit(
                &self,
                product_key: &ProductKey,
                limit: RegistrationLimit,
            ) -> Result<(), StoreError> {
                (**self).set_registration_limit(product_key, limit).await
            }
            async fn take_registration_token(
                &self,
                product_key: &ProductKey,
                now: UnixMillis,
            ) -> Result<bool, StoreError> {
                (**self).take_registration_token(product_key, now).await
            }
            async fn record_registration_refusal(
                &self,
                product_key: &ProductKey,
                now: UnixMillis,
            ) -> Result<bool, StoreError> {
                (**self).record_registration_refusal(product_key, now).await
            }
        }

        #[async_trait]
        impl<T: DeviceStore + ?Sized> DeviceStore for $pointer {
            async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
                (**self).insert_device(device).await
            }
            async fn insert_device_within_quota(
                &self,
                device: DeviceRecord,
                device_quota: u32,
            ) -> Result<(), StoreError> {
                (**self).insert_device_within_quota(device, device_quota).await
            }
            async fn insert_devices(&self, devices: Vec<DeviceRecord>) -> Result<(), StoreError> {
                (**self).insert_devices(devices).await
            }
            async fn device(
                &self,
                product_key: &ProductKey,
                device_name: &DeviceName,
            ) -> Result<Option<DeviceRecord>, StoreError> {
                (**self).device(product_key, device_name).await
            }
            async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
                (**self).devices(product_key).await
            }
            async fn device_page(
                &self,
                product_key: &ProductKey,
                offset: u64,
                limit: u32,
            ) -> Result<Vec<DeviceSummary>, StoreError> {
                (**self).device_page(product_key, offset, limit).await
            }
            async fn device_count(&self, product_key: &ProductKey) -> Result<u64, StoreError> {
                (**self).device_count(product_key).await
            }
            async fn compare_and_set(
                &self,
                product_key: &ProductKey,
                device_name: &DeviceName,
                expected_revision: u64,
                update: DeviceUpdate,
            ) -> Result<(), StoreError> {
                (**self)
                    .compare_and_set(product_key, device_name, expected_revision, update)
                    .await
            }
            async fn record_registration_random(
                &self,
                product_key: &ProductKey,
                device_name: &DeviceName,
                random: &str,
            ) -> Result<bool, StoreError> {
                (**self)
                    .record_registration_random(product_key, device_name, random)
                    .await
            }
            async fn check_ready(&self) -> Result<(), StoreError> {
                (**self).check_ready().await
            }
        }

        #[async_trait]
        impl<T: EventLog + ?Sized> EventLog for $pointer {
            async fn events_after(
                &self,
                after: u64,
                limit: usize,
            ) -> Result<Vec<EventRecord>, StoreError> {
                (**self).events_after(after, limit).await
            }
            async fn event_head(&self) -> Result<ChainHead, StoreError> {
                (**self).event_head().await
            }
            async fn appended(&self) -> bool {
                (**self).appended().await
            }
            fn observe(&self, event: &EventRecord) {
                (**self).observe(event)
            }
            fn observe_lost_events(&self) {
                (**self).observe_lost_events()
            }
        }
    )*};
}

forward_store!(Arc<T>, &T);
