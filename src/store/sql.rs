//! SQL stores: SQLite (feature `sqlite`, the embedded default) and PostgreSQL (feature
//! `postgres`, for fleets served by several broker nodes), one adapter over sqlx's `Any`
//! driver, so both run the same statements.
//!
//! # Schema
//! ```sql
//! CREATE TABLE iotauth_products (
//!     product_key TEXT PRIMARY KEY,
//!     product_secret TEXT NOT NULL,                   -- sealed (see below)
//!     dynamic_registration BIGINT NOT NULL,           -- 0 off, 1 on
//!     name TEXT,
//!     pre_registration_free BIGINT NOT NULL DEFAULT 0, -- 0 off, 1 on (version 2)
//!     device_quota BIGINT NOT NULL DEFAULT 10000,     -- (version 2)
//!     registration_rate BIGINT NOT NULL DEFAULT 10,   -- (version 3) RegistrationLimit
//!     registration_burst BIGINT NOT NULL DEFAULT 100,
//!     refusal_threshold BIGINT NOT NULL DEFAULT 100,
//!     refusal_window_secs BIGINT NOT NULL DEFAULT 60,
//!     unique_random BIGINT NOT NULL DEFAULT 0,
//!     issue_tat BIGINT NOT NULL DEFAULT 0,            -- the token bucket, Unix µs
//!     breaker_tripped_at BIGINT);                     -- Unix ms
//! CREATE TABLE iotauth_devices (
//!     product_key TEXT NOT NULL REFERENCES iotauth_products (product_key),
//!     device_name TEXT NOT NULL,
//!     device_secret TEXT NOT NULL,                    -- sealed (see below)
//!     state TEXT NOT NULL CHECK (state IN ('inactive', 'issued', 'active')),
//!     enabled BIGINT NOT NULL,                        -- 0 disabled, 1 enabled
//!     revision BIGINT NOT NULL,
//!     client_ids TEXT NOT NULL DEFAULT '',            -- (version 2) see below
//!     PRIMARY KEY (product_key, device_name));
//! -- version 3:
//! CREATE TABLE iotauth_registration_refusals (product_key TEXT NOT NULL, at BIGINT NOT NULL);
//! CREATE TABLE iotauth_registration_randoms (product_key TEXT NOT NULL,
//!     device_name TEXT NOT NULL, random TEXT NOT NULL, seq BIGINT NOT NULL,
//!     PRIMARY KEY (product_key, device_name, random));
//! CREATE TABLE iotauth_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
//! -- version 4: the event log (see `EventLog`)
//! CREATE TABLE iotauth_events (seq BIGINT PRIMARY KEY, at BIGINT NOT NULL,  -- Unix ms
//!     product_key TEXT NOT NULL, device_name TEXT, kind TEXT NOT NULL, actor TEXT NOT NULL,
//!     prev_hash TEXT NOT NULL, hash TEXT NOT NULL);                        -- 64 hex digits
//! CREATE TABLE iotauth_event_head (id BIGINT PRIMARY KEY CHECK (id = 1),
//!     seq BIGINT NOT NULL, hash TEXT NOT NULL);                           -- the last event
//! ```
//! Secrets are stored sealed, `sealed1:KEYID:HEX` (see [`MasterKey`]); `iotauth_settings`
//! holds `sealed_under`, the key the store was first sealed (or last re-keyed) under. A store
//! kept in clear (`--insecure-plaintext-secrets`) holds the secrets themselves.
//! `client_ids` lists a device's ClientIDs and the SHA-256 of each one's DeviceToken as
//! `CLIENTID:HEXDIGEST` separated by commas, oldest first (at most five): in the device's row,
//! so that compare-and-set changes them atomically with the rest. No token is stored.
//! Only `TEXT` and `BIGINT` columns, which both databases and the `Any` driver map alike.
//! Migrations are embedded and applied on [`SqlStore::connect`] (and by [`SqlStore::migrate`]);
//! applied versions are recorded in `iotauth_schema`.
//!
//! # Atomicity and durability
//! Compare-and-set is one `UPDATE … WHERE revision = $expected`; the affected-row count decides
//! the winner, on one node or many. Every change and its event are one transaction. SQLite runs in WAL mode with `synchronous = FULL`, so an
//! issued state is on disk before the secret is returned; PostgreSQL commits each statement.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, Row};

use super::event_log::UnreadableEvent;
use super::seal::{self, Keyring, MasterKey, SecretField};
use super::{
    Actor, ChainHash, ChainHead, ClientIdChange, ClientIdRecord, DeviceRecord, DeviceStore,
    DeviceSummary, DeviceUpdate, EventKind, EventLog, EventRecord, FailureKind,
    MAX_EVENTS_PER_READ, NewEvent, PreRegistrationFree, ProductRecord, ProductStore,
    RANDOM_HISTORY, RegistrationLimit, SecretsAtRest, StoreError,
};
use crate::id::{DeviceName, IssuedClientId, ProductKey};
use crate::lifecycle::{DeviceState, DeviceStatus, DynamicRegistration};
use crate::policy::{Clock, SystemClock, UnixMillis};
use crate::secret::{DeviceSecret, ProductSecret, TokenDigest};
use crate::store::Entity;

/// Schema versions, applied in order, each once.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS iotauth_products (
            product_key TEXT PRIMARY KEY,
            product_secret TEXT NOT NULL,
            dynamic_registration BIGINT NOT NULL,
            name TEXT)",
            "CREATE TABLE IF NOT EXISTS iotauth_devices (
            product_key TEXT NOT NULL REFERENCES iotauth_products (product_key),
            device_name TEXT NOT NULL,
            device_secret TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('inactive', 'issued', 'active')),
            enabled BIGINT NOT NULL,
            revision BIGINT NOT NULL,
            PRIMARY KEY (product_key, device_name))",
        ],
    ),
    (
        2,
        &[
            "ALTER TABLE iotauth_products ADD COLUMN pre_registration_free BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE iotauth_products ADD COLUMN device_quota BIGINT NOT NULL DEFAULT 10000",
            "ALTER TABLE iotauth_devices ADD COLUMN client_ids TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        3,
        &[
            "ALTER TABLE iotauth_products ADD COLUMN registration_rate BIGINT NOT NULL DEFAULT 10",
            "ALTER TABLE iotauth_products ADD COLUMN registration_burst BIGINT NOT NULL DEFAULT 100",
            "ALTER TABLE iotauth_products ADD COLUMN refusal_threshold BIGINT NOT NULL DEFAULT 100",
            "ALTER TABLE iotauth_products ADD COLUMN refusal_window_secs BIGINT NOT NULL DEFAULT 60",
            "ALTER TABLE iotauth_products ADD COLUMN unique_random BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE iotauth_products ADD COLUMN issue_tat BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE iotauth_products ADD COLUMN breaker_tripped_at BIGINT",
            "CREATE TABLE IF NOT EXISTS iotauth_registration_refusals (
            product_key TEXT NOT NULL,
            at BIGINT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS iotauth_registration_refusals_by_product
            ON iotauth_registration_refusals (product_key, at)",
            "CREATE TABLE IF NOT EXISTS iotauth_registration_randoms (
            product_key TEXT NOT NULL,
            device_name TEXT NOT NULL,
            random TEXT NOT NULL,
            seq BIGINT NOT NULL,
            PRIMARY KEY (product_key, device_name, random))",
            "CREATE TABLE IF NOT EXISTS iotauth_settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL)",
            // Every store that reaches this version, from an earlier one or new, is sealed by
            // the first open with a key; once sealed, a value in clear is never sealed.
            "INSERT INTO iotauth_settings (name, value) VALUES ('seal', 'pending')",
        ],
    ),
    (
        4,
        &[
            "CREATE TABLE IF NOT EXISTS iotauth_events (
            seq BIGINT PRIMARY KEY,
            at BIGINT NOT NULL,
            product_key TEXT NOT NULL,
            device_name TEXT,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL)",
            // One row: the last event's number and hash. Appending updates it first, which
            // serializes appenders (PostgreSQL's row lock; SQLite's one writer), so numbers
            // are given without gaps and committed in order.
            "CREATE TABLE IF NOT EXISTS iotauth_event_head (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL)",
            "INSERT INTO iotauth_event_head (id, seq, hash) VALUES (1, 0, \
            '0000000000000000000000000000000000000000000000000000000000000000')",
        ],
    ),
];

/// The channel PostgreSQL stores notify of appended events (payload: the number of the last
/// event a transaction appended).
const EVENTS_CHANNEL: &str = "iotauth_events";

// `busy_timeout` first: switching to WAL takes the write lock, and a second process starting
// on the same fresh file must wait for it rather than fail with "database is locked". 1.5 s:
// below the 2 s a decision waits for the store (`http::STORE_TIMEOUT`), so that a lock held
// too long is reported as what it is (`busy`), not as a store that did not answer.
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 1500; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;";

/// Serializes migrations of one PostgreSQL database across nodes (a transaction-scoped
/// advisory lock; the key is arbitrary and fixed: the bytes of "iotauth", big-endian).
const PG_MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(29677418196595816)";

/// A store in SQLite or PostgreSQL, chosen by the URL.
///
/// Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    sqlite: bool,
    /// The SQLite file as it was opened; `None` for PostgreSQL and in-memory SQLite.
    file: Option<Arc<DatabaseFile>>,
    /// The master keys secrets are sealed under; `None`: in clear
    /// ([`SecretsAtRest::insecure_plaintext`]).
    keyring: Option<Arc<Keyring>>,
    /// Whether the registration limits take the time callers pass rather than the database's
    /// ([`SqlStore::with_caller_clock`]).
    caller_clock: bool,
    /// Who the events this handle writes name ([`SqlStore::with_actor`]).
    actor: Actor,
    /// A SQLite file store's device reads ([`SqliteReaders`]).
    #[cfg(feature = "sqlite")]
    readers: Option<Arc<SqliteReaders>>,
    /// PostgreSQL: the connection that listens for appended events, opened on first use.
    #[cfg(feature = "postgres")]
    listener: Option<Arc<EventListener>>,
}

