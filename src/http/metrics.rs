//! Request counters and the hooks' latency histogram, rendered for `/metrics` (Prometheus
//! text format).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Services;
use crate::register::RefusalCode;
use crate::service::AuthError;
use crate::store::FailureKind;

/// Counters and a latency histogram, rendered in Prometheus text format.
///
/// `iotauth_hook_duration_seconds` times every request to a hook route (EMQX, VerneMQ,
/// go-auth, its superuser check included) from its arrival at the router to its reply, the
/// reading and parsing of its body included.
#[derive(Debug, Default)]
pub struct Metrics {
    logins_ok: AtomicU64,
    logins_refused: [AtomicU64; LoginRefusal::ALL.len()],
    registrations_issued: AtomicU64,
    registrations_refused: [AtomicU64; RefusalCode::ALL.len()],
    hook_latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    hook_latency_sum_us: AtomicU64,
    store_failures: [AtomicU64; FailureKind::ALL.len()],
}

/// Why a login was refused, as the `reason` label of `iotauth_logins_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginRefusal {
    Malformed,
    UnknownDevice,
    BadCredentials,
    Disabled,
    Outage,
}

impl LoginRefusal {
    const ALL: [Self; 5] = [
        Self::Malformed,
        Self::UnknownDevice,
        Self::BadCredentials,
        Self::Disabled,
        Self::Outage,
    ];

    fn of(e: &AuthError) -> Self {
        match e {
            AuthError::Malformed(_) => Self::Malformed,
            AuthError::UnknownDevice => Self::UnknownDevice,
            AuthError::Verify(_) => Self::BadCredentials,
            AuthError::Disabled => Self::Disabled,
            _ => Self::Outage,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownDevice => "unknown_device",
            Self::BadCredentials => "bad_credentials",
            Self::Disabled => "disabled",
            Self::Outage => "outage",
        }
    }
}

/// The hooks' latency histogram's upper bounds, in microseconds.
const LATENCY_BUCKETS_US: [u64; 9] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

/// Counts `value` in `counters`, one for each of a label's values `all`, in its order.
fn bump<T: PartialEq>(counters: &[AtomicU64], all: &[T], value: &T) {
    if let Some(at) = all.iter().position(|v| v == value) {
        counters[at].fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(super) fn count_login(&self) {
        self.logins_ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_login_refusal(&self, e: &AuthError) {
        bump(
            &self.logins_refused,
            &LoginRefusal::ALL,
            &LoginRefusal::of(e),
        );
    }

    pub(super) fn count_store_failure(&self, kind: Option<FailureKind>) {
        if let Some(kind) = kind {
            bump(&self.store_failures, &FailureKind::ALL, &kind);
        }
    }

    pub(super) fn count_registration(&self) {
        self.registrations_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_registration_refusal(&self, code: RefusalCode) {
        bump(&self.registrations_refused, &RefusalCode::ALL, &code);
    }

    fn observe_hook(&self, started: Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&le| micros <= le)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.hook_latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.hook_latency_sum_us
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE iotauth_logins_total counter");
        let _ = writeln!(
            out,
            "iotauth_logins_total{{result=\"ok\"}} {}",
            get(&self.logins_ok)
        );
        for (reason, count) in LoginRefusal::ALL.iter().zip(&self.logins_refused) {
            let _ = writeln!(
                out,
                "iotauth_logins_total{{result=\"refused\",reason=\"{}\"}} {}",
                reason.label(),
                get(count)
            );
        }
        let _ = writeln!(out, "# TYPE iotauth_registrations_total counter");
        let _ = writeln!(
            out,
            "iotauth_registrations_total{{result=\"issued\"}} {}",
            get(&self.registrations_issued)
        );
        for (code, count) in RefusalCode::ALL.iter().zip(&self.registrations_refused) {
            let _ = writeln!(
                out,
                "iotauth_registrations_total{{result=\"refused\",code=\"{}\"}} {}",
                code.code(),
                get(count)
            );
        }
        let _ = writeln!(out, "# TYPE iotauth_store_failures_total counter");
        for (kind, count) in FailureKind::ALL.iter().zip(&self.store_failures) {
            let _ = writeln!(
                out,
                "iotauth_store_failures_total{{kind=\"{kind}\"}} {}",
                get(count)
            );
        }
        let _ = writeln!(out, "# TYPE iotauth_hook_duration_seconds histogram");
        let mut cumulative = 0;
        for (le, count) in LATENCY_BUCKETS_US.iter().zip(&self.hook_latency) {
            cumulative += get(count);
            let _ = writeln!(
                out,
                "iotauth_hook_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *le as f64 / 1e6
            );
        }
        cumulative += self.hook_latency.last().map(get).unwrap_or_default();
        let _ = writeln!(
            out,
            "iotauth_hook_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "iotauth_hook_duration_seconds_sum {}",
            get(&self.hook_latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "iotauth_hook_duration_seconds_count {cumulative}");
        out
    }
}

/// Times a hook request from its arrival to its reply, whichever way its handler answers: the
/// hooks' `route_layer`.
pub(super) async fn time_hook(
    State(services): State<Arc<Services>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    services.metrics.observe_hook(started);
    response
}

/// `GET /metrics`.
pub(super) async fn metrics(State(services): State<Arc<Services>>) -> Response {
    let mut text = services.metrics.render();
    // Counted by the registrar, which switches the products off.
    let _ = writeln!(
        text,
        "# TYPE iotauth_registration_breaker_trips_total counter\n\
         iotauth_registration_breaker_trips_total {}",
        services.registrar.breaker_trips()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
