//! A Mosquitto 2.0 plugin (v5 plugin ABI) that authenticates devices with iotauth and applies
//! the per-device topic rule: the broker people already run, with one config line.
//!
//! ```sh
//! cargo build --release --example mosquitto_plugin --features mosquitto
//! ```
//! ```text
//! listener 1883
//! allow_anonymous false
//! plugin /path/to/target/release/examples/libmosquitto_plugin.so
//! plugin_opt_store sqlite:///var/lib/iotauth/iotauth.db
//! plugin_opt_max_skew_secs 900     # optional: a timestamp window for logins
//! plugin_opt_issuance once         # or redeliver-until-first-login
//! plugin_opt_cache_ttl_secs 600    # reuse a device read this long (0: off)
//! plugin_opt_actor plugin:mqtt-1   # this broker's name in the event log [plugin:HOST-PID]
//! plugin_opt_topic_template devices/{pk}/{dn}/#   # repeatable; replaces Alibaba's topics
//! plugin_opt_sessions_file /var/lib/mosquitto/iotauth-sessions  # with `persistence true`
//! plugin_opt_max_sessions 100000   # persistent sessions whose owner is kept
//! ```
//!
//! `max_skew_secs`, `issuance`, `cache_ttl_secs` and `topic_template` are parsed by
//! `iotauth::http::ServerConfig::set`, as `iotauth serve`'s flags are, so both front ends read
//! them the same way.
//!
//! A CONNECT with `authType=register` (MQTT dynamic registration, see `iotauth::manual::compatibility`) is verified
//! against the ProductSecret and accepted; the secret is then published on `/ext/register` to
//! that client alone, and the client is disconnected. `authType=regnwl` (registration without
//! pre-registration, where the product allows it) is served alike: the device is created if
//! need be, and a new ClientID and DeviceToken go to `/ext/regnwl`; the device's `connwl`
//! logins then present them.
//!
//! Sessions belong to devices, not to client ids (see `iotauth::manual::compatibility`), and the plugin keeps two
//! promises that Mosquitto, which keys sessions by client id, does not make by itself:
//! * a device has at most one live login: a new good login closes the older connection
//!   whatever the two client ids (Link SDK 4.x and the Node SDK change theirs on every connect);
//! * a client id whose session belongs to one device (live, or kept by Mosquitto after a
//!   connection without clean session) is refused to every other device, and to registration
//!   connections of other devices: nobody else resumes that session or drains its queue.
//!
//! See [`Sessions`] for what is remembered, and for how long.
//!
//! The plugin follows the store's event log (`iotauth::store::follow`): a change made by any
//! process of the store (the admin CLI, `iotauth serve`, another broker) drops the device's
//! cache entry within about 50 ms, and a device disabled, reset or deleted is disconnected
//! (every connection of it, logins and registrations) by the next tick callback.
//!
//! The FFI declarations are written by hand from Debian's `mosquitto_broker.h` and
//! `mosquitto_plugin.h` (2.0.11): a handful of functions and three event structs, less to audit
//! than bindgen output and no libclang at build time. This file is the only `unsafe` code of
//! the project: every callback catches panics (a panic denies), and a NULL or non-UTF-8 field
//! from the broker denies instead of reaching Rust strings.
//!
//! Mosquitto's callbacks are synchronous and the store is asynchronous: store calls run on a
//! small runtime owned by the plugin, each bounded by [`STORE_TIMEOUT`]; an outage or a
//! timeout denies, with a log line, and never blocks the broker longer than that. Mosquitto
//! calls every callback from its one main thread, so the session table changes in callback
//! order, and nothing happens in the broker between a check and the change that follows it.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use iotauth::http::{ConfigError, ServerConfig};
use iotauth::service::{Authenticator, RegisterError, Registrar};
use iotauth::store::{Actor, Store, follow};
use iotauth::{
    Access, ConnectKind, ConnectRequest, DeviceIdentity, DeviceName, ProductKey, TopicRule,
    parse_username,
};

/// How long a device read is reused (`plugin_opt_cache_ttl_secs`; 0 turns the cache off).
/// Long: the event log's follower drops an entry as soon as its device changes.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);
/// The longest a callback waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many persistent sessions may have a remembered owner (`plugin_opt_max_sessions`).
const DEFAULT_MAX_SESSIONS: usize = 100_000;

const MOSQ_EVT_ACL_CHECK: c_int = 2;
const MOSQ_EVT_BASIC_AUTH: c_int = 3;
const MOSQ_EVT_TICK: c_int = 9;
const MOSQ_EVT_DISCONNECT: c_int = 10;
const MOSQ_ERR_SUCCESS: c_int = 0;
const MOSQ_ERR_INVAL: c_int = 3;
const MOSQ_ERR_AUTH: c_int = 11;
const MOSQ_ERR_ACL_DENIED: c_int = 12;
const MOSQ_ACL_READ: c_int = 0x01;
const MOSQ_ACL_WRITE: c_int = 0x02;
const MOSQ_ACL_SUBSCRIBE: c_int = 0x04;
const MOSQ_ACL_UNSUBSCRIBE: c_int = 0x08;
const MOSQ_LOG_INFO: c_int = 1 << 0;
const MOSQ_LOG_NOTICE: c_int = 1 << 1;
const MOSQ_LOG_WARNING: c_int = 1 << 2;
const MOSQ_LOG_ERR: c_int = 1 << 3;

#[repr(C)]
pub struct MosquittoOpt {
    key: *const c_char,
    value: *const c_char,
}

#[repr(C)]
struct EvtBasicAuth {
    future: *mut c_void,
    client: *const c_void,
    username: *const c_char,
    password: *const c_char,
    future2: [*mut c_void; 4],
}

#[repr(C)]
struct EvtAclCheck {
    future: *mut c_void,
    client: *const c_void,
    topic: *const c_char,
    payload: *const c_void,
    properties: *mut c_void,
    access: c_int,
    payloadlen: u32,
    qos: u8,
    retain: bool,
    future2: [*mut c_void; 4],
}

