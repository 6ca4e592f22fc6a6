//! The torpor SPANK plugin: `--checkpoint`/`--checkpoint-dir`, and a dispatcher on the Slurm context.
//!
//! | context | file | job |
//! |---|---|---|
//! | sbatch / salloc / srun (user) | [`options`], [`submit`] | refuse bad values before anything is submitted |
//! | slurmstepd (root, then user) | [`stepd`] | task environment: `LD_PRELOAD` + `TORPOR_*` |
//! | everything else | - | nothing |
//!
//! The unsafe glue Slurm needs (exported symbols, the option table, the `Plugin` impl) lives in
//! [`ffi`]; the rules (intervals, keys, messages) live in `torpor-conf`. No panic reaches Slurm:
//! `slurm-spank` wraps every callback in `catch_unwind` and so does our option callback.
#![deny(unsafe_code)]

mod ffi;
mod options;
mod state;
mod stepd;
mod submit;

use std::error::Error;

use slurm_spank::{Context, SpankHandle, SpankOption};
use torpor_conf::{PlugstackConfig, PlugstackError, OPTIONS};

type CbResult = Result<(), Box<dyn Error>>;

/// Per-process plugin state owned by the `slurm-spank` crate (one per sbatch, srun or slurmstepd).
#[derive(Default)]
pub struct Torpor {
    /// Step-wide environment computed in `user_init` (slurmstepd only), applied per task.
    step: Option<stepd::StepEnv>,
}

impl Torpor {
    /// `slurm_spank_init`: read plugstack.conf arguments. srun and slurmstepd take the options
    /// from the static `spank_options` table; sbatch/salloc ignore that table, so there they
    /// are registered here (and checked in `init_post_opt`).
    fn init(&mut self, spank: &mut SpankHandle) -> CbResult {
        let ctx = spank.context()?;
        if ctx == Context::Allocator {
            for o in OPTIONS {
                spank.register_option(
                    SpankOption::new(o.name())
                        .takes_value(o.arg())
                        .usage(o.usage()),
                )?;
            }
        }
        let site = match spank.plugin_argv() {
            Ok(args) => PlugstackConfig::parse(&args),
            Err(_) => Err(PlugstackError::NotKeyValue {
                arg: "<argument that is not valid UTF-8>".to_owned(),
            }),
        };
        if let Err(e) = &site {
            // Admin-facing: slurmd's log. Users only hear about it if they ask for --checkpoint.
            if matches!(ctx, Context::Remote | Context::Slurmd) {
                slurm_spank::spank_log_error!(
                    "torpor: {e}; torpor is disabled, jobs run without checkpointing"
                );
            }
        }
        state::with(|s| s.site = Some(site));
        Ok(())
    }

    /// `slurm_spank_init_post_opt`: all options are known; finish validation on the submit side.
    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> CbResult {
        match spank.context()? {
            Context::Allocator => submit::validate_allocator(spank),
            Context::Local => submit::validate(),
            _ => Ok(()),
        }
    }

    fn user_init(&mut self, spank: &mut SpankHandle) -> CbResult {
        stepd::user_init(self, spank)
    }

    fn task_init(&mut self, spank: &mut SpankHandle) -> CbResult {
        stepd::task_init(self, spank)
    }
}
