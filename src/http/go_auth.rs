//! mosquitto-go-auth's HTTP backend (`/hooks/go-auth/user`, `/superuser`, `/acl`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Services;
use super::hook::{
    HookParams, Params, Unreadable, Verdict, form_pairs, login_verdict_of, param, topic_verdict_of,
    unreadable,
};
use crate::acl::Access;

/// mosquitto-go-auth's reply in each of its `http_response_mode`s, which it cannot tell us
/// except through the URI: `?response_mode=json` for `json`; `status` and `text` (the default)
/// share one reply. Allowed: 200 with the body `ok` (text mode wants exactly that) or
/// `{"ok":true}`; denied: 403 (go-auth denies any 4xx cleanly); an outage: 503 (an error:
/// go-auth retries, then lets mosquitto decide).
fn reply(verdict: Verdict, query: Option<&str>) -> Response {
    // Read from the query alone: a request whose body cannot be read still asked for JSON.
    let json_mode = form_pairs(query.unwrap_or_default().as_bytes()).is_ok_and(|pairs| {
        pairs
            .iter()
            .any(|(k, v)| k == "response_mode" && v == "json")
    });
    let (status, text, ok) = match verdict {
        Verdict::Allow(_) => (StatusCode::OK, "ok", true),
        Verdict::Deny => (StatusCode::FORBIDDEN, "denied", false),
        Verdict::Undecided => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", false),
    };
    if json_mode {
        let body = if ok {
            json!({"ok": true})
        } else {
            json!({"ok": false, "error": text})
        };
        (status, Json(body)).into_response()
    } else {
        (status, text).into_response()
    }
}

/// go-auth's user check: JSON (POST, PUT or GET) or form (POST).
pub(super) async fn user(
    State(services): State<Arc<Services>>,
    RawQuery(query): RawQuery,
    HookParams(params): HookParams,
) -> Response {
    let verdict = login_verdict_of(&services, &params, "clientid").await;
    reply(verdict, query.as_deref())
}

/// Devices are never superusers.
pub(super) async fn superuser(RawQuery(query): RawQuery) -> Response {
    reply(Verdict::Deny, query.as_deref())
}

/// go-auth's ACL check.
pub(super) async fn acl(
    State(services): State<Arc<Services>>,
    RawQuery(query): RawQuery,
    HookParams(params): HookParams,
) -> Response {
    let verdict = params
        .as_ref()
        .map_err(|e| *e)
        .and_then(|params| topic_verdict_of(&services, params, access(params)?))
        .unwrap_or_else(unreadable);
    reply(verdict, query.as_deref())
}

/// go-auth's `acc` (Mosquitto's `MOSQ_ACL_*`; a JSON number, or digits in a form): 1 read
/// (receive on a subscription), 2 write (publish), 3 read and write, 4 subscribe.
fn access(params: &Params) -> Result<Access, Unreadable> {
    match &*param(params, "acc")? {
        "1" | "4" => Ok(Access::Subscribe),
        "2" => Ok(Access::Publish),
        "3" => Ok(Access::PublishAndSubscribe),
        _ => Err(Unreadable::Value("acc")),
    }
}
