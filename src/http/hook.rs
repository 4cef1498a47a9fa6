//! What the broker hooks share: their parameters, however a broker sends them, and their
//! verdicts.

use serde_json::Value;
use zeroize::Zeroizing;

use super::{RateLimitedLog, Services, UnreadBody};
use crate::acl::Access;
use crate::mqtt::parse_username;
use crate::register::percent_decode;
use crate::verified::DeviceIdentity;

/// The hooks' parameters as a broker sent them.
pub(super) type Params = serde_json::Map<String, Value>;

static HOOK_REFUSALS: RateLimitedLog = RateLimitedLog::new("hook request");

/// What a hook decides.
pub(super) enum Verdict {
    /// Allowed; for a login, as this device.
    Allow(Option<DeviceIdentity>),
    Deny,
    /// An outage: the broker should decide (or ask its next source).
    Undecided,
}

impl Verdict {
    /// Every verdict allows: allowed; one denies: denied; else undecided.
    pub(super) fn all(verdicts: impl IntoIterator<Item = Self>) -> Self {
        let mut all = Self::Allow(None);
        for verdict in verdicts {
            match verdict {
                Self::Deny => return Self::Deny,
                Self::Undecided => all = Self::Undecided,
                Self::Allow(_) => {}
            }
        }
        all
    }
}

/// Why a hook request could not be understood: answered as a deny in the broker's dialect.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(super) enum Unreadable {
    #[error("the request body was not read: {0}")]
    Body(&'static str),
    #[error("the parameters are neither a JSON object nor a form")]
    Encoding,
    #[error("parameter {0} appears more than once")]
    Duplicate(&'static str),
    #[error("parameter {0} has the wrong type")]
    Type(&'static str),
    #[error("parameter {0} has a value the hook does not know")]
    Value(&'static str),
}

/// The parameters of a hook request, whichever way its broker sends them: the query string
/// (EMQX's GET; any broker's configured URL), and a JSON object or a form body, told apart by
/// the body's first byte rather than the content type (EMQX 5.0–5.6 sends JSON labelled as a
/// form). A JSON `null` (VerneMQ's absent user name and password) is an absent parameter.
/// Never rejects: a request that cannot be understood is a deny, decided by the hook.
pub(super) struct HookParams(pub(super) Result<Params, Unreadable>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for HookParams {
    type Rejection = std::convert::Infallible;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        if let Some(unread) = request.extensions().get::<UnreadBody>() {
            return Ok(Self(Err(Unreadable::Body(unread.reason))));
        }
        let query = request.uri().query().unwrap_or_default().to_owned();
        let body = axum::body::Bytes::from_request(request, state).await;
        Ok(Self(match body {
            Ok(body) => Self::parse(&query, &body),
            Err(_) => Err(Unreadable::Body("over the size limit or cut short")),
        }))
    }
}

/// The parameter names the hooks read: a repeated one is refused by name (a value is never
/// echoed).
const HOOK_PARAMETERS: [&str; 11] = [
    "clientid",
    "client_id",
    "username",
    "password",
    "topic",
    "topics",
    "action",
    "access",
    "acc",
    "response_mode",
    "mountpoint",
];

fn parameter_name(key: &str) -> &'static str {
    HOOK_PARAMETERS
        .iter()
        .find(|name| **name == key)
        .copied()
        .unwrap_or("(another)")
}

impl HookParams {
    fn parse(query: &str, body: &[u8]) -> Result<Params, Unreadable> {
        let mut params = serde_json::Map::new();
        let mut add = |key: String, value: Value| {
            if value.is_null() {
                return Ok(());
            }
            match params.entry(key) {
                serde_json::map::Entry::Occupied(taken) => {
                    Err(Unreadable::Duplicate(parameter_name(taken.key())))
                }
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                    Ok(())
                }
            }
        };
        for (key, value) in form_pairs(query.as_bytes())? {
            add(key, Value::String(value))?;
        }
        if body.trim_ascii_start().starts_with(b"{") {
            let object: JsonObject =
                serde_json::from_slice(body).map_err(|_| Unreadable::Encoding)?;
            if let Some(repeated) = object.repeated {
                return Err(Unreadable::Duplicate(repeated));
            }
            for (key, value) in object.members {
                add(key, value)?;
            }
        } else {
            for (key, value) in form_pairs(body)? {
                add(key, Value::String(value))?;
            }
        }
        Ok(params)
    }
}

/// A JSON object as its members, and the first key it repeats, if any (`serde_json::Map`
/// keeps the last of repeated keys silently).
struct JsonObject {
    members: Params,
    repeated: Option<&'static str>,
}

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonObject, A::Error> {
                let mut object = JsonObject {
                    members: serde_json::Map::new(),
                    repeated: None,
                };
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if object.repeated.is_none() && object.members.contains_key(&key) {
                        object.repeated = Some(parameter_name(&key));
                    }
                    object.members.insert(key, value);
                }
                Ok(object)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The pairs of a form (`application/x-www-form-urlencoded`), decoded as strictly as a
/// registration form.
pub(super) fn form_pairs(form: &[u8]) -> Result<Vec<(String, String)>, Unreadable> {
    let form = form.trim_ascii();
    if form.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs = Vec::new();
    for pair in form.split(|b| *b == b'&').filter(|pair| !pair.is_empty()) {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let decode = |part| {
            percent_decode(part, "form")
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| Unreadable::Encoding)
        };
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

/// A parameter as text: absent (or null) is empty; a number or a boolean is its JSON text
/// (EMQX sends every value as a string, go-auth's `acc` and VerneMQ's `qos` are numbers).
pub(super) fn param<'a>(
    params: &'a Params,
    name: &'static str,
) -> Result<std::borrow::Cow<'a, str>, Unreadable> {
    match params.get(name) {
        None => Ok("".into()),
        Some(Value::String(text)) => Ok(text.as_str().into()),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => Ok(value.to_string().into()),
        Some(_) => Err(Unreadable::Type(name)),
    }
}

