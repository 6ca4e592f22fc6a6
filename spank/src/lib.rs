//! The torpor SPANK plugin: registers `--checkpoint`/`--checkpoint-dir` and dispatches each callback by Slurm context.
//!
//! | context | file | job |
//! |---|---|---|
//! | sbatch / salloc / srun (user) | [`submit`] | refuse bad values before anything is submitted |
//! | slurmstepd (root, then user) | [`stepd`] | task environment: `LD_PRELOAD` + `TORPOR_*` |
//! | everything else | - | nothing |
//!
//! The unsafe glue Slurm needs (exported symbols, the `Plugin` impl) lives in [`ffi`]; the
//! rules (intervals, keys, messages) live in `torpor-conf`. No callback panics into Slurm: the
//! `slurm-spank` crate wraps every callback in `catch_unwind`, and we return errors instead.
#![deny(unsafe_code)]

mod ffi;
mod stepd;
mod submit;

use std::error::Error;

use slurm_spank::{Context, SpankHandle, SpankOption};
use torpor_conf::{PlugstackConfig, PlugstackError, OPTIONS};

type CbResult = Result<(), Box<dyn Error>>;

/// Plugin state for one Slurm process (sbatch, srun, or one slurmstepd).
#[derive(Default)]
pub struct Torpor {
    /// plugstack.conf arguments, parsed in `init`; an error disables the plugin.
    config: Option<Result<PlugstackConfig, PlugstackError>>,
    /// Step-wide environment computed in `user_init` (slurmstepd only), applied per task.
    step: Option<stepd::StepEnv>,
}

impl Torpor {
    /// `slurm_spank_init`: register the options and read plugstack.conf arguments.
    fn init(&mut self, spank: &mut SpankHandle) -> CbResult {
        let ctx = spank.context()?;
        if matches!(ctx, Context::Local | Context::Remote | Context::Allocator) {
            for o in OPTIONS {
                spank
                    .register_option(SpankOption::new(o.name).takes_value(o.arg).usage(o.usage))?;
            }
        }
        let config = match spank.plugin_argv() {
            Ok(args) => PlugstackConfig::parse(&args),
            Err(_) => Err(PlugstackError::NotKeyValue {
                arg: "<argument that is not valid UTF-8>".to_owned(),
            }),
        };
        if let Err(e) = &config {
            // Admin-facing: slurmd's log. Users only hear about it if they ask for --checkpoint.
            if matches!(ctx, Context::Remote | Context::Slurmd) {
                slurm_spank::spank_log_error!(
                    "torpor: {e}; torpor is disabled, jobs run without checkpointing"
                );
            }
        }
        self.config = Some(config);
        Ok(())
    }

    /// `slurm_spank_init_post_opt`: options are known; validate them on the submit side.
    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> CbResult {
        match spank.context()? {
            Context::Allocator | Context::Local => submit::validate(self, spank),
            _ => Ok(()),
        }
    }

    fn user_init(&mut self, spank: &mut SpankHandle) -> CbResult {
        stepd::user_init(self, spank)
    }

    fn task_init(&mut self, spank: &mut SpankHandle) -> CbResult {
        stepd::task_init(self, spank)
    }

    /// The parsed site configuration, or `None` when plugstack.conf was refused.
    fn site(&self) -> Option<&PlugstackConfig> {
        self.config.as_ref().and_then(|c| c.as_ref().ok())
    }
}
