//! Log lines of refusals, rate-limited: anyone who reaches a port can be refused.

use std::time::{Duration, Instant};

/// Refusals logged per second at most, in each kind (logins, registrations, hook requests,
/// the broker's topics): anyone who reaches a port can be refused, and one SUBSCRIBE may carry
/// thousands of filters. The metrics count every refusal.
pub const REFUSAL_LINES_PER_SECOND: u32 = 20;

/// A log line budget per one-second window, for one kind of refusal.
pub(crate) struct RateLimitedLog {
    /// What the lines are, for the line that says how many were left out.
    kind: &'static str,
    /// (window start, lines in it, lines suppressed since the last logged one).
    window: std::sync::Mutex<Option<(Instant, u32, u64)>>,
}

impl RateLimitedLog {
    pub(crate) const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            window: std::sync::Mutex::new(None),
        }
    }

    /// Whether a line may be logged now. The first line refused in a second says so at once;
    /// the next line logged says how many were left out.
    pub(crate) fn admit(&self) -> bool {
        let now = Instant::now();
        let (admitted, first_refused, suppressed) = {
            let mut window = self
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (start, lines, suppressed) = window.get_or_insert((now, 0, 0));
            if now.duration_since(*start) >= Duration::from_secs(1) {
                (*start, *lines) = (now, 0);
            }
            if *lines >= REFUSAL_LINES_PER_SECOND {
                let first_refused = *lines == REFUSAL_LINES_PER_SECOND;
                *lines += u32::from(first_refused);
                *suppressed += 1;
                (false, first_refused, 0)
            } else {
                *lines += 1;
                (true, false, std::mem::take(suppressed))
            }
        };
        if first_refused {
            tracing::warn!(
                kind = self.kind,
                "refusals over the rate limit: the rest of this second's are not logged"
            );
        }
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                kind = self.kind,
                "refusals not logged (over the rate limit)"
            );
        }
        admitted
    }
}
