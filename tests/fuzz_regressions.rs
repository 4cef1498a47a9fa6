//! Every committed fuzz input, seeds (`fuzz/corpus/<target>/`) and regressions
//! (`fuzz/regressions/<target>/`), replayed through the fuzz targets' bodies under plain
//! `cargo test`.

use std::path::Path;

use iotauth_fuzzing::TARGETS;

fn replay(kind: &str, minimum: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    for (target, body) in TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.expect("directory entry").path())
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        inputs.sort();
        assert!(
            inputs.len() >= minimum,
            "{}: expected at least {minimum} inputs",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).expect("read input");
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{} fails on {}", target, input.display());
        }
    }
}

#[test]
fn every_seed_passes_its_target() {
    replay("corpus", 1);
}

#[test]
fn every_regression_input_passes_its_target() {
    replay("regressions", 0);
}