/// PostgreSQL's notifications of appended events for [`EventLog::appended`]: a task started
/// on first use holds a `LISTEN` connection (reopened after a failure, every second) and
/// wakes the waiter; a lost connection wakes it too, since notifications may have been lost
/// meanwhile. Waiting is cancel-safe (a permit stays for the next wait).
#[cfg(feature = "postgres")]
struct EventListener {
    url: String,
    started: std::sync::Once,
    appended: tokio::sync::Notify,
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for EventListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the database password.
        f.write_str("EventListener")
    }
}

#[cfg(feature = "postgres")]
impl EventListener {
    async fn next(self: &Arc<Self>) -> bool {
        self.started.call_once(|| {
            tokio::spawn(Arc::clone(self).listen());
        });
        self.appended.notified().await;
        true
    }

    async fn listen(self: Arc<Self>) {
        loop {
            if let Ok(mut listener) = sqlx::postgres::PgListener::connect(&self.url).await
                && listener.listen(EVENTS_CHANNEL).await.is_ok()
            {
                // Events appended before the LISTEN took effect are read by the follower now.
                self.appended.notify_one();
                while let Ok(notification) = listener.try_recv().await {
                    // `None`: the connection was lost (and is reopened by the next call).
                    let _ = notification;
                    self.appended.notify_one();
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The store cannot be opened: the URL names no compiled-in database.
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported store URL scheme (expected sqlite:// or postgres://, with the matching feature; \
     iotauth::store::open also takes memory:)"
)]
struct UnsupportedUrl;

/// A SQLite database file, identified by its device and inode when it was opened. (The pool
/// keeps one connection, and so the file, open for the store's life, so that the inode is
/// never freed and given to another file at the path, which would pass for this one. The
/// store does not hold a descriptor of its own: closing any descriptor of a file drops every
/// POSIX lock the process holds on it, SQLite's included.)
///
/// Its `-wal` and `-shm` are identified too once the pool has opened the database: deleting
/// the `-wal` loses what it holds (every write since the last checkpoint), deleting the `-shm`
/// lets processes see different databases; SQLite removes them only when the last connection
/// closes, which the pool never does.
#[derive(Debug)]
struct DatabaseFile {
    path: PathBuf,
    identity: (u64, u64),
    companions: std::sync::OnceLock<Vec<(PathBuf, (u64, u64))>>,
}

/// The file a SQLite store opened was deleted or replaced: what the store wrote since would
/// be lost, and a restart would start from whatever is at the path now.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database file {path} (or its -wal or -shm) was deleted or replaced while open; \
     restart to open it again"
)]
struct FileReplaced {
    path: PathBuf,
}

/// Whether and under which keys a store's secrets are sealed ([`SqlStore::sealing_state`]).
struct SealingState {
    /// The key recorded when the store was first sealed, or by the last rekey.
    recorded: Option<String>,
    /// Whether the store still waits for its first sealing (`iotauth_settings.seal`).
    pending: bool,
    /// The key ids its sealed values carry.
    key_ids: Vec<String>,
}

impl SealingState {
    /// A store that waits for its first sealing, was never sealed and holds no sealed value:
    /// written in clear (by a version before sealing, or with --insecure-plaintext-secrets).
    /// A store without the mark is never sealed on open, so that values planted in clear by
    /// someone who removed what says the store is sealed read as corrupt.
    fn in_clear(&self) -> bool {
        self.pending && self.recorded.is_none() && self.key_ids.is_empty()
    }

    /// Refuses a keyring that does not open every key the store is sealed under, and a store
    /// in clear for a sealed store.
    fn check(&self, keyring: Option<&Keyring>) -> Result<(), StoreError> {
        let unknown = self
            .recorded
            .iter()
            .chain(&self.key_ids)
            .find(|id| keyring.is_none_or(|ring| !ring.has(id)));
        match unknown {
            Some(key_id) => Err(StoreError::failure(
                FailureKind::Configuration,
                seal::UnknownKey {
                    column: "secret",
                    key_id: key_id.clone(),
                },
            )),
            None => Ok(()),
        }
    }
}

/// The master keys given do not fit the store.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SecretsSetting(&'static str);

/// The master key beside a SQLite database: read, or created while no secret is sealed yet.
fn default_key(database: &Path, sealed_under: Option<&String>) -> Result<MasterKey, StoreError> {
    let path = SecretsAtRest::default_key_file(database);
    match MasterKey::read_file(&path) {
        Ok(key) => Ok(key),
        Err(seal::KeyFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && sealed_under.is_none() =>
        {
            let key = match MasterKey::create_file(&path) {
                Ok(key) => key,
                // Another process starting on the same new store created it first.
                Err(seal::KeyFileError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    return Ok(MasterKey::read_file(&path)?);
                }
                Err(e) => return Err(e.into()),
            };
            let shown = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            tracing::warn!(
                key_file = %shown.display(),
                key_id = %key.id(),
                "created a master key file: the store's secrets are sealed under it; back it \
                 up apart from the database (without it the secrets cannot be read), and \
                 beyond one machine keep it elsewhere and give it with --master-key-file"
            );
            Ok(key)
        }
        Err(seal::KeyFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(StoreError::failure(
                FailureKind::Configuration,
                MissingKeyFile {
                    path,
                    key_id: sealed_under.cloned().unwrap_or_default(),
                },
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// The store's secrets are sealed, and the default key file is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "the store's secrets are sealed under master key {key_id}, and there is no key file at \
     {path} (give its file with --master-key-file)"
)]
struct MissingKeyFile {
    path: PathBuf,
    key_id: String,
}

/// The database did not accept a connection in time.
#[derive(Debug, thiserror::Error)]
#[error("the database did not accept a connection within 10 s")]
struct FirstConnection;

/// The SQLite file exists but this process may not read and write it.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot create or open the database file {path} for reading and writing \
     (check that its directory exists, and the owner and mode of both)"
)]
struct FileAccess {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl DatabaseFile {
    fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
        (metadata.dev(), metadata.ino())
    }

    /// The file at `path`, created (empty, mode 0600: it will hold every secret) when missing.
    /// SQLite gives its `-wal` and `-shm` files the database file's mode.
    fn open_or_create(path: &Path) -> Result<Self, StoreError> {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(_) => {}
            // Another process created it first; either way it exists.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::failure(
                    FailureKind::of_io(&source),
                    FileAccess {
                        path: path.to_owned(),
                        source,
                    },
                ));
            }
        }
        // Read and write access, checked here so that a refusal names its cause: SQLite
        // would silently open a file it may only read read-only, or say "unable to open".
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| {
                StoreError::failure(
                    FailureKind::of_io(&source),
                    FileAccess {
                        path: path.to_owned(),
                        source,
                    },
                )
            })?;
        let metadata = file.metadata().map_err(StoreError::unavailable)?;
        withdraw_world_access(&file, &metadata);
        // The same for the -wal and -shm a process of another user may have left (SQLite
        // would retry them until its pool's timeout, and say only that).
        for companion in Self::companion_paths(path) {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&companion);
            match opened {
                Ok(companion) => {
                    if let Ok(metadata) = companion.metadata() {
                        withdraw_world_access(&companion, &metadata);
                    }
                }
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::failure(
                        FailureKind::of_io(&source),
                        FileAccess {
                            path: companion,
                            source,
                        },
                    ));
                }
                _ => {}
            }
        }
        Ok(Self {
            path: path.to_owned(),
            identity: Self::identity(&metadata),
            companions: std::sync::OnceLock::new(),
        })
    }

    /// The `-wal` and `-shm` paths of the database at `path`.
    fn companion_paths(path: &Path) -> [PathBuf; 2] {
        ["-wal", "-shm"].map(|suffix| {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            PathBuf::from(companion)
        })
    }

    /// Identifies the `-wal` and `-shm` as they are now (once the pool holds the database).
    fn record_companions(&self) {
        let companions = Self::companion_paths(&self.path)
            .into_iter()
            .filter_map(|path| {
                let identity = Self::identity(&std::fs::metadata(&path).ok()?);
                Some((path, identity))
            })
            .collect();
        let _ = self.companions.set(companions);
    }

    /// Whether the path, and the `-wal` and `-shm` beside it, still name the files opened.
    ///
    /// # Errors
    /// [`FailureKind::Replaced`] when one was deleted or another file took its place.
    fn check(&self) -> Result<(), StoreError> {
        let companions = self.companions.get().map_or(&[][..], Vec::as_slice);
        let files = [(&self.path, self.identity)]
            .into_iter()
            .chain(companions.iter().map(|(path, identity)| (path, *identity)));
        for (path, identity) in files {
            match std::fs::metadata(path) {
                Ok(metadata) if Self::identity(&metadata) == identity => {}
                Ok(_) => return Err(self.replaced()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.replaced());
                }
                Err(e) => return Err(StoreError::unavailable(e)),
            }
        }
        Ok(())
    }

    fn replaced(&self) -> StoreError {
        StoreError::failure(
            FailureKind::Replaced,
            FileReplaced {
                path: self.path.clone(),
            },
        )
    }
}

/// Takes read and write access away from other users (not the group, which an operator may
/// have given to a broker's user on purpose): every secret is in the file, and earlier
/// versions of this crate created it 0644. Best effort: a file this user does not own keeps its
/// mode.
fn withdraw_world_access(file: &std::fs::File, metadata: &std::fs::Metadata) {
    let mode = metadata.permissions().mode();
    if mode & 0o007 != 0 {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(mode & !0o007));
    }
}

/// The file path of a `sqlite:` URL, read as sqlx reads it (percent-decoded), unless it is an
/// in-memory database.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return None;
    }
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    Some(PathBuf::from(&*path))
}

