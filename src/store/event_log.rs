//! The lifecycle event log: every change a store makes, in order, hash-chained.
//!
//! Each adapter appends an [`EventRecord`] in the same transaction (SQL) or under the same
//! lock (memory) as the change it records, numbered without gaps from 1. Its hash is SHA-256
//! over the previous event's hash and the event's canonical bytes ([`EventRecord::chain`]), so
//! an edited, deleted or reordered row breaks the chain at that row ([`verify_chain`]). No
//! event holds a secret: only keys, names, what happened, who did it and when.
//!
//! Serving processes follow the log ([`EventLog::events_after`]) to drop the cache entries of
//! the devices it names and to disconnect devices that were disabled, reset or deleted.

use core::fmt;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceState, DeviceStatus, DynamicRegistration, Event};
use crate::policy::UnixMillis;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A product was created.
    ProductCreated,
    /// An operator switched dynamic registration on.
    DynamicRegistrationOn,
    /// An operator switched dynamic registration off.
    DynamicRegistrationOff,
    /// The registration circuit breaker switched dynamic registration off.
    BreakerTripped,
    /// Registration without pre-registration (switch or quota) was set.
    PreRegistrationFreeSet,
    /// The product's registration limits were set.
    RegistrationLimitSet,
    /// A device was registered (by an operator, or by a `regnwl` registration).
    DeviceRegistered,
    /// Dynamic registration delivered the device's secret.
    SecretIssued,
    /// A `regnwl` registration issued the device a ClientID and DeviceToken.
    ClientIdIssued,
    /// The device logged in for the first time.
    Activated,
    /// An operator disabled the device.
    Disabled,
    /// An operator enabled the device.
    Enabled,
    /// An operator reset the device (new secret, ClientIDs revoked).
    Reset,
    /// An operator deleted the device.
    Deleted,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 14] = [
        Self::ProductCreated,
        Self::DynamicRegistrationOn,
        Self::DynamicRegistrationOff,
        Self::BreakerTripped,
        Self::PreRegistrationFreeSet,
        Self::RegistrationLimitSet,
        Self::DeviceRegistered,
        Self::SecretIssued,
        Self::ClientIdIssued,
        Self::Activated,
        Self::Disabled,
        Self::Enabled,
        Self::Reset,
        Self::Deleted,
    ];

    /// The kind's name, as stored, hashed and printed (`product_created`, `secret_issued`…).
    pub const fn name(self) -> &'static str {
        match self {
            Self::ProductCreated => "product_created",
            Self::DynamicRegistrationOn => "dynamic_registration_on",
            Self::DynamicRegistrationOff => "dynamic_registration_off",
            Self::BreakerTripped => "breaker_tripped",
            Self::PreRegistrationFreeSet => "pre_registration_free_set",
            Self::RegistrationLimitSet => "registration_limit_set",
            Self::DeviceRegistered => "device_registered",
            Self::SecretIssued => "secret_issued",
            Self::ClientIdIssued => "client_id_issued",
            Self::Activated => "activated",
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::Reset => "reset",
            Self::Deleted => "deleted",
        }
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// What a device's lifecycle event records when it changes the device.
    pub const fn of(event: Event) -> Self {
        match event {
            Event::Issue(_) => Self::SecretIssued,
            Event::IssueClientId { .. } => Self::ClientIdIssued,
            Event::LoginOk => Self::Activated,
            Event::Disable => Self::Disabled,
            Event::Enable => Self::Enabled,
            Event::Reset => Self::Reset,
            Event::Delete => Self::Deleted,
        }
    }

    /// What an operator's switch records.
    pub const fn of_switch(switch: DynamicRegistration) -> Self {
        match switch {
            DynamicRegistration::On => Self::DynamicRegistrationOn,
            DynamicRegistration::Off => Self::DynamicRegistrationOff,
        }
    }

    /// Whether the device loses its right to stay connected: its live sessions must end
    /// (disabled; reset, which replaces its secret and revokes its ClientIDs; deleted).
    pub const fn revokes(self) -> bool {
        matches!(self, Self::Disabled | Self::Reset | Self::Deleted)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who made a change: `cli`, `server:NODE`, `plugin:NODE`, or `library` (a
/// store opened without saying). A node id is 1 to 64 bytes of ASCII letters, digits and
/// `.`, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Actor(Box<str>);

/// An [`Actor`] that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an actor is cli, library, server:NODE or plugin:NODE (NODE: 1-64 of A-Za-z0-9._-)")]
pub struct ActorError;

impl Actor {
    /// The admin command-line tool.
    pub fn cli() -> Self {
        Self("cli".into())
    }

    /// A store opened without naming who writes through it.
    pub fn library() -> Self {
        Self("library".into())
    }

    /// A serving node (`iotauth serve`).
    ///
    /// # Errors
    /// [`ActorError`] when `node` is not a valid node id.
    pub fn server(node: &str) -> Result<Self, ActorError> {
        Self::parse(&format!("server:{node}"))
    }

    /// A broker plugin's node.
    ///
    /// # Errors
    /// [`ActorError`] when `node` is not a valid node id.
    pub fn plugin(node: &str) -> Result<Self, ActorError> {
        Self::parse(&format!("plugin:{node}"))
    }

    /// The actor written as `text` (what [`Actor::as_str`] returns).
    ///
    /// # Errors
    /// [`ActorError`].
    pub fn parse(text: &str) -> Result<Self, ActorError> {
        let node_ok = |node: &str| {
            (1..=64).contains(&node.len())
                && node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        let valid = match text.split_once(':') {
            Some(("server" | "plugin", node)) => node_ok(node),
            Some(_) => false,
            None => matches!(text, "cli" | "library"),
        };
        if valid {
            Ok(Self(text.into()))
        } else {
            Err(ActorError)
        }
    }

    /// A node id for this process: the host's name and the process id (`HOST-PID`), or
    /// `pid-PID` when the host's name is not a valid node id.
    pub fn this_node() -> String {
        let pid = std::process::id();
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|host| format!("{}-{pid}", host.trim()))
            .filter(|node| Self::server(node).is_ok())
            .unwrap_or_else(|| format!("pid-{pid}"))
    }

    /// The actor as stored and printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 link of the chain (32 bytes; printed and stored as 64 lowercase hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The "previous hash" of the first event: 32 zero bytes.
    pub const GENESIS: Self = Self([0; 32]);

    /// The hash written as 64 hex digits.
    ///
    /// # Errors
    /// [`crate::ParseError`]-like [`HashError`] when it is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, HashError> {
        let mut bytes = [0; 32];
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(HashError);
        }
        hex::decode_to_slice(text, &mut bytes).map_err(|_| HashError)?;
        Ok(Self(bytes))
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

/// A stored hash that is not 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a chain hash is 64 lowercase hex digits")]
pub struct HashError;

/// One event of the log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Its place in the log: 1 for the first, then each one more, without gaps.
    pub seq: u64,
    /// When it was written (the writing process's clock).
    pub at: UnixMillis,
    /// The product changed, or the device's product.
    pub product_key: ProductKey,
    /// The device changed; `None` for a product's event.
    pub device_name: Option<DeviceName>,
    /// What happened.
    pub kind: EventKind,
    /// Who did it.
    pub actor: Actor,
    /// The previous event's hash ([`ChainHash::GENESIS`] for the first).
    pub prev_hash: ChainHash,
    /// SHA-256 over `prev_hash` and the event's canonical bytes.
    pub hash: ChainHash,
}

/// What an adapter knows of an event before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The product changed, or the device's product.
    pub product_key: ProductKey,
    /// The device changed; `None` for a product's event.
    pub device_name: Option<DeviceName>,
    /// What happened.
    pub kind: EventKind,
}

