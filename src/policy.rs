//! Policy values: the freshness window and the clock it is checked against.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::sign::VerifyError;

/// A point in time as milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct UnixMillis(pub u64);

/// A source of the current time, injected so that the pure core never reads a clock.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that always says the same time (tests, offline verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub UnixMillis);

impl Clock for FixedClock {
    fn now(&self) -> UnixMillis {
        self.0
    }
}

impl Freshness {
    /// Below this a timestamp is read as seconds, at or above it as milliseconds: 10^11 seconds is
    /// the year 5138, 10^11 milliseconds is 1973. (Alibaba's Python SDKs send seconds, the rest
    /// milliseconds.)
    pub const SECONDS_BELOW: u64 = 100_000_000_000;
}

/// Whether a login's `timestamp` must be recent.
///
/// The default, [`Freshness::Unchecked`], is what the platform does: Alibaba's C SDKs send the
/// constant `2524608000000` (year 2050), so a window would lock them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Freshness {
    /// No window; the timestamp is only signed.
    #[default]
    Unchecked,
    /// The timestamp is required and must lie within `now ± max_skew_secs`.
    Window {
        /// The largest accepted distance from now, in seconds.
        max_skew_secs: u64,
    },
}

impl Freshness {
    /// Checks a verbatim `timestamp` (ASCII digits) against `now`.
    ///
    /// # Errors
    /// Under a window: [`VerifyError::MissingTimestamp`] without a timestamp,
    /// [`VerifyError::Stale`] outside the window (also for numbers too large to represent).
    ///
    /// ```
    /// # use iotauth::{Freshness, UnixMillis};
    /// let window = Freshness::Window { max_skew_secs: 900 };
    /// let now = UnixMillis(1_700_000_000_000);
    /// assert!(window.check(Some("1700000000"), now).is_ok()); // seconds
    /// assert!(window.check(Some("1700000500000"), now).is_ok()); // milliseconds
    /// assert!(window.check(Some("2524608000000"), now).is_err()); // the C SDKs' 2050
    /// assert!(Freshness::Unchecked.check(Some("2524608000000"), now).is_ok());
    /// ```
    pub fn check(self, timestamp: Option<&str>, now: UnixMillis) -> Result<(), VerifyError> {
        let Self::Window { max_skew_secs } = self else {
            return Ok(());
        };
        let text = timestamp.ok_or(VerifyError::MissingTimestamp)?;
        let value: u64 = text.parse().map_err(|_| VerifyError::Stale)?;
        let millis = if value < Freshness::SECONDS_BELOW {
            value * 1000
        } else {
            value
        };
        let skew = max_skew_secs.saturating_mul(1000);
        if millis.abs_diff(now.0) <= skew {
            Ok(())
        } else {
            Err(VerifyError::Stale)
        }
    }
}