impl SqlStore {
    /// Opens the database at `url` with the default [`SecretsAtRest`] (see
    /// [`SqlStore::connect_with`]).
    ///
    /// # Errors
    /// As [`SqlStore::connect_with`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &SecretsAtRest::default()).await
    }

    /// Opens the database at `url`, brings its schema up to date, and seals its secrets as
    /// `secrets` says.
    ///
    /// * `sqlite://PATH` (feature `sqlite`): the file is created, with mode 0600, if missing.
    /// * `postgres://USER:PASSWORD@HOST:PORT/DB` (feature `postgres`).
    ///
    /// Any number of processes may open (and so migrate) one database at once: migrations run
    /// under the database's write lock (SQLite) or an advisory lock (PostgreSQL).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], of the [`FailureKind`] that says why: the URL is not
    /// supported ([`FailureKind::Configuration`]), the file may not be read and written
    /// ([`FailureKind::Permission`]), the database cannot be reached or migrated; a master
    /// key that cannot be read, or that is not the one the store's secrets are sealed under
    /// ([`FailureKind::Configuration`]).
    ///
    /// # Secrets at rest
    /// With a master key, every secret is sealed (see [`MasterKey`]); secrets a store holds in
    /// clear (written by an earlier version) are sealed when it opens. Without one: a SQLite
    /// file seals under `PATH.key` beside it, created (mode 0600, with a `warn` log line) while
    /// the store holds no sealed secret; in-memory SQLite under a key of this process; a
    /// PostgreSQL store is refused unless [`SecretsAtRest::insecure_plaintext`].
    pub async fn connect_with(url: &str, secrets: &SecretsAtRest) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        if !(sqlite && cfg!(feature = "sqlite") || postgres && cfg!(feature = "postgres")) {
            return Err(StoreError::failure(
                FailureKind::Configuration,
                UnsupportedUrl,
            ));
        }
        let file = match sqlite_path(url) {
            Some(path) if sqlite => Some(Arc::new(DatabaseFile::open_or_create(&path)?)),
            _ => None,
        };
        // The file exists now: SQLite must open it, and never create another one at the path
        // after a deletion (`mode=rw`). An in-memory database is created (`mode=rwc`).
        let url = match (&file, url.contains('?')) {
            (Some(_), false) => format!("{url}?mode=rw"),
            (None, false) if sqlite => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(failure)?;
        // One connection first, outside the pool: the pool retries a connection that fails
        // (a refused one, or one whose set-up fails) until its timeout and then says only
        // that; this one's error keeps its cause.
        let mut first = tokio::time::timeout(Duration::from_secs(10), options.connect())
            .await
            .map_err(|_| StoreError::unavailable(FirstConnection))?
            .map_err(failure)?;
        if sqlite {
            first.execute(SQLITE_PRAGMAS).await.map_err(failure)?;
        }
        first.close().await.map_err(failure)?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10));
        if file.is_some() {
            // One connection, never retired, keeps the database file open (see DatabaseFile).
            pool = pool
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(failure)?;
        let mut store = Self {
            pool,
            sqlite,
            file,
            keyring: None,
            caller_clock: false,
            actor: Actor::library(),
            #[cfg(feature = "sqlite")]
            readers: None,
            #[cfg(feature = "postgres")]
            listener: (!sqlite).then(|| {
                Arc::new(EventListener {
                    url: url.clone(),
                    started: std::sync::Once::new(),
                    appended: tokio::sync::Notify::new(),
                })
            }),
        };
        store.migrate().await?;
        if let Some(file) = &store.file {
            file.record_companions();
            #[cfg(feature = "sqlite")]
            {
                store.readers = Some(Arc::new(SqliteReaders::open(&file.path)?));
                // The readers opened the file at the path: the one the pool holds, unless it
                // was replaced meanwhile.
                file.check()?;
            }
        }
        store.keyring = store.keyring_for(secrets).await?.map(Arc::new);
        Ok(store)
    }

    /// The keyring `secrets` gives this store, checked against the keys its secrets are
    /// sealed under; a store in clear is sealed here, once (see [`SqlStore::connect_with`]).
    async fn keyring_for(&self, secrets: &SecretsAtRest) -> Result<Option<Keyring>, StoreError> {
        let configuration = |message: &'static str| {
            StoreError::failure(FailureKind::Configuration, SecretsSetting(message))
        };
        if secrets.insecure_plaintext
            && (secrets.master_key_file.is_some() || !secrets.previous_key_files.is_empty())
        {
            return Err(configuration(
                "master key files and insecure plaintext secrets were both asked for",
            ));
        }
        let state = self.sealing_state().await?;
        let keyring = match (secrets.master_key_file.is_some(), &self.file) {
            _ if secrets.insecure_plaintext => {
                tracing::warn!(
                    "secrets are kept in clear (--insecure-plaintext-secrets): a copy of the \
                     database is every device's credentials"
                );
                None
            }
            (true, _) => seal::given_keyring(secrets)?,
            (false, Some(file)) => Some(Keyring::new(
                default_key(
                    &file.path,
                    state.recorded.as_ref().or(state.key_ids.first()),
                )?,
                seal::previous_keys(secrets)?,
            )),
            // In-memory SQLite: nothing outlives the process, nor need its key.
            (false, None) if self.sqlite => Some(Keyring::new(MasterKey::generate()?, Vec::new())),
            (false, None) => {
                return Err(configuration(
                    "a PostgreSQL store needs a master key file shared by its nodes \
                     (--master-key-file, IOTAUTH_MASTER_KEY_FILE), or \
                     --insecure-plaintext-secrets to keep secrets in clear",
                ));
            }
        };
        state.check(keyring.as_ref())?;
        if let Some(keyring) = &keyring
            && state.in_clear()
        {
            self.seal_store_in_clear(keyring).await?;
        }
        Ok(keyring)
    }

    /// Whether and under which keys the store's secrets are sealed: the key recorded when it
    /// was first sealed (`iotauth_settings.sealed_under`), and the key ids its values carry
    /// (a scan of both tables).
    async fn sealing_state(&self) -> Result<SealingState, StoreError> {
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT value FROM iotauth_settings WHERE name = 'sealed_under'")
                .fetch_optional(&self.pool)
                .await
                .map_err(failure)?;
        let pending: Option<String> =
            sqlx::query_scalar("SELECT value FROM iotauth_settings WHERE name = 'seal'")
                .fetch_optional(&self.pool)
                .await
                .map_err(failure)?;
        let key_ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT SUBSTR(device_secret, 9, 8) FROM iotauth_devices \
             WHERE LENGTH(device_secret) > 64 \
             UNION SELECT DISTINCT SUBSTR(product_secret, 9, 8) FROM iotauth_products \
             WHERE LENGTH(product_secret) > 64",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(failure)?;
        Ok(SealingState {
            recorded,
            pending: pending.is_some(),
            key_ids,
        })
    }

    /// Seals every secret of a store in clear (written by a version before sealing, or with
    /// --insecure-plaintext-secrets), records the key, and says how many it sealed. Under the
    /// write lock (SQLite) or the migration lock (PostgreSQL), and only while the store is
    /// still in clear: of processes opening it at once, one seals, and the others find it
    /// sealed (and refuse a key other than the one recorded).
    async fn seal_store_in_clear(&self, keyring: &Keyring) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT value FROM iotauth_settings WHERE name = 'sealed_under'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(failure)?;
        if let Some(recorded) = recorded {
            // Another process sealed it meanwhile.
            return SealingState {
                recorded: Some(recorded),
                pending: false,
                key_ids: Vec::new(),
            }
            .check(Some(keyring));
        }
        let mut sealed = 0;
        for field in [SecretField::ProductSecret, SecretField::DeviceSecret] {
            let (select, update) = match field {
                SecretField::ProductSecret => (
                    "SELECT product_key, '' AS device_name, product_secret AS secret \
                     FROM iotauth_products WHERE LENGTH(product_secret) <= 64",
                    "UPDATE iotauth_products SET product_secret = $1 \
                     WHERE product_key = $2 AND product_secret = $3",
                ),
                SecretField::DeviceSecret => (
                    "SELECT product_key, device_name, device_secret AS secret \
                     FROM iotauth_devices WHERE LENGTH(device_secret) <= 64",
                    "UPDATE iotauth_devices SET device_secret = $1 \
                     WHERE product_key = $2 AND device_name = $4 AND device_secret = $3",
                ),
            };
            let rows = sqlx::query(select)
                .fetch_all(&mut *tx)
                .await
                .map_err(failure)?;
            for row in &rows {
                let pk: String = column(row, "product_key")?;
                let dn: String = column(row, "device_name")?;
                let stored: String = column(row, "secret")?;
                let mut query = sqlx::query(update)
                    .bind(keyring.seal(field, (&pk, &dn), &stored)?)
                    .bind(&pk)
                    .bind(&stored);
                if field == SecretField::DeviceSecret {
                    query = query.bind(&dn);
                }
                sealed += query
                    .execute(&mut *tx)
                    .await
                    .map_err(failure)?
                    .rows_affected();
            }
        }
        sqlx::query("INSERT INTO iotauth_settings (name, value) VALUES ('sealed_under', $1)")
            .bind(keyring.sealing_key_id().to_string())
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        sqlx::query("DELETE FROM iotauth_settings WHERE name = 'seal'")
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        tx.commit().await.map_err(failure)?;
        if sealed > 0 {
            tracing::warn!(
                secrets = sealed,
                key_id = %keyring.sealing_key_id(),
                "sealed the secrets of a store that kept them in clear"
            );
        }
        Ok(())
    }

    /// The store with its events written by `actor` (instead of [`Actor::library`]).
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// Appends the event of a change made in `tx`, in the same transaction
    /// ([`SqlStore::append_events`]).
    async fn append_event(
        &self,
        tx: &mut sqlx::AnyConnection,
        new: NewEvent,
    ) -> Result<(), StoreError> {
        self.append_events(tx, vec![new]).await
    }

    /// Appends the events of a change made in `tx`, in the same transaction and in order: the
    /// head row is moved on by their count first (serializing appenders), then the events are
    /// chained here and inserted [`ROWS_PER_INSERT`] to a statement; PostgreSQL notifies
    /// followers on commit.
    async fn append_events(
        &self,
        tx: &mut sqlx::AnyConnection,
        news: Vec<NewEvent>,
    ) -> Result<(), StoreError> {
        let Some(count) = i64::try_from(news.len()).ok().filter(|&count| count > 0) else {
            return Ok(());
        };
        let head = sqlx::query("UPDATE iotauth_event_head SET seq = seq + $1 RETURNING seq, hash")
            .bind(count)
            .fetch_one(&mut *tx)
            .await
            .map_err(failure)?;
        let last_seq: i64 = column(&head, "seq")?;
        let corrupt = |column| StoreError::failure(FailureKind::Corrupt, Corrupt { column });
        let mut prev_hash =
            ChainHash::from_hex(&column::<String>(&head, "hash")?).map_err(|_| corrupt("hash"))?;
        let mut prev_seq = u64::try_from(last_seq - count).map_err(|_| corrupt("seq"))?;
        let at = SystemClock.now();
        let mut events = Vec::with_capacity(news.len());
        for new in news {
            let event = EventRecord::chain(prev_seq, prev_hash, at, &self.actor, new);
            (prev_seq, prev_hash) = (event.seq, event.hash);
            events.push(event);
        }
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let mut query = String::from(
                "INSERT INTO iotauth_events \
                 (seq, at, product_key, device_name, kind, actor, prev_hash, hash) VALUES ",
            );
            push_placeholders(&mut query, chunk.len(), 8);
            // Only numbered placeholders are spliced in; every value is bound.
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(query));
            for event in chunk {
                insert = insert
                    .bind(i64::try_from(event.seq).map_err(|_| corrupt("seq"))?)
                    .bind(millis_value(event.at)?)
                    .bind(event.product_key.as_str())
                    .bind(event.device_name.as_ref().map(DeviceName::as_str))
                    .bind(event.kind.name())
                    .bind(event.actor.as_str())
                    .bind(event.prev_hash.to_hex())
                    .bind(event.hash.to_hex());
            }
            insert.execute(&mut *tx).await.map_err(failure)?;
        }
        sqlx::query("UPDATE iotauth_event_head SET hash = $1")
            .bind(prev_hash.to_hex())
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        if !self.sqlite {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(last_seq.to_string())
                .execute(&mut *tx)
                .await
                .map_err(failure)?;
        }
        Ok(())
    }

    /// A transaction that holds the database's write lock from its start (SQLite's `BEGIN
    /// IMMEDIATE`; PostgreSQL's migration lock), so that reading and then writing cannot
    /// interleave with another process doing the same.
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'_, sqlx::Any>, StoreError> {
        self.check_file()?;
        if self.sqlite {
            return self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(failure);
        }
        let mut tx = self.pool.begin().await.map_err(failure)?;
        tx.execute(PG_MIGRATION_LOCK).await.map_err(failure)?;
        Ok(tx)
    }

    /// Re-seals under the sealing key every secret sealed under another key (a previous one):
    /// `iotauth store rekey`. Online: in batches of 500 rows, each one write transaction, each
    /// row rewritten only if it still holds the value read; then records the sealing key as
    /// the store's. Returns how many secrets were re-sealed. A value in clear in a sealed
    /// store is not sealed (it is not this crate's: it reads as corrupt).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`FailureKind::Configuration`] for a store in clear, or
    /// when secrets remain under other keys after a pass that changed nothing (another process
    /// sealing under an older key).
    pub async fn rekey(&self) -> Result<u64, StoreError> {
        let Some(keyring) = self.keyring.as_deref() else {
            return Err(StoreError::failure(
                FailureKind::Configuration,
                SecretsSetting("a store in clear has no key to re-seal under"),
            ));
        };
        let key_id = keyring.sealing_key_id().to_string();
        let mut resealed = 0;
        for field in [SecretField::ProductSecret, SecretField::DeviceSecret] {
            let (select, update) = match field {
                SecretField::ProductSecret => (
                    "SELECT product_key, '' AS device_name, product_secret AS secret \
                     FROM iotauth_products \
                     WHERE LENGTH(product_secret) > 64 AND SUBSTR(product_secret, 9, 8) <> $1 \
                     LIMIT 500",
                    "UPDATE iotauth_products SET product_secret = $1 \
                     WHERE product_key = $2 AND product_secret = $3",
                ),
                SecretField::DeviceSecret => (
                    "SELECT product_key, device_name, device_secret AS secret \
                     FROM iotauth_devices \
                     WHERE LENGTH(device_secret) > 64 AND SUBSTR(device_secret, 9, 8) <> $1 \
                     LIMIT 500",
                    "UPDATE iotauth_devices SET device_secret = $1 \
                     WHERE product_key = $2 AND device_name = $4 AND device_secret = $3",
                ),
            };
            loop {
                let mut tx = self.write_transaction().await?;
                let rows = sqlx::query(select)
                    .bind(&key_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(failure)?;
                let mut changed = 0;
                for row in &rows {
                    let pk: String = column(row, "product_key")?;
                    let dn: String = column(row, "device_name")?;
                    let stored: String = column(row, "secret")?;
                    let identity = (pk.as_str(), dn.as_str());
                    let sealed = keyring.open(field, identity, &stored, |secret| {
                        keyring.seal(field, identity, secret)
                    })?;
                    let mut query = sqlx::query(update).bind(sealed).bind(&pk).bind(&stored);
                    if field == SecretField::DeviceSecret {
                        query = query.bind(&dn);
                    }
                    changed += query
                        .execute(&mut *tx)
                        .await
                        .map_err(failure)?
                        .rows_affected();
                }
                tx.commit().await.map_err(failure)?;
                resealed += changed;
                if rows.is_empty() {
                    break;
                }
                if changed == 0 {
                    return Err(StoreError::failure(
                        FailureKind::Configuration,
                        SecretsSetting(
                            "secrets keep being written under another key while re-sealing: \
                             give every process the new key first",
                        ),
                    ));
                }
            }
        }
        let mut tx = self.write_transaction().await?;
        sqlx::query("DELETE FROM iotauth_settings WHERE name = 'sealed_under'")
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        sqlx::query("INSERT INTO iotauth_settings (name, value) VALUES ('sealed_under', $1)")
            .bind(&key_id)
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        tx.commit().await.map_err(failure)?;
        Ok(resealed)
    }

    /// The registration limits ([`ProductStore::take_registration_token`],
    /// [`ProductStore::record_registration_refusal`]) take the `now` their callers pass
    /// instead of the database's clock: for tests of time windows, and one process alone. By
    /// default every process on the store reads one clock, the database's, so that a node
    /// whose clock is wrong can neither starve the others nor let anyone past the limits.
    #[must_use]
    pub fn with_caller_clock(mut self) -> Self {
        self.caller_clock = true;
        self
    }

    /// Now for the registration limits: the database's clock, or `caller`'s
    /// ([`SqlStore::with_caller_clock`]).
    async fn limits_now(&self, caller: UnixMillis) -> Result<UnixMillis, StoreError> {
        if self.caller_clock {
            return Ok(caller);
        }
        let sql = if self.sqlite {
            "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)"
        } else {
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        };
        let millis: i64 = sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .map_err(failure)?;
        u64::try_from(millis)
            .map(UnixMillis)
            .map_err(|_| StoreError::failure(FailureKind::Corrupt, Corrupt { column: "now" }))
    }

    /// The key file a store at `url` seals under by default: `PATH.key` for `sqlite://PATH`;
    /// `None` for other URLs (and in-memory SQLite).
    pub fn default_key_file(url: &str) -> Option<PathBuf> {
        Self::sqlite_file(url).map(|path| SecretsAtRest::default_key_file(&path))
    }

    /// The database file of a `sqlite://PATH` URL, as sqlx reads it (percent-decoded); `None`
    /// for other URLs and in-memory SQLite.
    pub fn sqlite_file(url: &str) -> Option<PathBuf> {
        sqlite_path(url)
    }

    /// The id of the key new secrets are sealed under; `None` for a store in clear.
    pub fn sealing_key_id(&self) -> Option<seal::KeyId> {
        self.keyring.as_deref().map(Keyring::sealing_key_id)
    }

    /// A secret as it is written: sealed, or in clear without a keyring.
    fn stored_secret(
        &self,
        field: SecretField,
        identity: (&str, &str),
        secret: &str,
    ) -> Result<String, StoreError> {
        match self.keyring.as_deref() {
            Some(keyring) => keyring.seal(field, identity, secret),
            None => Ok(secret.to_owned()),
        }
    }

    fn stored_device_secret(&self, device: &DeviceRecord) -> Result<String, StoreError> {
        self.stored_secret(
            SecretField::DeviceSecret,
            (device.product_key.as_str(), device.device_name.as_str()),
            device.device_secret.expose_secret(),
        )
    }

    /// A secret as it is read: opened, and parsed by `parse`.
    fn read_secret<T>(
        &self,
        field: SecretField,
        identity: (&str, &str),
        stored: &str,
        parse: fn(&str) -> Result<T, crate::ParseError>,
    ) -> Result<T, StoreError> {
        let column = field.column();
        match self.keyring.as_deref() {
            Some(keyring) => keyring.open(field, identity, stored, |text| {
                parse(text).map_err(corrupt(column))
            }),
            None => match seal::sealed_parts(stored) {
                Some((key_id, _)) => Err(StoreError::failure(
                    FailureKind::Configuration,
                    seal::UnknownKey {
                        column,
                        key_id: key_id.to_owned(),
                    },
                )),
                None => parse(stored).map_err(corrupt(column)),
            },
        }
    }

    /// Applies the embedded migrations that this database has not seen yet, in one
    /// transaction under a lock, so that concurrent first starts apply each version once.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`FailureKind::Configuration`] when the database was
    /// migrated by a newer version of this crate.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = if self.sqlite {
            // Takes SQLite's write lock at once (waiting up to the busy timeout), instead of
            // upgrading a read lock later, which fails at once if another writer came first.
            self.pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(failure)?
        } else {
            let mut tx = self.pool.begin().await.map_err(failure)?;
            tx.execute(PG_MIGRATION_LOCK).await.map_err(failure)?;
            tx
        };
        tx.execute("CREATE TABLE IF NOT EXISTS iotauth_schema (version BIGINT PRIMARY KEY)")
            .await
            .map_err(failure)?;
        for (version, statements) in MIGRATIONS {
            let applied = sqlx::query("SELECT version FROM iotauth_schema WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(failure)?;
            if applied.is_some() {
                continue;
            }
            sqlx::query("INSERT INTO iotauth_schema (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(failure)?;
            for statement in *statements {
                tx.execute(*statement).await.map_err(failure)?;
            }
        }
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM iotauth_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(failure)?;
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if newest.is_some_and(|newest| newest > known) {
            return Err(StoreError::failure(
                FailureKind::Configuration,
                NewerSchema { known },
            ));
        }
        tx.commit().await.map_err(failure)
    }

    /// Refuses to write into a SQLite file that is no longer the one at its path.
    fn check_file(&self) -> Result<(), StoreError> {
        self.file.as_deref().map_or(Ok(()), DatabaseFile::check)
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The [`StoreError`] of a database error, of the kind its code says: SQLite's (extended)
/// result code, PostgreSQL's SQLSTATE, or the I/O error's kind.
fn failure(e: sqlx::Error) -> StoreError {
    let kind = match &e {
        sqlx::Error::Database(db) => database_failure_kind(db.as_ref()),
        sqlx::Error::Io(io) => FailureKind::of_io(io),
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => FailureKind::Configuration,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => FailureKind::Corrupt,
        _ => FailureKind::Unavailable,
    };
    StoreError::failure(kind, e)
}

fn database_failure_kind(db: &dyn sqlx::error::DatabaseError) -> FailureKind {
    #[cfg(feature = "sqlite")]
    if let Some(db) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        let code = sqlx::error::DatabaseError::code(db);
        return sqlite_failure_kind(code.and_then(|c| c.parse().ok()).unwrap_or(0));
    }
    #[cfg(feature = "postgres")]
    if let Some(db) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return postgres_failure_kind(db.code());
    }
    let _ = db;
    FailureKind::Unavailable
}

