//! The command line of a benchmark that has no criterion harness (`harness = false`).

/// How big a run to make: the value of the environment variable `var` if it is set, else
/// `full`, or `smoke` under `cargo bench -- --test` (CI's smoke run). `None` for
/// `cargo bench -- --list`, which expects no run at all.
pub fn run_size(var: &str, full: u64, smoke: u64) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return None;
    }
    let default = if args.iter().any(|a| a == "--test") {
        smoke
    } else {
        full
    };
    Some(
        std::env::var(var)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default),
    )
}