#[repr(C)]
struct EvtDisconnect {
    future: *mut c_void,
    client: *const c_void,
    reason: c_int,
    future2: [*mut c_void; 4],
}

type Callback =
    unsafe extern "C" fn(event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int;

unsafe extern "C" {
    fn mosquitto_callback_register(
        identifier: *mut c_void,
        event: c_int,
        callback: Callback,
        event_data: *const c_void,
        userdata: *mut c_void,
    ) -> c_int;
    fn mosquitto_callback_unregister(
        identifier: *mut c_void,
        event: c_int,
        callback: Callback,
        event_data: *const c_void,
    ) -> c_int;
    fn mosquitto_client_id(client: *const c_void) -> *const c_char;
    fn mosquitto_client_username(client: *const c_void) -> *const c_char;
    fn mosquitto_client_clean_session(client: *const c_void) -> bool;
    fn mosquitto_client_protocol_version(client: *const c_void) -> c_int;
    fn mosquitto_log_printf(level: c_int, fmt: *const c_char, ...);
    fn mosquitto_malloc(size: usize) -> *mut c_void;
    fn mosquitto_broker_publish(
        clientid: *const c_char,
        topic: *const c_char,
        payloadlen: c_int,
        payload: *mut c_void,
        qos: c_int,
        retain: bool,
        properties: *mut c_void,
    ) -> c_int;
    fn mosquitto_kick_client_by_clientid(clientid: *const c_char, with_will: bool) -> c_int;
}

/// A connection, by the address of its `struct mosquitto`. Mosquitto frees a connection it
/// accepted only after the disconnect callback for it, which forgets the address, so an address
/// in [`Sessions`] always names the connection that was let in under it.
type Client = usize;

/// A registration whose secret is waiting to reach its client (see `iotauth::manual::compatibility`): published on
/// the first tick after the login (a directed message reaches only a connected client), then
/// the client is kicked once the message had time to leave.
struct Delivery {
    client: Client,
    client_id: CString,
    /// `/ext/register` (a secret) or `/ext/regnwl` (a ClientID and DeviceToken).
    topic: &'static CStr,
    /// Zeroized when the delivery is dropped; mosquitto gets its own copy.
    payload: zeroize::Zeroizing<String>,
    published: Option<Instant>,
    accepted: Instant,
}

/// How long after publishing the secret a registration client is disconnected.
const KICK_AFTER: Duration = Duration::from_millis(500);
/// How long a registration client may take to complete its connection.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const EXT_REGISTER: &CStr = c"/ext/register";
const EXT_REGNWL: &CStr = c"/ext/regnwl";

struct Plugin {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator<Arc<dyn Store>>,
    registrar: Registrar<Arc<dyn Store>>,
    topics: TopicRule,
    /// Secrets to deliver, in order.
    deliveries: Mutex<Vec<Delivery>>,
    /// Session owners and the live connections this plugin let in.
    sessions: Mutex<Sessions>,
    /// Devices disabled, reset or deleted (read from the event log by the follower's task),
    /// to be disconnected by the next tick on Mosquitto's thread.
    revoked: Arc<Mutex<Vec<DeviceIdentity>>>,
}

/// Who may resume which MQTT session, and the live connections this plugin let in.
///
/// Mosquitto keys a session by its client id and gives it to whoever presents that id next,
/// and a device signs whatever client-id core it likes; so the plugin remembers, per client
/// id, the device whose session it is ([`Sessions::check`]), and which connection is each
/// device's live login ([`Sessions::admit`] names the older one to close).
///
/// How long an owner is remembered:
/// * a clean session's owner, until that connection ends (its disconnect callback), as
///   Mosquitto ends the session then;
/// * a persistent session's owner (MQTT 3.1.1 with clean session off; every MQTT 5 session,
///   since a 2.0 plugin cannot read the session expiry interval), until the same device logs
///   in again on that client id with clean session on (MQTT 3.1.1), which makes Mosquitto drop
///   the old session. At most `max_persistent` of them: beyond, a login that asks for one more
///   persistent session is refused (clean sessions are not limited: Mosquitto's connection
///   limit bounds them). Mosquitto's own expiry (`persistent_client_expiration`, an MQTT 5
///   expiry interval) is invisible to a 2.0 plugin, so such an owner is kept after the session
///   expired: the client id stays reserved to its device, which is safe but counts;
/// * across a restart, only with a [`Journal`] (`plugin_opt_sessions_file`): the owners of
///   persistent sessions are read back at start, so a session that Mosquitto restores from
///   its persistence file is still refused to other devices. Without it, they are forgotten,
///   and a session restored by Mosquitto can be resumed by the first device that presents its
///   client id (the topic rule still keeps it from reading the other device's messages, but
///   it takes over the subscriptions and Mosquitto drops the queue).
struct Sessions {
    /// Client id → the session Mosquitto keeps under it.
    owners: HashMap<String, Session>,
    /// The connections this plugin let in and Mosquitto has not disconnected.
    connections: HashMap<Client, Connection>,
    /// Device → its live login (registration connections are not logins).
    logins: HashMap<DeviceIdentity, Client>,
    /// How many `owners` are persistent.
    persistent: usize,
    max_persistent: usize,
    journal: Option<Journal>,
    /// Lines to log once the table is unlocked (see [`sessions`]).
    warnings: Vec<String>,
}

struct Session {
    owner: DeviceIdentity,
    /// The live connection on this session.
    connection: Option<Client>,
    /// Mosquitto keeps the session after its connection ends (clean session off).
    persistent: bool,
}

struct Connection {
    client_id: String,
    device: DeviceIdentity,
    registration: bool,
}

/// A connection to let in: its client, its client id, who it proved to be, whether it asked
/// for a persistent session, and whether it is a registration connection.
struct Admission<'a> {
    client: Client,
    client_id: &'a str,
    device: DeviceIdentity,
    persistent: bool,
    registration: bool,
}