/// SQLite's result codes (<https://www.sqlite.org/rescode.html>).
#[cfg(feature = "sqlite")]
fn sqlite_failure_kind(extended: i32) -> FailureKind {
    const SQLITE_READONLY_DBMOVED: i32 = 8 | (4 << 8);
    match (extended, extended & 0xff) {
        (SQLITE_READONLY_DBMOVED, _) => FailureKind::Replaced,
        // SQLITE_PERM, SQLITE_AUTH
        (_, 3 | 23) => FailureKind::Permission,
        // SQLITE_BUSY, SQLITE_LOCKED
        (_, 5 | 6) => FailureKind::Busy,
        // SQLITE_READONLY
        (_, 8) => FailureKind::ReadOnly,
        // SQLITE_FULL
        (_, 13) => FailureKind::Full,
        // SQLITE_CORRUPT, SQLITE_NOTADB
        (_, 11 | 26) => FailureKind::Corrupt,
        // SQLITE_CANTOPEN: a missing directory, or a path that is not a file
        (_, 14) => FailureKind::Configuration,
        _ => FailureKind::Unavailable,
    }
}

/// PostgreSQL's SQLSTATE codes (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
#[cfg(feature = "postgres")]
fn postgres_failure_kind(sqlstate: &str) -> FailureKind {
    match sqlstate {
        // insufficient_privilege
        "42501" => FailureKind::Permission,
        // invalid_authorization_specification, invalid_password, invalid_catalog_name
        // (no such database), undefined_table (a schema someone dropped)
        "28000" | "28P01" | "3D000" | "42P01" => FailureKind::Configuration,
        // read_only_sql_transaction (a standby)
        "25006" => FailureKind::ReadOnly,
        // disk_full
        "53100" => FailureKind::Full,
        // lock_not_available, serialization_failure, deadlock_detected
        "55P03" | "40001" | "40P01" => FailureKind::Busy,
        // data_corrupted, index_corrupted
        "XX001" | "XX002" => FailureKind::Corrupt,
        _ => FailureKind::Unavailable,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// The database was migrated by a newer version of this crate, whose rules this one does not
/// know (it might, say, leave revoked tokens valid).
#[derive(Debug, thiserror::Error)]
#[error("the store's schema is newer than this program knows (version {known}): upgrade it")]
struct NewerSchema {
    known: i64,
}

/// Stored data this crate would never write: reported as an outage, since no verdict can be
/// made on it.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored {column}")]
struct Corrupt {
    column: &'static str,
}

fn column<T>(row: &AnyRow, name: &'static str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name).map_err(failure)
}

fn corrupt(column: &'static str) -> impl Fn(crate::ParseError) -> StoreError {
    move |_| StoreError::failure(FailureKind::Corrupt, Corrupt { column })
}

/// A device's status from its `state` and `enabled` columns.
fn status_from_columns(state: &str, enabled: i64) -> Result<DeviceStatus, StoreError> {
    Ok(DeviceStatus {
        state: DeviceState::from_name(state).ok_or(StoreError::failure(
            FailureKind::Corrupt,
            Corrupt { column: "state" },
        ))?,
        enabled: flag(enabled, "enabled")?,
    })
}

fn flag(value: i64, column: &'static str) -> Result<bool, StoreError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StoreError::failure(
            FailureKind::Corrupt,
            Corrupt { column },
        )),
    }
}