impl NewEvent {
    /// A product's event.
    pub fn product(product_key: ProductKey, kind: EventKind) -> Self {
        Self {
            product_key,
            device_name: None,
            kind,
        }
    }

    /// A device's event.
    pub fn device(product_key: ProductKey, device_name: DeviceName, kind: EventKind) -> Self {
        Self {
            product_key,
            device_name: Some(device_name),
            kind,
        }
    }

    /// The events of inserting a device with `status`: `device_registered`, then `activated`
    /// for a device inserted Active and `disabled` for one inserted disabled (an import of
    /// Alibaba's `ONLINE` or `DISABLE`), so that the log says what the device may do, and a
    /// follower disconnects a disabled device that was connected elsewhere.
    pub fn of_insert(
        product_key: ProductKey,
        device_name: DeviceName,
        status: DeviceStatus,
    ) -> impl Iterator<Item = Self> {
        let kinds = [
            Some(EventKind::DeviceRegistered),
            (status.state == DeviceState::Active).then_some(EventKind::Activated),
            (!status.enabled).then_some(EventKind::Disabled),
        ];
        kinds
            .into_iter()
            .flatten()
            .map(move |kind| Self::device(product_key, device_name, kind))
    }
}

/// Domain separation of the canonical bytes (a version: a new layout gets a new tag).
const CANONICAL_TAG: &[u8] = b"iotauth-event-v1\0";

