//! Alibaba's HTTPS dynamic registration: `POST /auth/register/device`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Services;

/// Alibaba's reply: HTTP 200 with a JSON `code` (one C SDK needs status 200 and a short body
/// with `Content-Length`, which axum sets for a complete body).
pub(super) async fn register_device(
    State(services): State<Arc<Services>>,
    body: axum::body::Bytes,
) -> Response {
    let outcome = services.registrar.register_form(&body).await;
    services.record_registration(&outcome);
    let reply = match outcome {
        Ok(issued) => issued.into_reply(),
        Err(e) => e.to_reply(),
    };
    let mut json = reply.to_json_exposing_secret();
    // The body's buffer leaves our hands here: hyper frees it once it is written.
    (
        [(header::CONTENT_TYPE, "application/json")],
        std::mem::take(&mut *json),
    )
        .into_response()
}