fn switch_value(switch: DynamicRegistration) -> i64 {
    i64::from(switch == DynamicRegistration::On)
}

impl SqlStore {
    fn product_from_row(&self, row: &AnyRow) -> Result<ProductRecord, StoreError> {
        let pk: String = column(row, "product_key")?;
        let secret: String = column(row, "product_secret")?;
        let on = flag(column(row, "dynamic_registration")?, "dynamic_registration")?;
        Ok(ProductRecord {
            product_key: ProductKey::new(&pk).map_err(corrupt("product_key"))?,
            product_secret: self.read_secret(
                SecretField::ProductSecret,
                (&pk, ""),
                &secret,
                ProductSecret::new,
            )?,
            dynamic_registration: if on {
                DynamicRegistration::On
            } else {
                DynamicRegistration::Off
            },
            name: column(row, "name")?,
            pre_registration_free: PreRegistrationFree {
                on: flag(
                    column(row, "pre_registration_free")?,
                    "pre_registration_free",
                )?,
                device_quota: number(row, "device_quota")?,
            },
            registration_limit: registration_limit(row)?,
            switched_off_by_breaker_at: column::<Option<i64>>(row, "breaker_tripped_at")?
                .map(|at| {
                    u64::try_from(at).map(UnixMillis).map_err(|_| {
                        StoreError::failure(
                            FailureKind::Corrupt,
                            Corrupt {
                                column: "breaker_tripped_at",
                            },
                        )
                    })
                })
                .transpose()?,
        })
    }

    fn device_from_row(&self, row: &AnyRow) -> Result<DeviceRecord, StoreError> {
        self.device_from_columns(DeviceColumns {
            product_key: column(row, "product_key")?,
            device_name: column(row, "device_name")?,
            device_secret: column(row, "device_secret")?,
            state: column(row, "state")?,
            enabled: column(row, "enabled")?,
            revision: column(row, "revision")?,
            client_ids: column(row, "client_ids")?,
        })
    }

    fn device_from_columns(&self, row: DeviceColumns) -> Result<DeviceRecord, StoreError> {
        let DeviceColumns {
            product_key: pk,
            device_name: dn,
            device_secret: secret,
            state,
            enabled,
            revision,
            client_ids,
        } = row;
        Ok(DeviceRecord {
            product_key: ProductKey::new(&pk).map_err(corrupt("product_key"))?,
            device_name: DeviceName::new(&dn).map_err(corrupt("device_name"))?,
            device_secret: self.read_secret(
                SecretField::DeviceSecret,
                (&pk, &dn),
                &secret,
                DeviceSecret::new,
            )?,
            status: status_from_columns(&state, enabled)?,
            revision: u64::try_from(revision).map_err(|_| {
                StoreError::failure(FailureKind::Corrupt, Corrupt { column: "revision" })
            })?,
            client_ids: client_ids_from_column(&client_ids)?,
        })
    }
}

/// The column lists, as macros so that every statement is a `&'static str`.
macro_rules! product_columns {
    () => {
        "product_key, product_secret, dynamic_registration, name, pre_registration_free, device_quota, \
         registration_rate, registration_burst, refusal_threshold, refusal_window_secs, \
         unique_random, breaker_tripped_at"
    };
}
macro_rules! device_columns {
    () => {
        "product_key, device_name, device_secret, state, enabled, revision, client_ids"
    };
}

/// A device row's columns as read, in [`device_columns!`]'s order.
struct DeviceColumns {
    product_key: String,
    device_name: String,
    device_secret: String,
    state: String,
    enabled: i64,
    revision: i64,
    client_ids: String,
}

/// Connections of rusqlite's to a SQLite file store that serve device reads in the caller's
/// thread: a point read by primary key with a cached prepared statement takes microseconds,
/// less than handing it to sqlx's worker thread and back. WAL readers do not wait for the
/// writer, so a read blocks its thread no longer than the read itself. `query_only`: they
/// never write.
#[cfg(feature = "sqlite")]
struct SqliteReaders {
    connections: Vec<std::sync::Mutex<rusqlite::Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

#[cfg(feature = "sqlite")]
impl std::fmt::Debug for SqliteReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteReaders({})", self.connections.len())
    }
}

#[cfg(feature = "sqlite")]
impl SqliteReaders {
    /// As many connections as the pool's writers (4): enough for the runtime's threads.
    const CONNECTIONS: usize = 4;

