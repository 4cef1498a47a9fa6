//! VerneMQ's webhooks (`/hooks/vernemq`, the hook named by the `vernemq-hook` header).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::Services;
use super::hook::{
    HookParams, Params, Unreadable, Verdict, login_verdict_of, param, topic_verdict,
    topic_verdict_of, unreadable,
};
use crate::acl::Access;

/// VerneMQ's webhooks (`vernemq-hook` header; JSON POST). Always 200 with `ok`, an error (a
/// deny), or `next` for an outage: VerneMQ reads any other status, and a missing `result`, as
/// a failure.
pub(super) async fn hook(
    State(services): State<Arc<Services>>,
    headers: HeaderMap,
    HookParams(params): HookParams,
) -> Json<Value> {
    let hook = headers
        .get("vernemq-hook")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let verdict = match hook {
        "auth_on_register" | "auth_on_register_m5" => {
            login_verdict_of(&services, &params, "client_id").await
        }
        "auth_on_publish" | "auth_on_publish_m5" => params
            .and_then(|params| topic_verdict_of(&services, &params, Access::Publish))
            .unwrap_or_else(unreadable),
        "auth_on_subscribe" | "auth_on_subscribe_m5" => params
            .and_then(|params| subscribe(&services, &params))
            .unwrap_or_else(unreadable),
        _ => unreadable(Unreadable::Value("vernemq-hook")),
    };
    Json(match verdict {
        Verdict::Allow(_) => json!({"result": "ok"}),
        Verdict::Deny => json!({"result": {"error": "not_allowed"}}),
        Verdict::Undecided => json!({"result": "next"}),
    })
}

/// Every topic of a subscribe (`topics: [{"topic": …, "qos": …}]`) must be allowed.
fn subscribe(services: &Services, params: &Params) -> Result<Verdict, Unreadable> {
    let username = param(params, "username")?;
    let Some(Value::Array(topics)) = params.get("topics") else {
        return Err(Unreadable::Type("topics"));
    };
    if topics.is_empty() {
        return Err(Unreadable::Value("topics"));
    }
    let verdicts = topics
        .iter()
        .map(|entry| match entry.get("topic") {
            Some(Value::String(topic)) => {
                Ok(topic_verdict(services, &username, topic, Access::Subscribe))
            }
            _ => Err(Unreadable::Type("topics")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verdict::all(verdicts))
}
