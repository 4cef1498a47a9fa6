//! The HTTP side of a self-hosted platform (feature `server`): Alibaba's dynamic-registration
//! endpoint and the authentication hooks of EMQX, VerneMQ and mosquitto-go-auth, as an axum
//! [`Router`] to serve alone (`iotauth serve`) or to mount in your own service.
//!
//! | route | dialect |
//! |---|---|
//! | `POST /auth/register/device` | Alibaba's HTTPS dynamic registration (form in, JSON out) |
//! | `POST /hooks/emqx/authn`, `POST /hooks/emqx/authz` | EMQX 5 HTTP authenticator / authorizer |
//! | `POST /hooks/vernemq` | VerneMQ webhooks (`vernemq-hook` header) |
//! | `POST /hooks/go-auth/user`, `/superuser`, `/acl` | mosquitto-go-auth HTTP backend, JSON params |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | liveness (the process answers); readiness (the store answers a round trip within [`STORE_TIMEOUT`], else 503); Prometheus text |
//!
//! A device learns nothing from a refusal beyond its kind; the log (`tracing`) says why, never
//! with a secret. A store outage is answered "ignore" / "next" / 5xx, so that the broker
//! decides, never as a bad password.

#[cfg(feature = "admin-api")]
mod admin;
mod config;
mod emqx;
mod go_auth;
mod hook;
mod metrics;
mod refusal_log;
mod register;
mod services;
mod vernemq;

pub use config::{ConfigError, ServerConfig, ServiceStores};
pub use metrics::Metrics;
pub use refusal_log::REFUSAL_LINES_PER_SECOND;
pub(crate) use refusal_log::RateLimitedLog;
pub use services::{
    Admission, ConnectRefusal, READINESS_INTERVAL, REGISTER_TOPIC, REGNWL_TOPIC, STORE_TIMEOUT,
    Services,
};

#[cfg(feature = "admin-api")]
pub use admin::{
    AdminApi, AdminToken, AdminTokenError, DEFAULT_PAGE_SIZE, ErrorBody, ErrorCode, MAX_PAGE_SIZE,
    admin_router,
};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};

/// Cap on any request body, in bytes (a registration form is at most 4096).
pub const MAX_BODY_LEN: usize = 16 * 1024;

/// The routes of the table above, over `services`.
pub fn router(services: Arc<Services>) -> Router {
    // Hooks answer every method a broker may be configured with, and an unreadable request
    // with a deny ([`UnreadBody`]); the other routes refuse it with its status.
    let any = MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT);
    let hooks = Router::new()
        .route("/hooks/emqx/authn", on(any, emqx::authn))
        .route("/hooks/emqx/authz", on(any, emqx::authz))
        .route("/hooks/vernemq", post(vernemq::hook))
        .route("/hooks/go-auth/user", on(any, go_auth::user))
        .route("/hooks/go-auth/superuser", on(any, go_auth::superuser))
        .route("/hooks/go-auth/acl", on(any, go_auth::acl))
        .route_layer(from_fn_with_state(services.clone(), metrics::time_hook));
    Router::new()
        .route("/auth/register/device", post(register::register_device))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route_layer(from_fn(refuse_unread_body))
        .merge(hooks)
        .layer(DefaultBodyLimit::max(MAX_BODY_LEN))
        .with_state(services)
}

/// 200 when the store answers a round trip within [`STORE_TIMEOUT`]; otherwise 503 and the
/// failure's kind (never its cause: this route needs no credentials). Not logged: a probe
/// repeats, and anyone may call it; for the same reason the answer is reused for
/// [`READINESS_INTERVAL`].
async fn readyz(State(services): State<Arc<Services>>) -> Response {
    match services.readiness().await {
        None => "ok\n".into_response(),
        Some(kind) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store failed ({kind})\n"),
        )
            .into_response(),
    }
}

/// A request body the HTTP listener did not read in full (too large, too slow, cut short):
/// the request reaches the router with an empty body and this extension, so that each route
/// answers in its own dialect — a hook with a deny (a status other than 200/204 would read as
/// "no opinion" to EMQX), the others with [`UnreadBody::status`] — and the listener closes the
/// connection after the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadBody {
    /// 413, 408 or 400.
    pub status: StatusCode,
    /// Why, for the reply and the log (one line, no line break).
    pub reason: &'static str,
}

/// Answers a request whose body was not read ([`UnreadBody`]) with its status, for the routes
/// that are not hooks.
async fn refuse_unread_body(request: axum::extract::Request, next: Next) -> Response {
    match request.extensions().get::<UnreadBody>() {
        Some(unread) => (unread.status, format!("{}\n", unread.reason)).into_response(),
        None => next.run(request).await,
    }
}