/// Why a session table refused a connection.
enum Refusal {
    /// The client id's session belongs to another device.
    Foreign(DeviceIdentity),
    /// `max_persistent` persistent sessions already.
    Full(usize),
    /// The owner of a new persistent session could not be written to the sessions file.
    Journal(std::io::Error),
}

impl Refusal {
    fn log(&self, what: &str, device: &DeviceIdentity) {
        let (pk, dn) = (device.product_key(), device.device_name());
        let reason = match self {
            Refusal::Foreign(owner) => format!(
                "the client id belongs to a session of {}/{}",
                owner.product_key(),
                owner.device_name()
            ),
            Refusal::Full(count) => format!(
                "{count} persistent sessions already (plugin_opt_max_sessions); \
                 a clean session would be accepted"
            ),
            Refusal::Journal(e) => format!("cannot record the session's owner: {e}"),
        };
        log(
            MOSQ_LOG_WARNING,
            &format!("{what} refused for {pk}/{dn}: {reason}"),
        );
    }
}

impl Sessions {
    fn new(
        max_persistent: usize,
        journal: Option<(Journal, HashMap<String, DeviceIdentity>)>,
    ) -> Self {
        let (journal, restored) = journal.map_or((None, HashMap::new()), |(j, o)| (Some(j), o));
        let owners: HashMap<String, Session> = restored
            .into_iter()
            .map(|(client_id, owner)| {
                let session = Session {
                    owner,
                    connection: None,
                    persistent: true,
                };
                (client_id, session)
            })
            .collect();
        Self {
            persistent: owners.len(),
            owners,
            connections: HashMap::new(),
            logins: HashMap::new(),
            max_persistent,
            journal,
            warnings: Vec::new(),
        }
    }

    /// Whether `device` may open a connection on `client_id`'s session.
    fn check(
        &self,
        client_id: &str,
        device: &DeviceIdentity,
        persistent: bool,
    ) -> Result<(), Refusal> {
        let session = self.owners.get(client_id);
        if let Some(session) = session
            && session.owner != *device
        {
            return Err(Refusal::Foreign(session.owner));
        }
        let new_persistent = persistent && !session.is_some_and(|s| s.persistent);
        if new_persistent && self.persistent >= self.max_persistent {
            return Err(Refusal::Full(self.persistent));
        }
        Ok(())
    }

    /// Records a connection that is about to be accepted; the older live login of the same
    /// device, to be closed, when it uses another client id (on the same client id, Mosquitto
    /// closes it itself).
    fn admit(&mut self, new: &Admission<'_>) -> Result<Option<(Client, String)>, Refusal> {
        // A connection at this address whose end was never reported: it is over.
        self.disconnected(new.client);
        self.check(new.client_id, &new.device, new.persistent)?;
        let was_persistent = self.owners.get(new.client_id).is_some_and(|s| s.persistent);
        if new.persistent && !was_persistent {
            // Written before the session exists, so that it is never persisted by Mosquitto
            // without its owner on disk.
            if let Some(journal) = &mut self.journal {
                journal
                    .owned(new.client_id, &new.device)
                    .map_err(Refusal::Journal)?;
            }
            self.persistent += 1;
        } else if !new.persistent && was_persistent {
            // A clean session replaces the persistent one: Mosquitto drops the old session now.
            self.persistent -= 1;
            self.forget_on_disk(new.client_id);
        }
        let session = Session {
            owner: new.device,
            connection: Some(new.client),
            persistent: new.persistent,
        };
        self.owners.insert(new.client_id.to_owned(), session);
        let connection = Connection {
            client_id: new.client_id.to_owned(),
            device: new.device,
            registration: new.registration,
        };
        self.connections.insert(new.client, connection);
        if new.registration {
            return Ok(None);
        }
        let older = self.logins.insert(new.device, new.client);
        Ok(older
            .filter(|&older| older != new.client)
            .and_then(|older| Some((older, self.connections.get(&older)?.client_id.clone())))
            .filter(|(_, client_id)| client_id != new.client_id))
    }

    /// Forgets a connection that ended, and its session unless Mosquitto keeps it.
    fn disconnected(&mut self, client: Client) {
        let Some(connection) = self.connections.remove(&client) else {
            return;
        };
        if self.logins.get(&connection.device) == Some(&client) {
            self.logins.remove(&connection.device);
        }
        if let Some(session) = self.owners.get_mut(&connection.client_id)
            && session.connection == Some(client)
        {
            session.connection = None;
            if !session.persistent {
                self.owners.remove(&connection.client_id);
            }
        }
    }

    /// The client ids of `device`'s live connections (logins and registrations).
    fn client_ids_of(&self, device: &DeviceIdentity) -> Vec<String> {
        self.connections
            .values()
            .filter(|c| c.device == *device)
            .map(|c| c.client_id.clone())
            .collect()
    }

    /// Whether `client` is a live registration connection.
    fn registering(&self, client: Client) -> bool {
        self.connections
            .get(&client)
            .is_some_and(|c| c.registration)
    }

    fn forget_on_disk(&mut self, client_id: &str) {
        if let Some(journal) = &mut self.journal
            && let Err(e) = journal.ended(client_id)
        {
            // Only an owner kept too long after a restart: the safe side.
            let warning = format!("cannot update the sessions file: {e}");
            self.warnings.push(warning);
        }
    }

    /// Rewrites the sessions file once it holds mostly outdated lines.
    fn compact(&mut self) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        if journal.lines <= 2 * self.persistent + 1024 {
            return;
        }
        let owners: Vec<_> = self
            .owners
            .iter()
            .filter(|(_, session)| session.persistent)
            .map(|(client_id, session)| (client_id.as_str(), &session.owner))
            .collect();
        if let Err(e) = journal.rewrite(&owners) {
            let warning = format!("cannot rewrite the sessions file: {e}");
            self.warnings.push(warning);
        }
    }
}