impl EventRecord {
    /// The event `new` appended after the event numbered `prev_seq` whose hash is `prev_hash`
    /// (0 and [`ChainHash::GENESIS`] for the first): what every adapter writes.
    pub fn chain(
        prev_seq: u64,
        prev_hash: ChainHash,
        at: UnixMillis,
        actor: &Actor,
        new: NewEvent,
    ) -> Self {
        let mut event = Self {
            seq: prev_seq + 1,
            at,
            product_key: new.product_key,
            device_name: new.device_name,
            kind: new.kind,
            actor: actor.clone(),
            prev_hash,
            hash: ChainHash::GENESIS,
        };
        event.hash = event.computed_hash();
        event
    }

    /// The event's canonical bytes: a tag, `seq` and `at` as 8 big-endian bytes each, then the
    /// product key, device name (empty for a product's event), kind name and actor, each
    /// preceded by its length as 2 big-endian bytes. Never a secret.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(CANONICAL_TAG);
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.at.0.to_be_bytes());
        let device_name = self.device_name.as_ref().map_or("", DeviceName::as_str);
        for field in [
            self.product_key.as_str(),
            device_name,
            self.kind.name(),
            self.actor.as_str(),
        ] {
            // Every field is at most 64 bytes (keys, names, kinds, actors are capped).
            let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(field.as_bytes());
        }
        bytes
    }

    /// SHA-256 over `prev_hash` and [`EventRecord::canonical_bytes`]: what `hash` must be.
    pub fn computed_hash(&self) -> ChainHash {
        let mut sha = Sha256::new();
        sha.update(self.prev_hash.0);
        sha.update(self.canonical_bytes());
        ChainHash(sha.finalize().into())
    }
}

/// The last event of a log: its number (0 when empty) and hash ([`ChainHash::GENESIS`] when
/// empty). Adapters keep it beside the events, so that deleting the newest events is
/// detected too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The last event's number.
    pub seq: u64,
    /// The last event's hash.
    pub hash: ChainHash,
}

impl ChainHead {
    /// The head of an empty log.
    pub const EMPTY: Self = Self {
        seq: 0,
        hash: ChainHash::GENESIS,
    };
}

/// Where a chain is broken ([`verify_chain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreak {
    /// An event's number is not one more than the previous one's: events were deleted or
    /// reordered before it.
    #[error("event {found} follows event {after}: events before it are missing or reordered")]
    Gap {
        /// The previous event's number.
        after: u64,
        /// This event's number.
        found: u64,
    },
    /// An event's previous hash is not the previous event's hash: an event before it was
    /// deleted, reordered or replaced.
    #[error("event {seq} does not link to the event before it")]
    Unlinked {
        /// The event's number.
        seq: u64,
    },
    /// An event's hash is not the hash of its contents: it was edited.
    #[error("event {seq} was edited: its hash does not match its contents")]
    Edited {
        /// The event's number.
        seq: u64,
    },
    /// The log ends before or after the head the store keeps: the newest events were deleted,
    /// or the head was edited.
    #[error("the log ends at event {last} but the store's head names event {head}")]
    Truncated {
        /// The last event found.
        last: u64,
        /// The head's event number.
        head: u64,
    },
    /// The log goes on past the head the store keeps: the head was set back (to hide the
    /// events after it).
    #[error("the log goes on to event {last} past the store's head, event {head}")]
    BeyondHead {
        /// The last event found.
        last: u64,
        /// The head's event number.
        head: u64,
    },
    /// The head names the last event's number with another hash: the head or the event was
    /// edited.
    #[error("the store's head does not hold event {seq}'s hash")]
    HeadMismatch {
        /// The last event's number.
        seq: u64,
    },
}

