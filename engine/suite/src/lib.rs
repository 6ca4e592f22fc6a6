//! The engine test suite (our zdtm): run, checkpoint, kill, restore, check.
//!
//! Each case is a small program (progs/, built by build.rs) or an unmodified
//! interpreter/program with a deterministic output. The harness runs it under
//! `torpor run`, checkpoints it mid-run with `torpor checkpoint`, kills it
//! with SIGKILL, restores it with `torpor restore` and checks its output: the
//! program's own PASS/FAIL verdict and the stitched output against the
//! uninterrupted one. Everything the harness assumes about the CLI lives in
//! [`contract`].
#![forbid(unsafe_code)]

pub mod cases;
pub mod chaos;
pub mod contract;
pub mod output;
pub mod process;
pub mod scenario;
pub mod user;
pub mod workspace;

pub use cases::Case;
pub use scenario::{run_case, Variant};