    fn open(path: &Path) -> Result<Self, StoreError> {
        use rusqlite::OpenFlags;
        let connections = (0..Self::CONNECTIONS)
            .map(|_| {
                let connection = rusqlite::Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                connection.execute_batch("PRAGMA busy_timeout = 1500; PRAGMA query_only = 1;")?;
                Ok(std::sync::Mutex::new(connection))
            })
            .collect::<Result<_, rusqlite::Error>>()
            .map_err(reader_failure)?;
        Ok(Self {
            connections,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Runs `read` on a free connection (the next one in turn when all are busy).
    fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let count = self.connections.len();
        let free = (0..count)
            .map(|i| &self.connections[(start + i) % count])
            .find_map(|connection| connection.try_lock().ok());
        let connection = match free {
            Some(connection) => connection,
            // A panic during a read leaves the connection as usable as before it.
            None => self.connections[start % count]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        };
        read(&connection).map_err(reader_failure)
    }

    fn device(
        &self,
        product_key: &str,
        device_name: &str,
    ) -> Result<Option<DeviceColumns>, StoreError> {
        use rusqlite::OptionalExtension;
        self.read(|connection| {
            connection
                .prepare_cached(concat!(
                    "SELECT ",
                    device_columns!(),
                    " FROM iotauth_devices WHERE product_key = ?1 AND device_name = ?2"
                ))?
                .query_row([product_key, device_name], |row| {
                    Ok(DeviceColumns {
                        product_key: row.get(0)?,
                        device_name: row.get(1)?,
                        device_secret: row.get(2)?,
                        state: row.get(3)?,
                        enabled: row.get(4)?,
                        revision: row.get(5)?,
                        client_ids: row.get(6)?,
                    })
                })
                .optional()
        })
    }
}

/// The [`StoreError`] of a rusqlite error: SQLite's result code's kind, or corrupt for a value
/// of another type than the column's.
#[cfg(feature = "sqlite")]
fn reader_failure(e: rusqlite::Error) -> StoreError {
    let kind = match &e {
        rusqlite::Error::SqliteFailure(error, _) => sqlite_failure_kind(error.extended_code),
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) => {
            FailureKind::Corrupt
        }
        _ => FailureKind::Unavailable,
    };
    StoreError::failure(kind, e)
}

/// `client_ids` as stored (see the module's schema).
fn encode_client_id(record: &ClientIdRecord) -> String {
    format!("{}:{}", record.client_id, record.token_digest.to_hex())
}

fn client_ids_from_column(text: &str) -> Result<Vec<ClientIdRecord>, StoreError> {
    let corrupt = || {
        StoreError::failure(
            FailureKind::Corrupt,
            Corrupt {
                column: "client_ids",
            },
        )
    };
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let records = text
        .split(',')
        .map(|entry| {
            let (client_id, digest) = entry.split_once(':').ok_or_else(corrupt)?;
            Ok(ClientIdRecord {
                client_id: IssuedClientId::new(client_id).map_err(|_| corrupt())?,
                token_digest: TokenDigest::from_hex(digest).map_err(|_| corrupt())?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if records.len() > IssuedClientId::MAX_PER_DEVICE {
        return Err(corrupt());
    }
    Ok(records)
}

/// A product's registration limits as stored, checked as [`RegistrationLimit`]'s builders
/// check them.
fn registration_limit(row: &AnyRow) -> Result<RegistrationLimit, StoreError> {
    let (rate, burst) = (
        number(row, "registration_rate")?,
        number(row, "registration_burst")?,
    );
    let (threshold, window) = (
        number(row, "refusal_threshold")?,
        number(row, "refusal_window_secs")?,
    );
    let unique_random = flag(column(row, "unique_random")?, "unique_random")?;
    RegistrationLimit::DEFAULT
        .with_rate(rate, burst)
        .and_then(|limit| limit.with_refusals(threshold, window))
        .map(|limit| limit.with_unique_random(unique_random))
        .map_err(|_| {
            StoreError::failure(
                FailureKind::Corrupt,
                Corrupt {
                    column: "registration_rate",
                },
            )
        })
}

/// A `u32` column.
fn number(row: &AnyRow, name: &'static str) -> Result<u32, StoreError> {
    u32::try_from(column::<i64>(row, name)?)
        .map_err(|_| StoreError::failure(FailureKind::Corrupt, Corrupt { column: name }))
}

/// A time as stored: Unix milliseconds.
fn millis_value(at: UnixMillis) -> Result<i64, StoreError> {
    i64::try_from(at.0).map_err(|_| {
        StoreError::failure(
            FailureKind::Configuration,
            std::io::Error::other("a time beyond the year 292,000,000"),
        )
    })
}

/// A time as the registration buckets count it: Unix microseconds.
fn micros_value(at: UnixMillis) -> Result<i64, StoreError> {
    millis_value(at).map(|ms| ms.saturating_mul(1000))
}

fn revision_value(revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision).map_err(|_| StoreError::Precondition {
        what: Entity::Device,
    })
}

/// A product's devices, counted (by the primary key's index).
const DEVICE_COUNT: &str = "SELECT COUNT(*) FROM iotauth_devices WHERE product_key = $1";

#[async_trait]
impl ProductStore for SqlStore {
    async fn insert_product(&self, product: ProductRecord) -> Result<(), StoreError> {
        self.insert_products(vec![product]).await
    }

    async fn insert_products(&self, products: Vec<ProductRecord>) -> Result<(), StoreError> {
        self.check_file()?;
        let mut tx = self.pool.begin().await.map_err(failure)?;
        for product in products {
            self.insert_product_logged(&mut tx, product).await?;
        }
        tx.commit().await.map_err(failure)
    }

    async fn product(&self, product_key: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            product_columns!(),
            " FROM iotauth_products WHERE product_key = $1"
        );
        let row = sqlx::query(sql)
            .bind(product_key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(failure)?;
        row.as_ref()
            .map(|row| self.product_from_row(row))
            .transpose()
    }

    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            product_columns!(),
            " FROM iotauth_products ORDER BY product_key"
        );
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(failure)?;
        rows.iter().map(|row| self.product_from_row(row)).collect()
    }

    async fn set_dynamic_registration(
        &self,
        product_key: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), StoreError> {
        // An operator's setting: the breaker's mark and the refusals it counted are cleared.
        let query = sqlx::query(
            "UPDATE iotauth_products SET dynamic_registration = $1, breaker_tripped_at = NULL \
             WHERE product_key = $2",
        )
        .bind(switch_value(switch));
        let cleared =
            sqlx::query("DELETE FROM iotauth_registration_refusals WHERE product_key = $1");
        self.update_product(
            query,
            product_key,
            EventKind::of_switch(switch),
            Some(cleared),
        )
        .await
    }

    async fn set_pre_registration_free(
        &self,
        product_key: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE iotauth_products SET pre_registration_free = $1, device_quota = $2 \
             WHERE product_key = $3",
        )
        .bind(i64::from(setting.on))
        .bind(i64::from(setting.device_quota));
        self.update_product(query, product_key, EventKind::PreRegistrationFreeSet, None)
            .await
    }

    async fn set_registration_limit(
        &self,
        product_key: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), StoreError> {
        // The bucket is filled: a debt run up under the old rate does not outlive it.
        let query = sqlx::query(
            "UPDATE iotauth_products SET registration_rate = $1, registration_burst = $2, \
             refusal_threshold = $3, refusal_window_secs = $4, unique_random = $5, \
             issue_tat = 0 WHERE product_key = $6",
        )
        .bind(i64::from(limit.rate_per_sec()))
        .bind(i64::from(limit.burst()))
        .bind(i64::from(limit.refusal_threshold()))
        .bind(i64::from(limit.refusal_window_secs()))
        .bind(i64::from(limit.unique_random()));
        self.update_product(query, product_key, EventKind::RegistrationLimitSet, None)
            .await
    }

    async fn take_registration_token(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.check_file()?;
        let now = micros_value(self.limits_now(now).await?)?;
        // RegistrationLimit::admit_issue in one statement, so that every process shares the
        // bucket: tat' = max(tat, now) + interval, admitted while tat' - now <= burst * interval.
        let admitted = sqlx::query(
            "UPDATE iotauth_products SET issue_tat = \
               (CASE WHEN issue_tat > $1 THEN issue_tat ELSE $1 END) + 1000000 / registration_rate \
             WHERE product_key = $2 AND registration_rate > 0 \
             AND (CASE WHEN issue_tat > $1 THEN issue_tat ELSE $1 END) \
               + 1000000 / registration_rate - $1 \
               <= registration_burst * (1000000 / registration_rate)",
        )
        .bind(now)
        .bind(product_key.as_str())
        .execute(&self.pool)
        .await
        .map_err(failure)?
        .rows_affected()
            == 1;
        if !admitted {
            // A debt beyond a full bucket's (written by a node whose clock runs ahead, or
            // before this clock stepped back) is cut to a full bucket's.
            sqlx::query(
                "UPDATE iotauth_products \
                 SET issue_tat = $1 + registration_burst * (1000000 / registration_rate) \
                 WHERE product_key = $2 AND registration_rate > 0 \
                 AND issue_tat > $1 + registration_burst * (1000000 / registration_rate)",
            )
            .bind(now)
            .bind(product_key.as_str())
            .execute(&self.pool)
            .await
            .map_err(failure)?;
        }
        Ok(admitted)
    }

    async fn record_registration_refusal(
        &self,
        product_key: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.check_file()?;
        let now = self.limits_now(now).await?;
        let now_micros = micros_value(now)?;
        // Counted only while dynamic registration is on: a product switched off is not
        // written to by refusals.
        let counted = sqlx::query(
            "INSERT INTO iotauth_registration_refusals (product_key, at) \
             SELECT product_key, $1 FROM iotauth_products \
             WHERE product_key = $2 AND dynamic_registration = 1 AND refusal_threshold > 0",
        )
        .bind(now_micros)
        .bind(product_key.as_str())
        .execute(&self.pool)
        .await
        .map_err(failure)?;
        if counted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM iotauth_registration_refusals WHERE product_key = $1 AND at <= $2 - \
             (SELECT refusal_window_secs FROM iotauth_products WHERE product_key = $1) * 1000000",
        )
        .bind(product_key.as_str())
        .bind(now_micros)
        .execute(&self.pool)
        .await
        .map_err(failure)?;
        // One statement decides the switch-off; its row count says which process did it (one,
        // however many race: the others find the switch off).
        let mut tx = self.pool.begin().await.map_err(failure)?;
        let tripped = sqlx::query(
            "UPDATE iotauth_products SET dynamic_registration = 0, breaker_tripped_at = $1 \
             WHERE product_key = $2 AND dynamic_registration = 1 AND refusal_threshold > 0 \
             AND (SELECT COUNT(*) FROM iotauth_registration_refusals \
                  WHERE product_key = $2 AND at > $3 - refusal_window_secs * 1000000) \
                 > refusal_threshold",
        )
        .bind(millis_value(now)?)
        .bind(product_key.as_str())
        .bind(now_micros)
        .execute(&mut *tx)
        .await
        .map_err(failure)?
        .rows_affected()
            == 1;
        if tripped {
            sqlx::query("DELETE FROM iotauth_registration_refusals WHERE product_key = $1")
                .bind(product_key.as_str())
                .execute(&mut *tx)
                .await
                .map_err(failure)?;
            self.append_event(
                &mut tx,
                NewEvent::product(*product_key, EventKind::BreakerTripped),
            )
            .await?;
        }
        tx.commit().await.map_err(failure)?;
        Ok(tripped)
    }
}