/// Checks `events` (in order, starting after `after`, whose hash is `after_hash`) link up:
/// numbers without gaps, each previous hash the hash before it, each hash its contents'.
/// Returns the head the events end at.
///
/// # Errors
/// The first [`ChainBreak`].
pub fn verify_chain<'a>(
    after: ChainHead,
    events: impl IntoIterator<Item = &'a EventRecord>,
) -> Result<ChainHead, ChainBreak> {
    let mut head = after;
    for event in events {
        if event.seq != head.seq + 1 {
            return Err(ChainBreak::Gap {
                after: head.seq,
                found: event.seq,
            });
        }
        if event.hash != event.computed_hash() {
            return Err(ChainBreak::Edited { seq: event.seq });
        }
        if event.prev_hash != head.hash {
            return Err(ChainBreak::Unlinked { seq: event.seq });
        }
        head = ChainHead {
            seq: event.seq,
            hash: event.hash,
        };
    }
    Ok(head)
}

/// The most events [`EventLog::events_after`] returns at once.
pub const MAX_EVENTS_PER_READ: usize = 1000;

/// The events a store wrote, read back.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// The events numbered after `after`, in order, at most `limit` (capped at
    /// [`MAX_EVENTS_PER_READ`]).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; [`super::FailureKind::Corrupt`] for a row that does not
    /// parse (the message names its number).
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;

    /// The last event's number and hash, as the store keeps them.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    async fn event_head(&self) -> Result<ChainHead, StoreError>;

    /// Waits for a sign that events were appended (PostgreSQL's `NOTIFY`): `true` when one
    /// came, `false` at once when this store gives none (then a follower polls).
    async fn appended(&self) -> bool {
        false
    }

    /// Called by a follower for each event it read from the log: a cache drops what the event
    /// changed ([`super::CachedStore`]); a store keeps nothing to drop (the default).
    fn observe(&self, event: &EventRecord) {
        let _ = event;
    }

    /// Called by a follower that could not read some events (an unreadable row, a log that
    /// went back): a cache drops every entry; a store keeps nothing to drop (the default).
    fn observe_lost_events(&self) {}
}

/// How often a follower reads the log when the store sends no notification (SQLite, the
/// memory store, or PostgreSQL while its `LISTEN` connection is down).
pub const FOLLOW_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Follows `store`'s event log from its head on, for as long as the process runs: each event
/// appended by any process of the store is passed to [`EventLog::observe`] (a cache drops the
/// device's entry) and then to `on_event` (e.g. to disconnect a device that was disabled,
/// reset or deleted), in order, once. The log is read every [`FOLLOW_POLL_INTERVAL`], and at
/// once when PostgreSQL notifies an append.
///
/// While the store fails (or a read takes over 5 s), the follower retries from the last event
/// it passed on, so it misses nothing; it logs the first failure (`warn`) and the recovery
/// (`info`), not every retry. Where events cannot be passed on, it says so (`error`) and calls
/// [`EventLog::observe_lost_events`] (a cache drops every entry), then goes on: an event row
/// that does not parse (edited, or of a kind a newer version wrote) is skipped, and a log that
/// no longer continues the events passed on (a database restored from a backup, or failed over
/// to a replica that lagged) is followed from where it is now. Revocations recorded by events
/// not passed on do not disconnect anyone.
#[cfg(feature = "server")]
pub fn follow(
    store: std::sync::Arc<dyn super::Store>,
    mut on_event: impl FnMut(&EventRecord) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut follower = Follower::default();
        loop {
            if follower.step(&*store, &mut on_event).await {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => {}
                true = store.appended() => {}
            }
        }
    })
}

