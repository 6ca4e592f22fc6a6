//! Shared configuration: checkpoint intervals, plugstack.conf arguments, user options, environment names.
//!
//! Everything here is pure parsing and validation, so the SPANK plugin (which runs inside
//! slurmstepd) stays thin and the rules are unit-tested without Slurm.
#![forbid(unsafe_code)]

pub mod env;
pub mod interval;
pub mod options;
pub mod plugstack;
pub mod signal;
pub mod template;

pub use interval::{Interval, IntervalError};
pub use options::{OptionDef, OptionError, UserOptions, OPTIONS};
pub use plugstack::{KeyDef, OnBadImage, PlugstackConfig, PlugstackError, KEYS};
pub use template::{DirTemplate, TemplateError};

/// The plugin's name as Slurm knows it (the first argument of `SPANK_PLUGIN!`).
pub const PLUGIN_NAME: &str = "torpor";