impl SqlStore {
    /// Runs `query` (an `UPDATE` of one product whose last parameter is the product key),
    /// then `also` (a statement whose one parameter is the product key), and logs `kind`, in
    /// one transaction.
    async fn update_product(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
        product_key: &ProductKey,
        kind: EventKind,
        also: Option<sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>>,
    ) -> Result<(), StoreError> {
        self.check_file()?;
        let mut tx = self.pool.begin().await.map_err(failure)?;
        let done = query
            .bind(product_key.as_str())
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound {
                what: Entity::Product,
            });
        }
        if let Some(also) = also {
            also.bind(product_key.as_str())
                .execute(&mut *tx)
                .await
                .map_err(failure)?;
        }
        self.append_event(&mut tx, NewEvent::product(*product_key, kind))
            .await?;
        tx.commit().await.map_err(failure)
    }

    /// Inserts a product and logs it, in `tx`.
    async fn insert_product_logged(
        &self,
        tx: &mut sqlx::AnyConnection,
        product: ProductRecord,
    ) -> Result<(), StoreError> {
        let product_key = product.product_key;
        let result = sqlx::query(concat!(
            "INSERT INTO iotauth_products (",
            product_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(product.product_key.as_str())
        .bind(self.stored_secret(
            SecretField::ProductSecret,
            (product.product_key.as_str(), ""),
            product.product_secret.expose_secret(),
        )?)
        .bind(switch_value(product.dynamic_registration))
        .bind(product.name)
        .bind(i64::from(product.pre_registration_free.on))
        .bind(i64::from(product.pre_registration_free.device_quota))
        .bind(i64::from(product.registration_limit.rate_per_sec()))
        .bind(i64::from(product.registration_limit.burst()))
        .bind(i64::from(product.registration_limit.refusal_threshold()))
        .bind(i64::from(product.registration_limit.refusal_window_secs()))
        .bind(i64::from(product.registration_limit.unique_random()))
        .bind(
            product
                .switched_off_by_breaker_at
                .map(millis_value)
                .transpose()?,
        )
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists {
                    what: Entity::Product,
                });
            }
            Err(e) => return Err(failure(e)),
        }
        self.append_event(
            tx,
            NewEvent::product(product_key, EventKind::ProductCreated),
        )
        .await
    }

    /// Inserts devices and logs them, in `tx`: [`ROWS_PER_INSERT`] rows to a statement.
    async fn insert_devices_logged(
        &self,
        tx: &mut sqlx::AnyConnection,
        devices: &[DeviceRecord],
    ) -> Result<(), StoreError> {
        for chunk in devices.chunks(ROWS_PER_INSERT) {
            let mut query = String::from(concat!(
                "INSERT INTO iotauth_devices (",
                device_columns!(),
                ") VALUES "
            ));
            push_placeholders(&mut query, chunk.len(), 7);
            // Only numbered placeholders are spliced in; every value is bound.
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(query));
            for device in chunk {
                let client_ids: Vec<String> =
                    device.client_ids.iter().map(encode_client_id).collect();
                insert = insert
                    .bind(device.product_key.as_str())
                    .bind(device.device_name.as_str())
                    .bind(self.stored_device_secret(device)?)
                    .bind(device.status.state.name())
                    .bind(i64::from(device.status.enabled))
                    // The store assigns revisions: a new device starts at 0.
                    .bind(0_i64)
                    .bind(client_ids.join(","));
            }
            match insert.execute(&mut *tx).await {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::AlreadyExists {
                        what: Entity::Device,
                    });
                }
                Err(e) if is_foreign_key_violation(&e) => {
                    return Err(StoreError::NotFound {
                        what: Entity::Product,
                    });
                }
                Err(e) => return Err(failure(e)),
            }
        }
        let events = devices
            .iter()
            .flat_map(|device| {
                NewEvent::of_insert(device.product_key, device.device_name, device.status)
            })
            .collect();
        self.append_events(tx, events).await
    }
}

/// Rows to one multi-row `INSERT`: 800 bind parameters for the events' 8 columns, well within
/// SQLite's limit (32,766) and PostgreSQL's (65,535).
const ROWS_PER_INSERT: usize = 100;

/// Appends `rows` groups of `columns` numbered placeholders: `($1, $2), ($3, $4)`.
fn push_placeholders(query: &mut String, rows: usize, columns: usize) {
    for row in 0..rows {
        query.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                query.push_str(", ");
            }
            let _ = write!(query, "${}", row * columns + column + 1);
        }
        query.push(')');
    }
}

#[async_trait]
impl DeviceStore for SqlStore {
    async fn record_registration_random(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        random: &str,
    ) -> Result<bool, StoreError> {
        self.check_file()?;
        let mut tx = self.pool.begin().await.map_err(failure)?;
        // `seq` numbers a device's randoms in the order they were recorded (two recorded at
        // once may share one; the primary key still refuses a random recorded twice).
        let inserted = sqlx::query(
            "INSERT INTO iotauth_registration_randoms (product_key, device_name, random, seq) \
             SELECT $1, $2, $3, COALESCE(MAX(seq), 0) + 1 FROM iotauth_registration_randoms \
             WHERE product_key = $1 AND device_name = $2",
        )
        .bind(product_key.as_str())
        .bind(device_name.as_str())
        .bind(random)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(failure(e)),
        }
        sqlx::query(
            "DELETE FROM iotauth_registration_randoms \
             WHERE product_key = $1 AND device_name = $2 AND seq <= \
             (SELECT MAX(seq) FROM iotauth_registration_randoms \
              WHERE product_key = $1 AND device_name = $2) - $3",
        )
        .bind(product_key.as_str())
        .bind(device_name.as_str())
        .bind(i64::try_from(RANDOM_HISTORY).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(failure)?;
        tx.commit().await.map_err(failure)?;
        Ok(true)
    }

    async fn insert_device(&self, device: DeviceRecord) -> Result<(), StoreError> {
        self.check_file()?;
        let mut tx = self.pool.begin().await.map_err(failure)?;
        self.insert_devices_logged(&mut tx, std::slice::from_ref(&device))
            .await?;
        tx.commit().await.map_err(failure)
    }

    async fn insert_devices(&self, devices: Vec<DeviceRecord>) -> Result<(), StoreError> {
        self.check_file()?;
        let mut tx = self.pool.begin().await.map_err(failure)?;
        self.insert_devices_logged(&mut tx, &devices).await?;
        tx.commit().await.map_err(failure)
    }