/// The owners of persistent sessions on disk (`plugin_opt_sessions_file`), so that they outlive
/// a restart as Mosquitto's persisted sessions do. After a first line [`JOURNAL_HEADER`], one
/// line per change: `+ HEX(client id) productKey deviceName` (a device owns a persistent
/// session) or `- HEX(client id)` (that session ended). Appended unbuffered at each change, so
/// that a crash of the broker loses nothing written; rewritten whole at start and when mostly
/// outdated (a new file, synced, then renamed over the old one). A torn last line is skipped.
struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file after the header.
    lines: usize,
}

const JOURNAL_HEADER: &str = "iotauth-sessions 1";

impl Journal {
    /// Reads the owners `path` records (none if it does not exist), and rewrites it.
    fn open(path: &Path) -> Result<(Self, HashMap<String, DeviceIdentity>), String> {
        let mut owners = HashMap::new();
        let mut skipped = 0;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                // Only whole lines: a torn last one could still parse, as a shorter name.
                let mut lines = text.split_inclusive('\n').map(|l| l.strip_suffix('\n'));
                if lines
                    .next()
                    .is_some_and(|first| first != Some(JOURNAL_HEADER))
                {
                    return Err(format!(
                        "{} is not an iotauth sessions file",
                        path.display()
                    ));
                }
                for line in lines {
                    match line.and_then(Change::parse) {
                        Some(Change::Owned(client_id, owner)) => {
                            owners.insert(client_id, owner);
                        }
                        Some(Change::Ended(client_id)) => {
                            owners.remove(&client_id);
                        }
                        None => skipped += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        if skipped > 0 {
            log(
                MOSQ_LOG_WARNING,
                &format!("{}: {skipped} unreadable lines skipped", path.display()),
            );
        }
        let restored: Vec<_> = owners
            .iter()
            .map(|(id, owner)| (id.as_str(), owner))
            .collect();
        let file = Self::write_new(path, &restored)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let journal = Self {
            path: path.to_owned(),
            file,
            lines: owners.len(),
        };
        Ok((journal, owners))
    }

    fn owned(&mut self, client_id: &str, owner: &DeviceIdentity) -> std::io::Result<()> {
        let line = format!(
            "+ {} {} {}\n",
            hex::encode(client_id),
            owner.product_key(),
            owner.device_name()
        );
        self.append(&line)
    }

    fn ended(&mut self, client_id: &str) -> std::io::Result<()> {
        self.append(&format!("- {}\n", hex::encode(client_id)))
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        self.lines += 1;
        Ok(())
    }

    fn rewrite(&mut self, owners: &[(&str, &DeviceIdentity)]) -> std::io::Result<()> {
        self.file = Self::write_new(&self.path, owners)?;
        self.lines = owners.len();
        Ok(())
    }

    /// Replaces `path` with `owners`; the file opened for appending.
    fn write_new(path: &Path, owners: &[(&str, &DeviceIdentity)]) -> std::io::Result<File> {
        let mut text = format!("{JOURNAL_HEADER}\n");
        for (client_id, owner) in owners {
            let (pk, dn) = (owner.product_key(), owner.device_name());
            text.push_str(&format!("+ {} {pk} {dn}\n", hex::encode(client_id)));
        }
        let mut new = path.as_os_str().to_owned();
        new.push(".new");
        let mut file = File::create(&new)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&new, path)?;
        OpenOptions::new().append(true).open(path)
    }
}

/// One line of a [`Journal`].
enum Change {
    Owned(String, DeviceIdentity),
    Ended(String),
}

impl Change {
    fn parse(line: &str) -> Option<Self> {
        let client_id = |hex: &str| String::from_utf8(hex::decode(hex).ok()?).ok();
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["+", id, pk, dn] => {
                let owner =
                    DeviceIdentity::new(ProductKey::new(pk).ok()?, DeviceName::new(dn).ok()?);
                Some(Change::Owned(client_id(id)?, owner))
            }
            ["-", id] => Some(Change::Ended(client_id(id)?)),
            _ => None,
        }
    }
}

/// A lock that a panic elsewhere (caught by `guarded`) cannot leave unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the session table, then logs what it reported. Never a log line, nor a call
/// into the broker, while the table is locked: Mosquitto may publish a log line on
/// `$SYS/broker/log` and runs the disconnect callback inside a kick, and both callbacks lock
/// the table again, on this same thread.
fn sessions<R>(plugin: &Plugin, f: impl FnOnce(&mut Sessions) -> R) -> R {
    let (result, warnings) = {
        let mut sessions = lock(&plugin.sessions);
        let result = f(&mut sessions);
        (result, std::mem::take(&mut sessions.warnings))
    };
    for warning in warnings {
        log(MOSQ_LOG_WARNING, &warning);
    }
    result
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();
const CALLBACKS: [(c_int, Callback); 4] = [
    (MOSQ_EVT_BASIC_AUTH, basic_auth as Callback),
    (MOSQ_EVT_ACL_CHECK, acl_check),
    (MOSQ_EVT_TICK, tick),
    (MOSQ_EVT_DISCONNECT, disconnect),
];
/// The broker's identifier for this plugin, kept for unregistering (an address, as usize).
static IDENTIFIER: OnceLock<usize> = OnceLock::new();

fn log(level: c_int, message: &str) {
    let text = CString::new(format!("iotauth: {message}").replace('\0', " ")).unwrap_or_default();
    // SAFETY: a constant format string with one `%s`, and a NUL-terminated argument.
    unsafe { mosquitto_log_printf(level, c"%s".as_ptr(), text.as_ptr()) };
}

/// A C string from the broker as UTF-8; `None` for NULL or invalid UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the returned borrow.
unsafe fn text<'a>(ptr: *const c_char) -> Option<&'a str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(ptr) }.to_str().ok()
}

