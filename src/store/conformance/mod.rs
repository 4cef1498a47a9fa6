//! The conformance suite every store adapter must pass (feature `conformance`).
//!
//! It reads as a specification in two parts:
//! - the **store contract** ([`products`], [`devices`], [`compare_and_set`],
//!   [`batch_inserts_all_or_none`], [`device_pages`], [`event_log_records_every_change`],
//!   [`race_event_log`], and the registration limits every process shares:
//!   [`race_registration_tokens`], [`refusals_switch_registration_off`],
//!   [`race_registration_randoms`]): what the traits promise, property by property;
//! - **service scenarios** (logins, both registration modes, the switch, disable and reset,
//!   the races of 64 tasks): the [`Authenticator`](crate::service::Authenticator),
//!   [`Registrar`](crate::service::Registrar) and [`Admin`](crate::service::Admin) on the
//!   store, as devices and operators use them. An adapter that keeps the contract passes them;
//!   they exist because a contract read loosely (a compare-and-set that reads then writes) is
//!   caught by a race sooner than by a property of one call.
//!
//! Each property is an async function that panics, like a test, when the store breaks it.
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to one `#[test]` per
//! property, named after it, so a failure names the property:
//!
//! ```no_run
//! mod memory_store_conforms {
//!     use std::sync::Arc;
//!     iotauth::store_conformance_tests!(|| async { Arc::new(iotauth::store::MemoryStore::new()) });
//! }
//! ```
//!
//! Every property creates its own products with random keys, so one shared database (e.g. a
//! PostgreSQL server) can run them all, even concurrently.
//!
//! # Stability
//! The property functions, [`run`] and the macro are public API: a new property may be added in
//! a minor release (an adapter that kept the traits' documented contract passes it); a
//! property's checks only grow with the contract's documentation. The helpers for
//! secrets-at-rest checks ([`hand_out_secrets`], [`no_secret_in_raw_rows`]) and
//! [`events_since`] are for adapters' own tests.

mod contract;
mod scenarios;
mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;

pub use contract::*;
pub use scenarios::*;
pub use support::{RACERS, events_since, hand_out_secrets, no_secret_in_raw_rows};

/// Runs one property on a store made by `new_store`, on its own multi-threaded Tokio runtime
/// (4 workers, as the races need), and panics with the property's name and the failed check
/// when the store breaks it. What [`store_conformance_tests!`](crate::store_conformance_tests)
/// calls in each test.
///
/// # Panics
/// When the property fails: `store conformance property `NAME` failed: MESSAGE`; when the
/// runtime cannot be built.
pub fn run<S, F, Fut, P, PFut>(property: &str, new_store: F, check: P)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = S>,
    P: FnOnce(S) -> PFut,
    PFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a Tokio runtime for the conformance suite");
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async { check(new_store().await).await })
    }));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(a panic without a message)");
        panic!("store conformance property `{property}` failed: {message}");
    }
}

/// Expands to one `#[test]` per property of the [store conformance suite](crate::store::conformance),
/// each named after its property; put it in a module of its own.
///
/// `new_store` is an expression of a closure (or function) `FnOnce() -> impl Future<Output = S>`
/// called once per test, where `S: ProductStore + DeviceStore + EventLog + Clone + 'static`
/// (an `Arc` of the store is the usual `S`). With `run_if: condition`, a test whose condition
/// is false returns at once (e.g. no database configured); the condition should say why.
///
/// ```no_run
/// mod memory_store_conforms {
///     use std::sync::Arc;
///     use iotauth::store::{CachedStore, MemoryStore};
///     iotauth::store_conformance_tests!(|| async {
///         Arc::new(CachedStore::new(MemoryStore::new(), std::time::Duration::from_secs(60)))
///     });
/// }
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($new_store:expr $(,)?) => {
        $crate::store_conformance_tests!($new_store, run_if: true);
    };
    ($new_store:expr, run_if: $ready:expr $(,)?) => {
        $crate::store_conformance_tests!(@each ($new_store) ($ready)
            // The store contract.
            products,
            devices,
            compare_and_set,
            batch_inserts_all_or_none,
            device_pages,
            event_log_records_every_change,
            race_event_log,
            race_registration_tokens,
            refusals_switch_registration_off,
            race_registration_randoms,
            // Service scenarios.
            login_lifecycle,
            registration_lifecycle,
            dynamic_registration_switch,
            disabled_devices,
            reset_and_reregister_give_new_secrets,
            race_issue_once_under_once,
            race_issue_once_under_redelivery,
            registration_without_pre_registration,
            race_client_ids,
            race_device_quota,
            registration_limits_of_the_registrar,
        );
    };
    (@each ($new_store:expr) ($ready:expr) $($property:ident,)*) => {
        $(
            #[test]
            fn $property() {
                if !$ready {
                    return;
                }
                $crate::store::conformance::run(
                    stringify!($property),
                    $new_store,
                    $crate::store::conformance::$property,
                );
            }
        )*
    };
}