/// A follower's state between reads ([`follow`]).
#[cfg(feature = "server")]
#[derive(Default)]
struct Follower {
    /// The last event passed on (its hash unknown after a skipped row); `None` until the head
    /// was read.
    position: Option<(u64, Option<ChainHash>)>,
    /// Whether the last read failed (logged once).
    failing: bool,
    /// Reads that found nothing new since the head was last checked.
    idle_reads: u32,
}

#[cfg(feature = "server")]
impl Follower {
    /// The longest a read may take before it counts as a failure.
    const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    /// Idle reads between checks that the log did not go back (every ~5 s).
    const HEAD_CHECK_EVERY: u32 = 100;

    async fn read<T>(
        &mut self,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        let outcome = match tokio::time::timeout(Self::READ_TIMEOUT, read).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::unavailable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the store did not answer in time",
            ))),
        };
        match outcome {
            Err(e) if e.failure_kind() != Some(super::FailureKind::Corrupt) => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        after = self.position.map(|(seq, _)| seq),
                        error = %crate::ErrorChain(&e),
                        "cannot read the event log; retrying (revocations wait)"
                    );
                }
                None
            }
            outcome => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(
                        after = self.position.map(|(seq, _)| seq),
                        "following the event log again"
                    );
                }
                Some(outcome)
            }
        }
    }

    /// One read: passes on what it found; whether there may be more to read at once.
    async fn step(
        &mut self,
        store: &dyn EventLog,
        on_event: &mut impl FnMut(&EventRecord),
    ) -> bool {
        let Some((after, hash)) = self.position else {
            match self.read(store.event_head()).await {
                Some(Ok(head)) => self.position = Some((head.seq, Some(head.hash))),
                Some(Err(e)) if !std::mem::replace(&mut self.failing, true) => {
                    tracing::error!(
                        error = %crate::ErrorChain(&e),
                        "cannot read where the event log ends: not following it \
                         (run iotauth audit verify)"
                    );
                }
                _ => {}
            }
            return false;
        };
        let events = match self
            .read(store.events_after(after, MAX_EVENTS_PER_READ))
            .await
        {
            None => return false,
            Some(Ok(events)) => events,
            Some(Err(_)) => {
                // A row does not parse: the next one, or a later one of the page?
                return match self.read(store.events_after(after, 1)).await {
                    Some(Ok(events)) => {
                        self.pass_on(store, on_event, &events, hash);
                        !events.is_empty()
                    }
                    Some(Err(e)) => {
                        tracing::error!(
                            event = after + 1,
                            error = %crate::ErrorChain(&e),
                            "an event of the log does not parse: skipped, the cache dropped \
                             (run iotauth audit verify)"
                        );
                        store.observe_lost_events();
                        self.position = Some((after + 1, None));
                        true
                    }
                    None => false,
                };
            }
        };
        if events.is_empty() {
            self.idle_reads += 1;
            if self.idle_reads >= Self::HEAD_CHECK_EVERY {
                self.idle_reads = 0;
                if let Some(Ok(head)) = self.read(store.event_head()).await
                    && head.seq < after
                {
                    tracing::error!(
                        after,
                        head = head.seq,
                        "the event log went back (a restore, or a failover to a replica that \
                         lagged): following it from its head, the cache dropped"
                    );
                    store.observe_lost_events();
                    self.position = Some((head.seq, Some(head.hash)));
                }
            }
            return false;
        }
        self.idle_reads = 0;
        self.pass_on(store, on_event, &events, hash);
        events.len() == MAX_EVENTS_PER_READ
    }

    fn pass_on(
        &mut self,
        store: &dyn EventLog,
        on_event: &mut impl FnMut(&EventRecord),
        events: &[EventRecord],
        hash: Option<ChainHash>,
    ) {
        if let (Some(first), Some(hash)) = (events.first(), hash)
            && first.prev_hash != hash
        {
            tracing::error!(
                event = first.seq,
                "the event log does not continue the events passed on (a restore, or a \
                 failover to a replica that lagged): the cache dropped"
            );
            store.observe_lost_events();
        }
        for event in events {
            store.observe(event);
            on_event(event);
            self.position = Some((event.seq, Some(event.hash)));
        }
    }
}

/// A stored event that does not parse.
#[cfg(any(feature = "sqlite", feature = "postgres", test))]
#[derive(Debug)]
pub(crate) struct UnreadableEvent {
    pub(crate) seq: i64,
    pub(crate) column: &'static str,
}