/// Runs `body`, turning a panic into `denied` so that no unwind crosses into C; then writes
/// the library's queued log lines.
fn guarded(denied: c_int, body: impl FnOnce() -> c_int) -> c_int {
    let rc = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log(MOSQ_LOG_ERR, "a callback panicked; denied");
        denied
    });
    write_library_lines();
    rc
}

/// The library's `warn` lines not yet in Mosquitto's log, oldest first. The library may log
/// from any thread (a runtime worker), and Mosquitto's log is called from its own thread only:
/// the lines wait here until a callback ([`guarded`]) writes them.
static LIBRARY_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The most lines waiting; more are dropped until the queue is written.
const MAX_LIBRARY_LINES: usize = 64;

/// One formatted line of the library's log, queued for Mosquitto's log when dropped.
struct LibraryLine(Vec<u8>);

impl std::io::Write for LibraryLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LibraryLine {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0).trim_end().to_owned();
        let mut lines = lock(&LIBRARY_LINES);
        if !line.is_empty() && lines.len() < MAX_LIBRARY_LINES {
            lines.push(line);
        }
    }
}

/// Writes the library's queued lines to Mosquitto's log (from a callback: Mosquitto's thread).
fn write_library_lines() {
    let lines = std::mem::take(&mut *lock(&LIBRARY_LINES));
    for line in lines {
        log(MOSQ_LOG_WARNING, &line);
    }
}

/// The library's `warn` lines (a product switched off by the registration circuit breaker, a
/// master key file created beside the store), and only its own, go to Mosquitto's log. A
/// second plugin load in one process keeps the first one's.
fn forward_library_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("iotauth=warn"))
        .with_ansi(false)
        .without_time()
        .with_writer(|| LibraryLine(Vec::new()))
        .try_init();
}

fn plugin_options(options: *const MosquittoOpt, count: c_int) -> Result<Plugin, String> {
    forward_library_warnings();
    // The settings every front end shares are parsed by the library, as `iotauth serve`'s
    // flags are; only the cache's default differs (on here: Mosquitto asks on every connect).
    let mut config = ServerConfig::default();
    config.cache_ttl = DEFAULT_CACHE_TTL;
    if let Ok(actor) = Actor::plugin(&Actor::this_node()) {
        config.actor = actor;
    }
    let mut store = None;
    let (mut sessions_file, mut max_sessions) = (None, DEFAULT_MAX_SESSIONS);
    for i in 0..usize::try_from(count).unwrap_or_default() {
        // SAFETY: the broker passes `count` valid options.
        let option = unsafe { &*options.add(i) };
        // SAFETY: option keys and values are NUL-terminated strings owned by the broker.
        let (key, value) = unsafe { (text(option.key), text(option.value)) };
        match (key, value) {
            (Some("store"), Some(value)) => store = Some(value.to_owned()),
            (Some("sessions_file"), Some(value)) if !value.is_empty() => {
                sessions_file = Some(PathBuf::from(value));
            }
            (Some("max_sessions"), Some(value)) => {
                max_sessions = value
                    .parse()
                    .map_err(|_| "plugin_opt_max_sessions must be a number of sessions")?;
            }
            (Some(key), Some(value)) => match config.set(key, value) {
                Ok(()) => {}
                Err(ConfigError::Unknown) => {
                    return Err(format!("unknown option plugin_opt_{key}"));
                }
                Err(e) => return Err(format!("plugin_opt_{key}: {e}")),
            },
            _ => return Err("an option is not valid UTF-8".into()),
        }
    }
    let store_url =
        store.ok_or("plugin_opt_store is required (sqlite://PATH or postgres://...)")?;
    let journal = sessions_file.as_deref().map(Journal::open).transpose()?;
    match &journal {
        Some((_, owners)) => log(
            MOSQ_LOG_INFO,
            &format!("{} persistent session owners read back", owners.len()),
        ),
        None => log(
            MOSQ_LOG_NOTICE,
            "session owners are kept in memory only (no plugin_opt_sessions_file): \
             with persistence, a session restored after a restart has no known owner",
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("iotauth")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let store = runtime
        .block_on(config.open_store(&store_url))
        .map_err(|e| format!("cannot open the store: {}", iotauth::ErrorChain(&e)))?;
    let stores = config.service_stores(store);
    let revoked = Arc::new(Mutex::new(Vec::new()));
    {
        let revoked = revoked.clone();
        let _runtime = runtime.enter();
        follow(stores.logins.clone(), move |event| {
            if event.kind.revokes()
                && let Some(device_name) = event.device_name
            {
                lock(&revoked).push(DeviceIdentity::new(event.product_key, device_name));
            }
        });
    }
    Ok(Plugin {
        runtime,
        authenticator: Authenticator::new(stores.logins).with_freshness(config.freshness),
        registrar: Registrar::new(stores.decisions).with_policy(config.issuance),
        topics: config.topics,
        deliveries: Mutex::new(Vec::new()),
        sessions: Mutex::new(Sessions::new(max_sessions, journal)),
        revoked,
    })
}

/// # Safety
/// Called by Mosquitto with its supported versions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_version(count: c_int, versions: *const c_int) -> c_int {
    let count = usize::try_from(count).unwrap_or_default();
    // SAFETY: the broker passes `count` versions.
    let supported = (0..count).any(|i| unsafe { *versions.add(i) } == 5);
    if supported { 5 } else { -1 }
}

/// # Safety
/// Called by Mosquitto once, with its plugin identifier and the `plugin_opt_*` options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_init(
    identifier: *mut c_void,
    _userdata: *mut *mut c_void,
    options: *const MosquittoOpt,
    count: c_int,
) -> c_int {
    guarded(MOSQ_ERR_INVAL, || {
        let plugin = match plugin_options(options, count) {
            Ok(plugin) => plugin,
            Err(reason) => {
                log(MOSQ_LOG_ERR, &format!("not loaded: {reason}"));
                return MOSQ_ERR_INVAL;
            }
        };
        if PLUGIN.set(plugin).is_err() || IDENTIFIER.set(identifier as usize).is_err() {
            log(MOSQ_LOG_ERR, "not loaded: loaded twice");
            return MOSQ_ERR_INVAL;
        }
        for (event, callback) in CALLBACKS {
            // SAFETY: a valid identifier from the broker and a callback of the right type.
            let rc = unsafe {
                mosquitto_callback_register(
                    identifier,
                    event,
                    callback,
                    std::ptr::null(),
                    std::ptr::null_mut(),
                )
            };
            if rc != MOSQ_ERR_SUCCESS {
                log(
                    MOSQ_LOG_ERR,
                    &format!("cannot register callback for event {event}: {rc}"),
                );
                return rc;
            }
        }
        log(
            MOSQ_LOG_INFO,
            "loaded: per-device logins, one live login per device, sessions kept to their \
             device, MQTT dynamic registration, topic rule",
        );
        MOSQ_ERR_SUCCESS
    })
}

