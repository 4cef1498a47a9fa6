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
//! plugin_opt_cache_ttl_secs 5      # reuse a device read this long (0: off)
//! ```
//!
//! A CONNECT with `authType=register` (MQTT dynamic registration, PROTOCOL.md §c) is verified
//! against the ProductSecret and accepted; the secret is then published on `/ext/register` to
//! that client alone, and the client is disconnected.
//!
//! The FFI declarations are written by hand from Debian's `mosquitto_broker.h` and
//! `mosquitto_plugin.h` (2.0.11): a handful of functions and two event structs, less to audit
//! than bindgen output and no libclang at build time. This file is the only `unsafe` code of
//! the project: every callback catches panics (a panic denies), and a NULL or non-UTF-8 field
//! from the broker denies instead of reaching Rust strings.
//!
//! Mosquitto's callbacks are synchronous and the store is asynchronous: store calls run on a
//! small runtime owned by the plugin, each bounded by [`STORE_TIMEOUT`]; an outage or a
//! timeout denies, with a log line, and never blocks the broker longer than that.

use std::collections::HashSet;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use iotauth::service::{Authenticator, Registrar};
use iotauth::store::{CachedStore, Store};
use iotauth::{
    ConnectKind, ConnectRequest, DeviceIdentity, Freshness, IssuancePolicy, TopicRule,
    parse_username,
};

/// How long a device read is reused (`plugin_opt_cache_ttl_secs`; 0 turns the cache off).
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);
/// The longest a callback waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

const MOSQ_EVT_ACL_CHECK: c_int = 2;
const MOSQ_EVT_BASIC_AUTH: c_int = 3;
const MOSQ_EVT_TICK: c_int = 9;
const MOSQ_ERR_SUCCESS: c_int = 0;
const MOSQ_ERR_INVAL: c_int = 3;
const MOSQ_ERR_AUTH: c_int = 11;
const MOSQ_ERR_ACL_DENIED: c_int = 12;
const MOSQ_ACL_READ: c_int = 0x01;
const MOSQ_ACL_WRITE: c_int = 0x02;
const MOSQ_ACL_SUBSCRIBE: c_int = 0x04;
const MOSQ_ACL_UNSUBSCRIBE: c_int = 0x08;
const MOSQ_LOG_INFO: c_int = 1 << 0;
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

/// A registration whose secret is waiting to reach its client (PROTOCOL.md §c.2): published on
/// the first tick after the login (a directed message reaches only a connected client), then
/// the client is kicked once the message had time to leave.
struct Delivery {
    client_id: CString,
    payload: Vec<u8>,
    published: Option<Instant>,
    accepted: Instant,
}

/// How long after publishing the secret a registration client is disconnected.
const KICK_AFTER: Duration = Duration::from_millis(500);
/// How long a registration client may take to complete its connection.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const EXT_REGISTER: &str = "/ext/register";

struct Plugin {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator<Arc<dyn Store>>,
    registrar: Registrar<Arc<dyn Store>>,
    topics: TopicRule,
    /// Secrets to deliver, in order.
    deliveries: Mutex<Vec<Delivery>>,
    /// Client ids of registration connections: they may only receive `/ext/register`.
    registering: Mutex<HashSet<String>>,
}

/// A lock that a panic elsewhere (caught by `guarded`) cannot leave unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

static PLUGIN: OnceLock<Plugin> = OnceLock::new();
const CALLBACKS: [(c_int, Callback); 3] = [
    (MOSQ_EVT_BASIC_AUTH, basic_auth as Callback),
    (MOSQ_EVT_ACL_CHECK, acl_check),
    (MOSQ_EVT_TICK, tick),
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

/// Runs `body`, turning a panic into `denied` so that no unwind crosses into C.
fn guarded(denied: c_int, body: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log(MOSQ_LOG_ERR, "a callback panicked; denied");
        denied
    })
}