    async fn insert_device_within_quota(
        &self,
        device: DeviceRecord,
        device_quota: u32,
    ) -> Result<(), StoreError> {
        self.check_file()?;
        // A full product is refused by a read, without the write lock below: a flood of
        // registrations for new names must not stall every other write.
        if self.device_count(&device.product_key).await? >= u64::from(device_quota) {
            return match self
                .device(&device.product_key, &device.device_name)
                .await?
            {
                Some(_) => Err(StoreError::AlreadyExists {
                    what: Entity::Device,
                }),
                None => Err(StoreError::QuotaReached),
            };
        }
        let mut tx = self.pool.begin().await.map_err(failure)?;
        // A no-op write to the product's row: PostgreSQL locks the row until commit, SQLite
        // takes its one write lock, so concurrent calls count and insert one after another
        // (and, in PostgreSQL's read-committed mode, each counts what the previous committed).
        let locked = sqlx::query(
            "UPDATE iotauth_products SET device_quota = device_quota WHERE product_key = $1",
        )
        .bind(device.product_key.as_str())
        .execute(&mut *tx)
        .await
        .map_err(failure)?;
        if locked.rows_affected() != 1 {
            return Err(StoreError::NotFound {
                what: Entity::Product,
            });
        }
        let taken = sqlx::query(
            "SELECT revision FROM iotauth_devices WHERE product_key = $1 AND device_name = $2",
        )
        .bind(device.product_key.as_str())
        .bind(device.device_name.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(failure)?;
        if taken.is_some() {
            return Err(StoreError::AlreadyExists {
                what: Entity::Device,
            });
        }
        let count: i64 = sqlx::query_scalar(DEVICE_COUNT)
            .bind(device.product_key.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(failure)?;
        if count >= i64::from(device_quota) {
            return Err(StoreError::QuotaReached);
        }
        self.insert_devices_logged(&mut tx, std::slice::from_ref(&device))
            .await?;
        tx.commit().await.map_err(failure)
    }

    async fn device(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        #[cfg(feature = "sqlite")]
        if let Some(readers) = &self.readers {
            return readers
                .device(product_key.as_str(), device_name.as_str())?
                .map(|columns| self.device_from_columns(columns))
                .transpose();
        }
        let sql = concat!(
            "SELECT ",
            device_columns!(),
            " FROM iotauth_devices WHERE product_key = $1 AND device_name = $2"
        );
        let row = sqlx::query(sql)
            .bind(product_key.as_str())
            .bind(device_name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(failure)?;
        row.as_ref()
            .map(|row| self.device_from_row(row))
            .transpose()
    }

    async fn devices(&self, product_key: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
        let sql = concat!(
            "SELECT ",
            device_columns!(),
            " FROM iotauth_devices WHERE product_key = $1 ORDER BY device_name"
        );
        let rows = sqlx::query(sql)
            .bind(product_key.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(failure)?;
        rows.iter().map(|row| self.device_from_row(row)).collect()
    }

    async fn device_page(
        &self,
        product_key: &ProductKey,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<DeviceSummary>, StoreError> {
        // Bytewise order on both: PostgreSQL's default collation may follow a locale.
        let sql = if self.sqlite {
            "SELECT device_name, state, enabled, client_ids FROM iotauth_devices \
             WHERE product_key = $1 ORDER BY device_name LIMIT $2 OFFSET $3"
        } else {
            "SELECT device_name, state, enabled, client_ids FROM iotauth_devices \
             WHERE product_key = $1 ORDER BY device_name COLLATE \"C\" LIMIT $2 OFFSET $3"
        };
        let rows = sqlx::query(sql)
            .bind(product_key.as_str())
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(failure)?;
        rows.iter()
            .map(|row| {
                let name: String = column(row, "device_name")?;
                let state: String = column(row, "state")?;
                Ok(DeviceSummary {
                    product_key: *product_key,
                    device_name: DeviceName::new(&name).map_err(corrupt("device_name"))?,
                    status: status_from_columns(&state, column(row, "enabled")?)?,
                    client_ids: client_ids_from_column(&column::<String>(row, "client_ids")?)?
                        .into_iter()
                        .map(|held| held.client_id)
                        .collect(),
                })
            })
            .collect()
    }

    async fn device_count(&self, product_key: &ProductKey) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(DEVICE_COUNT)
            .bind(product_key.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(failure)?;
        u64::try_from(count)
            .map_err(|_| StoreError::failure(FailureKind::Corrupt, Corrupt { column: "count" }))
    }

    async fn compare_and_set(
        &self,
        product_key: &ProductKey,
        device_name: &DeviceName,
        expected_revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError> {
        self.check_file()?;
        let expected = revision_value(expected_revision)?;
        let new_secret = match &update {
            DeviceUpdate::Set {
                device_secret: Some(secret),
                ..
            } => Some(self.stored_secret(
                SecretField::DeviceSecret,
                (product_key.as_str(), device_name.as_str()),
                secret.expose_secret(),
            )?),
            _ => None,
        };
        let kind = match &update {
            DeviceUpdate::Set { event, .. } => *event,
            DeviceUpdate::Delete => EventKind::Deleted,
        };
        let query = match &update {
            DeviceUpdate::Set {
                status, client_ids, ..
            } => sqlx::query(
                // $4: NULL keeps the ClientIDs, '' revokes them, an entry is appended, unless
                // the list holds IssuedClientId::MAX_PER_DEVICE (5) already: four commas.
                "UPDATE iotauth_devices SET state = $1, enabled = $2, \
                 device_secret = COALESCE($3, device_secret), \
                 client_ids = CASE WHEN CAST($4 AS TEXT) IS NULL THEN client_ids \
                   WHEN CAST($4 AS TEXT) = '' OR client_ids = '' THEN CAST($4 AS TEXT) \
                   ELSE client_ids || ',' || CAST($4 AS TEXT) END, \
                 revision = revision + 1 \
                 WHERE product_key = $5 AND device_name = $6 AND revision = $7 \
                 AND (CAST($4 AS TEXT) IS NULL OR CAST($4 AS TEXT) = '' OR client_ids = '' \
                   OR LENGTH(client_ids) - LENGTH(REPLACE(client_ids, ',', '')) < 4)",
            )
            .bind(status.state.name())
            .bind(i64::from(status.enabled))
            .bind(new_secret)
            .bind(match client_ids {
                ClientIdChange::Keep => None,
                ClientIdChange::RevokeAll => Some(String::new()),
                ClientIdChange::Add(record) => Some(encode_client_id(record)),
            }),
            DeviceUpdate::Delete => sqlx::query(
                "DELETE FROM iotauth_devices \
                 WHERE product_key = $1 AND device_name = $2 AND revision = $3",
            ),
        };
        let mut tx = self.pool.begin().await.map_err(failure)?;
        let done = query
            .bind(product_key.as_str())
            .bind(device_name.as_str())
            .bind(expected)
            .execute(&mut *tx)
            .await
            .map_err(failure)?;
        if done.rows_affected() == 1 {
            self.append_event(&mut tx, NewEvent::device(*product_key, *device_name, kind))
                .await?;
            return tx.commit().await.map_err(failure);
        }
        drop(tx);
        // Lost: tell a concurrent change from a missing device.
        match self.device(product_key, device_name).await? {
            Some(_) => Err(StoreError::Precondition {
                what: Entity::Device,
            }),
            None => Err(StoreError::NotFound {
                what: Entity::Device,
            }),
        }
    }

    /// A read of the database (not only of the connection) and, for SQLite, a check that
    /// the file at the path is still the one opened.
    async fn check_ready(&self) -> Result<(), StoreError> {
        self.check_file()?;
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM iotauth_schema")
            .fetch_one(&self.pool)
            .await
            .map_err(failure)?;
        Ok(())
    }
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    let seq: i64 = column(row, "seq")?;
    let unreadable = |column: &'static str| {
        StoreError::failure(FailureKind::Corrupt, UnreadableEvent { seq, column })
    };
    let text = |name: &'static str| column::<String>(row, name);
    let device_name: Option<String> = column(row, "device_name")?;
    Ok(EventRecord {
        seq: u64::try_from(seq).map_err(|_| unreadable("seq"))?,
        at: UnixMillis(u64::try_from(column::<i64>(row, "at")?).map_err(|_| unreadable("at"))?),
        product_key: ProductKey::new(&text("product_key")?)
            .map_err(|_| unreadable("product_key"))?,
        device_name: device_name
            .map(|name| DeviceName::new(&name))
            .transpose()
            .map_err(|_| unreadable("device_name"))?,
        kind: EventKind::from_name(&text("kind")?).ok_or_else(|| unreadable("kind"))?,
        actor: Actor::parse(&text("actor")?).map_err(|_| unreadable("actor"))?,
        prev_hash: ChainHash::from_hex(&text("prev_hash")?).map_err(|_| unreadable("prev_hash"))?,
        hash: ChainHash::from_hex(&text("hash")?).map_err(|_| unreadable("hash"))?,
    })
}

#[async_trait]
impl EventLog for SqlStore {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let limit = i64::try_from(limit.min(MAX_EVENTS_PER_READ)).unwrap_or(0);
        let rows = sqlx::query(
            "SELECT seq, at, product_key, device_name, kind, actor, prev_hash, hash \
             FROM iotauth_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(failure)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn event_head(&self) -> Result<ChainHead, StoreError> {
        let corrupt = |column| StoreError::failure(FailureKind::Corrupt, Corrupt { column });
        let row = sqlx::query("SELECT seq, hash FROM iotauth_event_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(failure)?
            .ok_or_else(|| corrupt("event head (iotauth_event_head has no row)"))?;
        Ok(ChainHead {
            seq: u64::try_from(column::<i64>(&row, "seq")?)
                .map_err(|_| corrupt("event head's seq"))?,
            hash: ChainHash::from_hex(&column::<String>(&row, "hash")?)
                .map_err(|_| corrupt("event head's hash"))?,
        })
    }

    async fn appended(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Some(listener) = &self.listener {
            return listener.next().await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_extended_result_codes_are_classified_by_their_primary_code() {
        use FailureKind::*;
        let cases = [
            (3, Permission),              // SQLITE_PERM
            (23, Permission),             // SQLITE_AUTH
            (5, Busy),                    // SQLITE_BUSY
            (5 | (2 << 8), Busy),         // SQLITE_BUSY_SNAPSHOT
            (6, Busy),                    // SQLITE_LOCKED
            (8, ReadOnly),                // SQLITE_READONLY
            (8 | (6 << 8), ReadOnly),     // SQLITE_READONLY_DIRECTORY
            (8 | (4 << 8), Replaced),     // SQLITE_READONLY_DBMOVED
            (13, Full),                   // SQLITE_FULL
            (11, Corrupt),                // SQLITE_CORRUPT
            (26, Corrupt),                // SQLITE_NOTADB
            (14, Configuration),          // SQLITE_CANTOPEN
            (10 | (3 << 8), Unavailable), // SQLITE_IOERR_WRITE
        ];
        for (code, kind) in cases {
            assert_eq!(sqlite_failure_kind(code), kind, "code {code}");
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_sqlstates_are_classified() {
        use FailureKind::*;
        let cases = [
            ("42501", Permission),
            ("28P01", Configuration),
            ("3D000", Configuration),
            ("25006", ReadOnly),
            ("53100", Full),
            ("40001", Busy),
            ("40P01", Busy),
            ("XX001", Corrupt),
            ("57P01", Unavailable),
            ("08006", Unavailable),
        ];
        for (sqlstate, kind) in cases {
            assert_eq!(postgres_failure_kind(sqlstate), kind, "SQLSTATE {sqlstate}");
        }
    }

    /// The statements find a sealed value's key id as `SUBSTR(x, 9, 8)` and tell it from a
    /// secret in clear as `LENGTH(x) > 64`: what `seal` writes.
    #[test]
    fn the_statements_read_sealed_values_as_seal_writes_them() {
        let keyring = Keyring::new(MasterKey::from_bytes([1; 32]), Vec::new());
        // The shortest secret, one character.
        let sealed = keyring
            .seal(SecretField::DeviceSecret, ("a1pk", "dev"), "x")
            .unwrap();
        assert_eq!(seal::PREFIX.len(), 8);
        assert_eq!(
            &sealed[8..16],
            keyring.sealing_key_id().to_string(),
            "SUBSTR(x, 9, 8)"
        );
        assert!(sealed.len() > 64, "LENGTH(x) > 64 for every sealed value");
        assert_eq!(
            DeviceSecret::MAX_LEN.max(ProductSecret::MAX_LEN),
            64,
            "LENGTH(x) <= 64 for every secret"
        );
    }

    #[test]
    fn a_sqlite_url_names_its_file_as_sqlx_reads_it() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/iotauth/a%20b.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/iotauth/a b.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:iotauth.db"),
            Some(PathBuf::from("iotauth.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_path("postgres://u@h/d"), None);
    }
}
