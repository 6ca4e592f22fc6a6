//! Runs many named cases against one shared cluster inside a single `#[test]`, reporting every failure.
//!
//! Starting Slurm is slow, so each test binary starts one cluster and runs its cases here, in
//! order. A failing case does not stop the others; the test fails at the end listing them all.
//! `TORPOR_CASES=substring[,substring]` runs only the matching cases.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// A named case: a function that panics (e.g. through `assert!`) when the product is wrong.
pub type Case<'a, T> = (&'a str, &'a dyn Fn(&T));

/// Runs `cases` against `ctx`; panics at the end if any case failed.
pub fn run<T>(ctx: &T, cases: &[Case<'_, T>]) {
    let filter: Vec<String> = std::env::var("TORPOR_CASES")
        .ok()
        .map(|f| f.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in cases {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        eprintln!("case {name} ...");
        let result = catch_unwind(AssertUnwindSafe(|| case(ctx)));
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => eprintln!("case {name} ... ok ({secs:.1}s)"),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "non-string panic".to_owned());
                eprintln!("case {name} ... FAILED ({secs:.1}s): {msg}");
                failed.push(format!("{name}: {msg}"));
            }
        }
    }
    eprintln!("{ran} cases run, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "failed cases:\n  {}",
        failed.join("\n  ")
    );
}