fn plugin_options(options: *const MosquittoOpt, count: c_int) -> Result<Plugin, String> {
    let (mut store, mut max_skew_secs, mut issuance) = (None, None, IssuancePolicy::Once);
    let mut cache_ttl = DEFAULT_CACHE_TTL;
    for i in 0..usize::try_from(count).unwrap_or_default() {
        // SAFETY: the broker passes `count` valid options.
        let option = unsafe { &*options.add(i) };
        // SAFETY: option keys and values are NUL-terminated strings owned by the broker.
        let (key, value) = unsafe { (text(option.key), text(option.value)) };
        match (key, value) {
            (Some("store"), Some(value)) => store = Some(value.to_owned()),
            (Some("max_skew_secs"), Some(value)) => {
                let secs = value
                    .parse()
                    .map_err(|_| "plugin_opt_max_skew_secs must be a number of seconds")?;
                max_skew_secs = Some(secs);
            }
            (Some("cache_ttl_secs"), Some(value)) => {
                let secs = value
                    .parse()
                    .map_err(|_| "plugin_opt_cache_ttl_secs must be a number of seconds")?;
                cache_ttl = Duration::from_secs(secs);
            }
            (Some("issuance"), Some("once")) => issuance = IssuancePolicy::Once,
            (Some("issuance"), Some("redeliver-until-first-login")) => {
                issuance = IssuancePolicy::RedeliverUntilFirstLogin;
            }
            (Some("issuance"), _) => {
                return Err(
                    "plugin_opt_issuance must be once or redeliver-until-first-login".into(),
                );
            }
            (Some(key), _) => return Err(format!("unknown option plugin_opt_{key}")),
            _ => return Err("an option is not valid UTF-8".into()),
        }
    }
    let store_url =
        store.ok_or("plugin_opt_store is required (sqlite://PATH or postgres://...)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("iotauth")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let store = runtime
        .block_on(iotauth::store::open(&store_url))
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let store: Arc<dyn Store> = if cache_ttl.is_zero() {
        store
    } else {
        Arc::new(CachedStore::new(store, cache_ttl))
    };
    let freshness = max_skew_secs.map_or(Freshness::Unchecked, |max_skew_secs| Freshness::Window {
        max_skew_secs,
    });
    Ok(Plugin {
        runtime,
        authenticator: Authenticator::new(store.clone()).with_freshness(freshness),
        registrar: Registrar::new(store).with_policy(issuance),
        topics: TopicRule::alibaba(),
        deliveries: Mutex::new(Vec::new()),
        registering: Mutex::new(HashSet::new()),
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
            "loaded: per-device logins, MQTT dynamic registration, topic rule",
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

unsafe extern "C" fn basic_auth(
    _event: c_int,
    event_data: *mut c_void,
    _userdata: *mut c_void,
) -> c_int {
    guarded(MOSQ_ERR_AUTH, || {
        let Some(plugin) = PLUGIN.get() else {
            return MOSQ_ERR_AUTH;
        };
        // SAFETY: for MOSQ_EVT_BASIC_AUTH the broker passes a `mosquitto_evt_basic_auth`, valid
        // for the duration of the call; its strings are NULL or NUL-terminated.
        let (client_id, username, password) = unsafe {
            let event = &*(event_data as *const EvtBasicAuth);
            (
                text(mosquitto_client_id(event.client)),
                text(event.username),
                text(event.password),
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
        match ConnectRequest::parse(client_id, username, password).map(|r| r.kind()) {
            Ok(ConnectKind::Register) => register(plugin, client_id, username, password),
            _ => login(plugin, client_id, username, password),
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

fn login(plugin: &Plugin, client_id: &str, username: &str, password: &str) -> c_int {
    match bounded(
        plugin,
        plugin
            .authenticator
            .authenticate(client_id, username, password),
    ) {
        Some(Ok(who)) => {
            log(
                MOSQ_LOG_INFO,
                &format!(
                    "login accepted: {}/{}",
                    who.product_key(),
                    who.device_name()
                ),
            );
            MOSQ_ERR_SUCCESS
        }
        Some(Err(e)) => {
            log(MOSQ_LOG_WARNING, &format!("login refused: {e}"));
            MOSQ_ERR_AUTH
        }
        None => {
            log(
                MOSQ_LOG_ERR,
                "login refused: the store did not answer in time",
            );
            MOSQ_ERR_AUTH
        }
    }
}

/// MQTT dynamic registration: the connection is accepted and its secret queued for delivery.
fn register(plugin: &Plugin, client_id: &str, username: &str, password: &str) -> c_int {
    let issued = match bounded(
        plugin,
        plugin
            .registrar
            .register_connect(client_id, username, password),
    ) {
        Some(Ok(issued)) => issued,
        Some(Err(e)) => {
            log(
                MOSQ_LOG_WARNING,
                &format!("registration refused: {e} (code {})", e.code().code()),
            );
            return MOSQ_ERR_AUTH;
        }
        None => {
            log(
                MOSQ_LOG_ERR,
                "registration refused: the store did not answer in time",
            );
            return MOSQ_ERR_AUTH;
        }
    };
    let Ok(id) = CString::new(client_id) else {
        return MOSQ_ERR_AUTH;
    };
    let who = issued.identity();
    log(
        MOSQ_LOG_INFO,
        &format!(
            "device secret issued: {}/{}",
            who.product_key(),
            who.device_name()
        ),
    );
    lock(&plugin.registering).insert(client_id.to_owned());
    lock(&plugin.deliveries).push(Delivery {
        client_id: id,
        payload: issued.to_ext_register_payload().into_bytes(),
        published: None,
        accepted: Instant::now(),
    });
    MOSQ_ERR_SUCCESS
}

/// Publishes queued secrets to their (now connected) clients and disconnects them afterwards.
unsafe extern "C" fn tick(
    _event: c_int,
    _event_data: *mut c_void,
    _userdata: *mut c_void,
) -> c_int {
    guarded(MOSQ_ERR_SUCCESS, || {
        let Some(plugin) = PLUGIN.get() else {
            return MOSQ_ERR_SUCCESS;
        };
        lock(&plugin.deliveries).retain_mut(|delivery| match delivery.published {
            None if delivery.accepted.elapsed() > DELIVERY_TIMEOUT => {
                log(
                    MOSQ_LOG_WARNING,
                    "registration client never connected; secret not delivered",
                );
                finish(plugin, delivery);
                false
            }
            None => {
                delivery.published = publish(delivery).then(Instant::now);
                true
            }
            Some(at) if at.elapsed() >= KICK_AFTER => {
                finish(plugin, delivery);
                false
            }
            Some(_) => true,
        });
        MOSQ_ERR_SUCCESS
    })
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
            c"/ext/register".as_ptr(),
            len,
            buffer,
            0,
            false,
            std::ptr::null_mut(),
        )
    };
    rc == MOSQ_ERR_SUCCESS
}

/// Disconnects a registration client and forgets it.
fn finish(plugin: &Plugin, delivery: &Delivery) {
    // SAFETY: a NUL-terminated client id.
    unsafe { mosquitto_kick_client_by_clientid(delivery.client_id.as_ptr(), false) };
    if let Ok(id) = delivery.client_id.to_str() {
        lock(&plugin.registering).remove(id);
    }
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
        // SAFETY: for MOSQ_EVT_ACL_CHECK the broker passes a `mosquitto_evt_acl_check`, valid
        // for the duration of the call; its strings are NULL or NUL-terminated.
        let (client_id, username, topic, access) = unsafe {
            let event = &*(event_data as *const EvtAclCheck);
            (
                text(mosquitto_client_id(event.client)),
                text(mosquitto_client_username(event.client)),
                text(event.topic),
                event.access,
            )
        };
        if client_id.is_some_and(|id| lock(&plugin.registering).contains(id)) {
            // A registration connection receives its one message and does nothing else.
            let receiving = matches!(access, MOSQ_ACL_READ | MOSQ_ACL_SUBSCRIBE);
            return if receiving && topic == Some(EXT_REGISTER) {
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
            MOSQ_ACL_WRITE => plugin.topics.may_publish(&device, topic),
            MOSQ_ACL_READ | MOSQ_ACL_SUBSCRIBE => plugin.topics.may_subscribe(&device, topic),
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