/// The login verdict of a request's client identifier (named `client_id_name` in this
/// broker's dialect), `username` and `password`.
pub(super) fn login_verdict_of(
    services: &Services,
    params: &Result<Params, Unreadable>,
    client_id_name: &'static str,
) -> impl Future<Output = Verdict> {
    let fields = params.as_ref().map_err(|e| *e).and_then(|params| {
        Ok((
            param(params, client_id_name)?.into_owned(),
            param(params, "username")?.into_owned(),
            Zeroizing::new(param(params, "password")?.into_owned()),
        ))
    });
    async move {
        match fields {
            Ok((client_id, username, password)) => {
                login_verdict(services, &client_id, &username, &password).await
            }
            Err(e) => unreadable(e),
        }
    }
}

/// A request that could not be understood: denied, and logged (rate-limited).
pub(super) fn unreadable(e: Unreadable) -> Verdict {
    if HOOK_REFUSALS.admit() {
        tracing::warn!(reason = %e, "hook request not understood: denied");
    }
    Verdict::Deny
}

async fn login_verdict(
    services: &Services,
    client_id: &str,
    username: &str,
    password: &str,
) -> Verdict {
    match services.login(client_id, username, password).await {
        Ok(who) => Verdict::Allow(Some(who.into_inner())),
        Err(e) if e.is_outage() => Verdict::Undecided,
        Err(_) => Verdict::Deny,
    }
}

/// The ACL verdict for the device a user name names (the broker authenticated it already).
pub(super) fn topic_verdict(
    services: &Services,
    username: &str,
    topic: &str,
    access: Access,
) -> Verdict {
    let Ok((dn, pk)) = parse_username(username) else {
        if HOOK_REFUSALS.admit() {
            tracing::warn!("topic refused: the user name is not a device's");
        }
        return Verdict::Deny;
    };
    let who = DeviceIdentity::new(pk, dn);
    if services.topics.allows(&who, topic, access) {
        Verdict::Allow(None)
    } else {
        if HOOK_REFUSALS.admit() {
            tracing::warn!(product_key = %pk, device_name = %dn, ?access, "topic refused");
        }
        Verdict::Deny
    }
}

/// The topic verdict of a request's `username` and `topic`.
pub(super) fn topic_verdict_of(
    services: &Services,
    params: &Params,
    access: Access,
) -> Result<Verdict, Unreadable> {
    Ok(topic_verdict(
        services,
        &param(params, "username")?,
        &param(params, "topic")?,
        access,
    ))
}
