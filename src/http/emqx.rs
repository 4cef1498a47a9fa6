//! EMQX 5's HTTP authenticator and authorizer (`/hooks/emqx/authn`, `/hooks/emqx/authz`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::StrDeserializer;
use serde_json::{Value, json};

use super::Services;
use super::hook::{
    HookParams, Params, Unreadable, Verdict, login_verdict_of, param, topic_verdict_of, unreadable,
};
use crate::acl::Access;

/// EMQX 5's HTTP authenticator: POST (JSON or form) or GET (query). 200 with `allow` (and the
/// device as `client_attrs`), `deny`, or `ignore` for an outage.
pub(super) async fn authn(
    State(services): State<Arc<Services>>,
    HookParams(params): HookParams,
) -> Json<Value> {
    Json(
        match login_verdict_of(&services, &params, "clientid").await {
            Verdict::Allow(who) => {
                let attrs = who
                    .map(|w| json!({"productKey": w.product_key(), "deviceName": w.device_name()}));
                json!({"result": "allow", "is_superuser": false, "client_attrs": attrs.unwrap_or_default()})
            }
            Verdict::Deny => json!({"result": "deny"}),
            Verdict::Undecided => json!({"result": "ignore"}),
        },
    )
}

/// EMQX 5's HTTP authorizer: POST (JSON or form, also JSON labelled as a form) or GET
/// (query). Always 200 with `allow` or `deny`: any other status, or `ignore`, would let EMQX
/// fall through to `no_match`, which allows by default.
pub(super) async fn authz(
    State(services): State<Arc<Services>>,
    HookParams(params): HookParams,
) -> Json<Value> {
    let verdict = params
        .and_then(|params| topic_verdict_of(&services, &params, access(&params)?))
        .unwrap_or_else(unreadable);
    Json(json!({"result": if matches!(verdict, Verdict::Allow(_)) { "allow" } else { "deny" }}))
}

/// EMQX 5's `${action}` placeholder.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Publish,
    Subscribe,
}

/// What an authorization request asks for: EMQX 5's `action`, else (absent or empty) its
/// v4-compatible `access` (`1` subscribe, `2` publish). Both are read, so that either of the
/// wrong type is refused as such.
fn access(params: &Params) -> Result<Access, Unreadable> {
    let (action, access) = (param(params, "action")?, param(params, "access")?);
    if !action.is_empty() {
        let action: StrDeserializer<'_, serde::de::value::Error> =
            action.as_ref().into_deserializer();
        return match Action::deserialize(action) {
            Ok(Action::Publish) => Ok(Access::Publish),
            Ok(Action::Subscribe) => Ok(Access::Subscribe),
            Err(_) => Err(Unreadable::Value("action")),
        };
    }
    match &*access {
        "2" => Ok(Access::Publish),
        "1" => Ok(Access::Subscribe),
        "" => Err(Unreadable::Value("action")),
        _ => Err(Unreadable::Value("access")),
    }
}