/// # Safety
/// Called by Mosquitto once, at shutdown.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_cleanup(
    _userdata: *mut c_void,
    _options: *const MosquittoOpt,
    _count: c_int,
) -> c_int {
    if let Some(&identifier) = IDENTIFIER.get() {
        for (event, callback) in CALLBACKS {
            // SAFETY: unregistering what init registered, with the same identifier.
            unsafe {
                mosquitto_callback_unregister(
                    identifier as *mut c_void,
                    event,
                    callback,
                    std::ptr::null(),
                )
            };
        }
    }
    MOSQ_ERR_SUCCESS
}

/// What a CONNECT carries, read from the broker's event.
struct Connect<'a> {
    client: Client,
    client_id: &'a str,
    username: &'a str,
    password: &'a str,
    persistent: bool,
}

unsafe extern "C" fn basic_auth(
    _event: c_int,
    event_data: *mut c_void,
    _userdata: *mut c_void,
) -> c_int {
    guarded(MOSQ_ERR_AUTH, || {
        let Some(plugin) = PLUGIN.get() else {
            return MOSQ_ERR_AUTH;
        };
        if event_data.is_null() {
            return MOSQ_ERR_AUTH;
        }
        // SAFETY: for MOSQ_EVT_BASIC_AUTH the broker passes a `mosquitto_evt_basic_auth`, valid
        // for the duration of the call (checked non-NULL above).
        let event = unsafe { &*(event_data as *const EvtBasicAuth) };
        if event.client.is_null() {
            return MOSQ_ERR_AUTH;
        }
        // SAFETY: a live client (non-NULL) whose strings are NULL or NUL-terminated and outlive
        // this call; Mosquitto sets the client id, protocol and clean-session flag before this
        // event.
        let (client_id, username, password, clean, version) = unsafe {
            (
                text(mosquitto_client_id(event.client)),
                text(event.username),
                text(event.password),
                mosquitto_client_clean_session(event.client),
                mosquitto_client_protocol_version(event.client),
            )
        };
        let (Some(client_id), Some(username), Some(password)) = (client_id, username, password)
        else {
            log(
                MOSQ_LOG_WARNING,
                "login refused: missing or non-UTF-8 credentials",
            );
            return MOSQ_ERR_AUTH;
        };
        let connect = Connect {
            client: event.client as Client,
            client_id,
            username,
            password,
            // An MQTT 5 session outlives its connection when its expiry interval is not 0, which
            // a 2.0 plugin cannot read, whatever clean start says: counted as persistent.
            persistent: !clean || version == 5,
        };
        match ConnectRequest::parse(client_id, username, password).map(|r| r.kind()) {
            Ok(kind @ (ConnectKind::Register | ConnectKind::RegisterNoPreregistration)) => {
                register(plugin, &connect, kind)
            }
            _ => login(plugin, &connect),
        }
    })
}

/// Waits for `future` on the plugin's runtime, at most [`STORE_TIMEOUT`].
fn bounded<F: std::future::Future>(plugin: &Plugin, future: F) -> Option<F::Output> {
    plugin
        .runtime
        .block_on(async { tokio::time::timeout(STORE_TIMEOUT, future).await })
        .ok()
}

fn login(plugin: &Plugin, connect: &Connect<'_>) -> c_int {
    let who = match bounded(
        plugin,
        plugin
            .authenticator
            .authenticate(connect.client_id, connect.username, connect.password),
    ) {
        Some(Ok(who)) => who.into_inner(),
        Some(Err(e)) => {
            log(
                MOSQ_LOG_WARNING,
                &format!("login refused: {}", iotauth::ErrorChain(&e)),
            );
            return MOSQ_ERR_AUTH;
        }
        None => {
            log(
                MOSQ_LOG_ERR,
                "login refused: the store did not answer in time",
            );
            return MOSQ_ERR_AUTH;
        }
    };
    let admission = Admission {
        client: connect.client,
        client_id: connect.client_id,
        device: who,
        persistent: connect.persistent,
        registration: false,
    };
    let older = match sessions(plugin, |s| s.admit(&admission)) {
        Ok(older) => older,
        Err(refusal) => {
            refusal.log("login", &who);
            return MOSQ_ERR_AUTH;
        }
    };
    let (pk, dn) = (who.product_key(), who.device_name());
    log(MOSQ_LOG_INFO, &format!("login accepted: {pk}/{dn}"));
    if let Some((older, older_id)) = older {
        close_older_login(plugin, older, &older_id);
        log(
            MOSQ_LOG_INFO,
            &format!("older connection of {pk}/{dn} closed: the device logged in again"),
        );
    }
    MOSQ_ERR_SUCCESS
}

