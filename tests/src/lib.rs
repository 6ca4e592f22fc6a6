//! Test harnesses: a real Slurm cluster in a temp dir ([`cluster`]) and a tiny case runner ([`cases`]).
#![deny(unsafe_code)]

pub mod cases;
pub mod cluster;
pub mod resume;
pub mod resume_checks;
pub mod scenario;

pub use cluster::{Cluster, ClusterOptions, HarnessError, JobId, Out};