#[cfg(any(feature = "sqlite", feature = "postgres", test))]
impl fmt::Display for UnreadableEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} was edited: its {} does not parse",
            self.seq, self.column
        )
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", test))]
impl std::error::Error for UnreadableEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq_after: ChainHead, kind: EventKind) -> EventRecord {
        EventRecord::chain(
            seq_after.seq,
            seq_after.hash,
            UnixMillis(1_700_000_000_000),
            &Actor::cli(),
            NewEvent::device(
                ProductKey::new("a1BwAGV0001").unwrap(),
                DeviceName::new("dev1").unwrap(),
                kind,
            ),
        )
    }

    fn chain_of(kinds: &[EventKind]) -> Vec<EventRecord> {
        let mut head = ChainHead::EMPTY;
        kinds
            .iter()
            .map(|kind| {
                let e = event(head, *kind);
                head = ChainHead {
                    seq: e.seq,
                    hash: e.hash,
                };
                e
            })
            .collect()
    }

    #[test]
    fn a_chain_verifies_and_any_edit_deletion_or_swap_breaks_it_where_it_happened() {
        let kinds = [
            EventKind::DeviceRegistered,
            EventKind::Disabled,
            EventKind::Enabled,
        ];
        let events = chain_of(&kinds);
        assert_eq!(verify_chain(ChainHead::EMPTY, &events).unwrap().seq, 3);

        let mut edited = events.clone();
        edited[1].kind = EventKind::Enabled;
        assert_eq!(
            verify_chain(ChainHead::EMPTY, &edited),
            Err(ChainBreak::Edited { seq: 2 })
        );

        let mut deleted = events.clone();
        deleted.remove(1);
        assert_eq!(
            verify_chain(ChainHead::EMPTY, &deleted),
            Err(ChainBreak::Gap { after: 1, found: 3 })
        );

        let mut swapped = events.clone();
        swapped.swap(1, 2);
        assert_eq!(
            verify_chain(ChainHead::EMPTY, &swapped),
            Err(ChainBreak::Gap { after: 1, found: 3 })
        );

        // Renumbered after a swap: the numbers are hashed, so the edit shows.
        let mut renumbered = events.clone();
        renumbered.swap(1, 2);
        renumbered[1].seq = 2;
        renumbered[2].seq = 3;
        assert_eq!(
            verify_chain(ChainHead::EMPTY, &renumbered),
            Err(ChainBreak::Edited { seq: 2 })
        );

        // Rehashed after a deletion: no longer linked to its predecessor.
        let mut rehashed = deleted.clone();
        rehashed[1].seq = 2;
        rehashed[1].hash = rehashed[1].computed_hash();
        assert_eq!(
            verify_chain(ChainHead::EMPTY, &rehashed),
            Err(ChainBreak::Unlinked { seq: 2 })
        );
    }

    /// A log whose reads fail on demand, with an unreadable row on demand, that records what
    /// a follower told it.
    #[cfg(feature = "server")]
    #[derive(Debug, Default)]
    struct ScriptedLog {
        events: std::sync::Mutex<Vec<EventRecord>>,
        down: std::sync::atomic::AtomicBool,
        unreadable: std::sync::Mutex<Option<u64>>,
        lost: std::sync::atomic::AtomicUsize,
    }

    #[cfg(feature = "server")]
    impl ScriptedLog {
        fn append(&self, kind: EventKind) {
            let mut events = self.events.lock().unwrap();
            let head = events.last().map_or(ChainHead::EMPTY, |e| ChainHead {
                seq: e.seq,
                hash: e.hash,
            });
            events.push(event(head, kind));
        }
    }

    #[cfg(feature = "server")]
    #[async_trait]
    impl EventLog for ScriptedLog {
        async fn events_after(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<EventRecord>, StoreError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::unavailable(std::io::Error::other("down")));
            }
            let page: Vec<EventRecord> = self
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect();
            let unreadable = *self.unreadable.lock().unwrap();
            match unreadable {
                Some(seq) if page.iter().any(|e| e.seq == seq) => Err(StoreError::failure(
                    super::super::FailureKind::Corrupt,
                    UnreadableEvent {
                        seq: seq as i64,
                        column: "kind",
                    },
                )),
                _ => Ok(page),
            }
        }

        async fn event_head(&self) -> Result<ChainHead, StoreError> {
            Ok(self
                .events
                .lock()
                .unwrap()
                .last()
                .map_or(ChainHead::EMPTY, |e| ChainHead {
                    seq: e.seq,
                    hash: e.hash,
                }))
        }

        fn observe_lost_events(&self) {
            self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Steps `follower` until it has nothing more to read at once; the numbers passed on.
    #[cfg(feature = "server")]
    async fn drain(follower: &mut Follower, log: &ScriptedLog) -> Vec<u64> {
        let mut seen = Vec::new();
        while follower
            .step(log, &mut |e: &EventRecord| seen.push(e.seq))
            .await
        {}
        seen
    }

    #[cfg(feature = "server")]
    #[tokio::test]
    async fn a_follower_misses_nothing_across_an_outage_and_says_what_it_could_not_pass_on() {
        use std::sync::atomic::Ordering;
        let log = ScriptedLog::default();
        log.append(EventKind::DeviceRegistered);
        let mut follower = Follower::default();
        assert!(
            drain(&mut follower, &log).await.is_empty(),
            "it starts at the head"
        );

        // Appended while the store is down: passed on, in order, once it is back.
        log.down.store(true, Ordering::SeqCst);
        log.append(EventKind::Disabled);
        log.append(EventKind::Enabled);
        assert!(drain(&mut follower, &log).await.is_empty());
        log.down.store(false, Ordering::SeqCst);
        assert_eq!(drain(&mut follower, &log).await, [2, 3]);
        assert_eq!(log.lost.load(Ordering::SeqCst), 0);

        // An unreadable row is skipped, said, and the rest passed on.
        for kind in [EventKind::Disabled, EventKind::Reset, EventKind::Deleted] {
            log.append(kind);
        }
        *log.unreadable.lock().unwrap() = Some(5);
        assert_eq!(drain(&mut follower, &log).await, [4, 6]);
        assert_eq!(log.lost.load(Ordering::SeqCst), 1);
        *log.unreadable.lock().unwrap() = None;

        // A log that no longer continues what was passed on (restored from an older backup,
        // then written to): said, and followed.
        let restored: Vec<EventRecord> = log.events.lock().unwrap()[..2].to_vec();
        *log.events.lock().unwrap() = restored;
        for kind in [EventKind::Reset; 6] {
            log.append(kind);
        }
        assert_eq!(drain(&mut follower, &log).await, [7, 8]);
        assert_eq!(log.lost.load(Ordering::SeqCst), 2);

        // A log that went back below the follower: found by the head check, followed from its
        // head.
        let restored: Vec<EventRecord> = log.events.lock().unwrap()[..3].to_vec();
        *log.events.lock().unwrap() = restored;
        for _ in 0..Follower::HEAD_CHECK_EVERY {
            assert!(drain(&mut follower, &log).await.is_empty());
        }
        assert_eq!(log.lost.load(Ordering::SeqCst), 3);
        log.append(EventKind::Enabled);
        assert_eq!(drain(&mut follower, &log).await, [4]);
    }

    #[test]
    fn kinds_and_actors_round_trip_and_strangers_are_refused() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(EventKind::from_name("hacked"), None);
        for text in ["cli", "library", "server:node-1", "plugin:a.b_c"] {
            assert_eq!(Actor::parse(text).unwrap().as_str(), text);
        }
        for text in [
            "",
            "server:",
            "root",
            "server:a b",
            "plugin:\u{e9}",
            "cli:x",
            "admin-api",
        ] {
            assert_eq!(Actor::parse(text), Err(ActorError), "{text:?}");
        }
        assert!(Actor::server(&"n".repeat(65)).is_err());
        assert!(Actor::server(&Actor::this_node()).is_ok());
        assert_eq!(ChainHash::from_hex(&"ab".repeat(32)).unwrap().0, [0xab; 32]);
        assert!(ChainHash::from_hex(&"AB".repeat(32)).is_err());
    }
}