/// Disconnects a device's older login (see `iotauth::manual::compatibility`), without its will: the device is
/// alive, on its new connection.
fn close_older_login(plugin: &Plugin, older: Client, client_id: &str) {
    let Ok(id) = CString::new(client_id) else {
        return;
    };
    // SAFETY: a NUL-terminated client id. The broker's disconnect callback for that client runs
    // inside this call; the session table is not locked here.
    let rc = unsafe { mosquitto_kick_client_by_clientid(id.as_ptr(), false) };
    if rc != MOSQ_ERR_SUCCESS {
        // Not connected any more without our having heard of it: forget it all the same.
        sessions(plugin, |s| s.disconnected(older));
    }
}

/// What a registration issued: for whom, where it goes, and the payload.
struct Issued {
    device: DeviceIdentity,
    topic: &'static CStr,
    payload: zeroize::Zeroizing<String>,
    what: &'static str,
}

/// MQTT dynamic registration (`authType=register`: the device's secret; `regnwl`: a new
/// ClientID and DeviceToken, the device created if need be): the connection is accepted and
/// what was issued queued for delivery to it alone.
fn register(plugin: &Plugin, connect: &Connect<'_>, kind: ConnectKind) -> c_int {
    // The session check comes first, on the identity claimed in the user name: a refusal
    // after the store issued the secret would lose it (issued once).
    if let Ok((dn, pk)) = parse_username(connect.username) {
        let claimed = DeviceIdentity::new(pk, dn);
        let checked = sessions(plugin, |s| {
            s.check(connect.client_id, &claimed, connect.persistent)
        });
        if let Err(refusal) = checked {
            refusal.log("registration", &claimed);
            return MOSQ_ERR_AUTH;
        }
    }
    let refused = |e: RegisterError| {
        log(
            MOSQ_LOG_WARNING,
            &format!(
                "registration refused: {} (code {})",
                iotauth::ErrorChain(&e),
                e.code().code()
            ),
        );
        MOSQ_ERR_AUTH
    };
    let request = match ConnectRequest::parse(connect.client_id, connect.username, connect.password)
    {
        Ok(request) => request,
        Err(e) => return refused(e.into()),
    };
    // The checks must be answered within STORE_TIMEOUT; the issue that follows is never cut
    // short: cancelled after its compare-and-set committed, it would have issued what no one
    // receives (the store's own limits bound it: SQLite's busy timeout, the pool's).
    let checked = bounded(plugin, async {
        if kind == ConnectKind::Register {
            plugin.registrar.check_request(&request).await
        } else {
            plugin.registrar.check_client_id_request(&request).await
        }
    });
    match checked {
        Some(Ok(_)) => {}
        Some(Err(e)) => return refused(e),
        None => {
            log(
                MOSQ_LOG_ERR,
                "registration refused: the store did not answer in time",
            );
            return MOSQ_ERR_AUTH;
        }
    }
    let issue = async {
        if kind == ConnectKind::Register {
            let issued = plugin.registrar.register_request(&request).await?;
            Ok(Issued {
                device: **issued.identity(),
                topic: EXT_REGISTER,
                payload: issued.into_ext_register_payload(),
                what: "device secret issued",
            })
        } else {
            let issued = plugin.registrar.register_client_id(&request).await?;
            Ok::<_, RegisterError>(Issued {
                device: **issued.identity(),
                topic: EXT_REGNWL,
                payload: issued.into_ext_regnwl_payload(),
                what: "ClientID and DeviceToken issued",
            })
        }
    };
    let issued = match plugin.runtime.block_on(issue) {
        Ok(issued) => issued,
        Err(e) => return refused(e),
    };
    let Ok(id) = CString::new(connect.client_id) else {
        return MOSQ_ERR_AUTH;
    };
    let who = issued.device;
    let admission = Admission {
        client: connect.client,
        client_id: connect.client_id,
        device: who,
        persistent: connect.persistent,
        registration: true,
    };
    if let Err(refusal) = sessions(plugin, |s| s.admit(&admission)) {
        refusal.log("registration", &who);
        return MOSQ_ERR_AUTH;
    }
    log(
        MOSQ_LOG_INFO,
        &format!(
            "{}: {}/{}",
            issued.what,
            who.product_key(),
            who.device_name()
        ),
    );
    lock(&plugin.deliveries).push(Delivery {
        client: connect.client,
        client_id: id,
        topic: issued.topic,
        payload: issued.payload,
        published: None,
        accepted: Instant::now(),
    });
    MOSQ_ERR_SUCCESS
}

/// Publishes queued secrets to their (still connected) clients and disconnects them
/// afterwards; rewrites the sessions file when it has grown.
unsafe extern "C" fn tick(
    _event: c_int,
    _event_data: *mut c_void,
    _userdata: *mut c_void,
) -> c_int {
    guarded(MOSQ_ERR_SUCCESS, || {
        let Some(plugin) = PLUGIN.get() else {
            return MOSQ_ERR_SUCCESS;
        };
        lock(&plugin.deliveries).retain_mut(|delivery| {
            // Only to the connection that registered: never to a later one on its client id.
            if !sessions(plugin, |s| s.registering(delivery.client)) {
                if delivery.published.is_none() {
                    log(
                        MOSQ_LOG_WARNING,
                        "registration client left before its secret was sent; not delivered",
                    );
                }
                return false;
            }
            match delivery.published {
                None if delivery.accepted.elapsed() > DELIVERY_TIMEOUT => {
                    log(
                        MOSQ_LOG_WARNING,
                        "the broker did not take the secret in time; not delivered",
                    );
                    finish(delivery);
                    false
                }
                None => {
                    delivery.published = publish(delivery).then(Instant::now);
                    true
                }
                Some(at) if at.elapsed() >= KICK_AFTER => {
                    finish(delivery);
                    false
                }
                Some(_) => true,
            }
        });
        sessions(plugin, Sessions::compact);
        disconnect_revoked(plugin);
        MOSQ_ERR_SUCCESS
    })
}

/// Disconnects every connection of the devices the event log named as disabled, reset or
/// deleted since the last tick.
fn disconnect_revoked(plugin: &Plugin) {
    let mut revoked = std::mem::take(&mut *lock(&plugin.revoked));
    // A device named twice (disabled, then deleted) is looked up once.
    revoked.sort_unstable();
    revoked.dedup();
    for device in revoked {
        let client_ids = sessions(plugin, |s| s.client_ids_of(&device));
        for client_id in client_ids {
            log(
                MOSQ_LOG_NOTICE,
                &format!(
                    "revoked: disconnecting {}/{}",
                    device.product_key(),
                    device.device_name()
                ),
            );
            let Ok(id) = CString::new(client_id) else {
                continue;
            };
            // SAFETY: called on Mosquitto's thread (a tick callback) with a NUL-terminated id.
            unsafe { mosquitto_kick_client_by_clientid(id.as_ptr(), false) };
        }
    }
}

/// Sends the secret to its client alone; whether the broker took the message.
fn publish(delivery: &Delivery) -> bool {
    let Ok(len) = c_int::try_from(delivery.payload.len()) else {
        return false;
    };
    // The broker frees the payload after use, so it must come from its allocator.
    // SAFETY: plain allocation of `payload.len()` bytes.
    let buffer = unsafe { mosquitto_malloc(delivery.payload.len()) };
    if buffer.is_null() {
        return false;
    }
    // SAFETY: `buffer` holds `payload.len()` bytes and does not overlap the payload.
    unsafe {
        std::ptr::copy_nonoverlapping(
            delivery.payload.as_ptr(),
            buffer.cast::<u8>(),
            delivery.payload.len(),
        )
    };
    // SAFETY: NUL-terminated strings and a broker-allocated buffer of `len` bytes. The call
    // fails only for invalid arguments or no memory; then these few bytes leak, once.
    let rc = unsafe {
        mosquitto_broker_publish(
            delivery.client_id.as_ptr(),
            delivery.topic.as_ptr(),
            len,
            buffer,
            0,
            false,
            std::ptr::null_mut(),
        )
    };
    rc == MOSQ_ERR_SUCCESS
}

/// Disconnects a registration client (still connected: the caller checked). The disconnect
/// callback forgets it.
fn finish(delivery: &Delivery) {
    // SAFETY: a NUL-terminated client id. The broker's disconnect callback runs inside this
    // call; it locks the session table, which the caller does not hold.
    unsafe { mosquitto_kick_client_by_clientid(delivery.client_id.as_ptr(), false) };
}

/// Forgets a connection that ended (and its session, unless Mosquitto keeps it). Mosquitto
/// calls it for every connection, refused ones included, before freeing it.
unsafe extern "C" fn disconnect(
    _event: c_int,
    event_data: *mut c_void,
    _userdata: *mut c_void,
) -> c_int {
    guarded(MOSQ_ERR_SUCCESS, || {
        let Some(plugin) = PLUGIN.get() else {
            return MOSQ_ERR_SUCCESS;
        };
        if event_data.is_null() {
            return MOSQ_ERR_SUCCESS;
        }
        // SAFETY: for MOSQ_EVT_DISCONNECT the broker passes a `mosquitto_evt_disconnect`, valid
        // for the duration of the call (checked non-NULL above). Only the client's address is
        // read, never the client.
        let client = unsafe { (*(event_data as *const EvtDisconnect)).client } as Client;
        sessions(plugin, |s| s.disconnected(client));
        MOSQ_ERR_SUCCESS
    })
}

unsafe extern "C" fn acl_check(
    _event: c_int,
    event_data: *mut c_void,
    _userdata: *mut c_void,
) -> c_int {
    guarded(MOSQ_ERR_ACL_DENIED, || {
        let Some(plugin) = PLUGIN.get() else {
            return MOSQ_ERR_ACL_DENIED;
        };
        if event_data.is_null() {
            return MOSQ_ERR_ACL_DENIED;
        }
        // SAFETY: for MOSQ_EVT_ACL_CHECK the broker passes a `mosquitto_evt_acl_check`, valid
        // for the duration of the call (checked non-NULL above).
        let event = unsafe { &*(event_data as *const EvtAclCheck) };
        if event.client.is_null() {
            return MOSQ_ERR_ACL_DENIED;
        }
        // SAFETY: a client (non-NULL) whose strings, like the event's, are NULL or
        // NUL-terminated and outlive this call.
        let (username, topic) = unsafe {
            (
                text(mosquitto_client_username(event.client)),
                text(event.topic),
            )
        };
        let access = event.access;
        if sessions(plugin, |s| s.registering(event.client as Client)) {
            // A registration connection receives its one message and does nothing else.
            let receiving = matches!(access, MOSQ_ACL_READ | MOSQ_ACL_SUBSCRIBE);
            let ext = [EXT_REGISTER, EXT_REGNWL].map(|t| t.to_str().unwrap_or_default());
            return if receiving && topic.is_some_and(|t| ext.contains(&t)) {
                MOSQ_ERR_SUCCESS
            } else {
                MOSQ_ERR_ACL_DENIED
            };
        }
        let (Some(username), Some(topic)) = (username, topic) else {
            return MOSQ_ERR_ACL_DENIED;
        };
        let Ok((dn, pk)) = parse_username(username) else {
            return MOSQ_ERR_ACL_DENIED;
        };
        let device = DeviceIdentity::new(pk, dn);
        let allowed = match access {
            MOSQ_ACL_WRITE => plugin.topics.allows(&device, topic, Access::Publish),
            MOSQ_ACL_READ | MOSQ_ACL_SUBSCRIBE => {
                plugin.topics.allows(&device, topic, Access::Subscribe)
            }
            MOSQ_ACL_UNSUBSCRIBE => true,
            _ => false,
        };
        if allowed {
            MOSQ_ERR_SUCCESS
        } else {
            log(
                MOSQ_LOG_WARNING,
                &format!("topic refused for {pk}/{dn} (access {access})"),
            );
            MOSQ_ERR_ACL_DENIED
        }
    })
}
