//! Names of the environment variables the SPANK plugin sets for the agent (and reads from Slurm).
//!
//! The plugin sets every `TORPOR_*` variable below in the task environment of jobs that asked
//! for checkpointing; the agent (`libtorpor_agent.so`) reads them. Jobs that did not ask get none.

/// Image root for this task, with `%u`/`%j` already expanded (absolute path).
pub const TORPOR_DIR: &str = "TORPOR_DIR";
/// Checkpoint interval in whole seconds (decimal, > 0).
pub const TORPOR_INTERVAL_SECS: &str = "TORPOR_INTERVAL_SECS";
/// Number of complete generations to keep (decimal, >= 1).
pub const TORPOR_KEEP: &str = "TORPOR_KEEP";
/// Every this many generations one is full, the others incremental (decimal, 1-16).
pub const TORPOR_FULL_EVERY: &str = "TORPOR_FULL_EVERY";
/// Slurm job id (decimal).
pub const TORPOR_JOB_ID: &str = "TORPOR_JOB_ID";
/// Slurm step id (decimal; the batch step is 4294967291 = 0xFFFFFFFB).
pub const TORPOR_STEP_ID: &str = "TORPOR_STEP_ID";
/// Global task rank within the step (decimal).
pub const TORPOR_TASK_ID: &str = "TORPOR_TASK_ID";
/// Job attempt: `SLURM_RESTART_COUNT`, or 0 when Slurm did not set it (first run).
pub const TORPOR_ATTEMPT: &str = "TORPOR_ATTEMPT";
/// Absolute path of the restorer program (`torpor-restore`).
pub const TORPOR_RESTORER: &str = "TORPOR_RESTORER";
/// Signal number that asks for an on-demand checkpoint (decimal).
pub const TORPOR_SIGNAL: &str = "TORPOR_SIGNAL";
/// Site policy when a task has images but none is valid: `fail` or `fresh`
/// (plugstack `on_bad_image=`; absent means `fail`).
pub const TORPOR_ON_BAD_IMAGE: &str = "TORPOR_ON_BAD_IMAGE";
/// Which launcher set the environment up; the plugin always sets [`CONTEXT_SLURM`].
pub const TORPOR_CONTEXT: &str = "TORPOR_CONTEXT";
/// The value of [`TORPOR_CONTEXT`] set by the SPANK plugin.
pub const CONTEXT_SLURM: &str = "slurm";

/// Every variable the plugin may set, for tests and for clearing stale values.
pub const ALL: &[&str] = &[
    TORPOR_DIR,
    TORPOR_INTERVAL_SECS,
    TORPOR_KEEP,
    TORPOR_FULL_EVERY,
    TORPOR_JOB_ID,
    TORPOR_STEP_ID,
    TORPOR_TASK_ID,
    TORPOR_ATTEMPT,
    TORPOR_RESTORER,
    TORPOR_SIGNAL,
    TORPOR_ON_BAD_IMAGE,
    TORPOR_CONTEXT,
];

/// The dynamic loader's preload list; the agent is appended to it.
pub const LD_PRELOAD: &str = "LD_PRELOAD";
/// Set by slurmstepd on requeued jobs (absent on the first run).
pub const SLURM_RESTART_COUNT: &str = "SLURM_RESTART_COUNT";
/// Set by slurmstepd in every task: the job owner's login name.
pub const SLURM_JOB_USER: &str = "SLURM_JOB_USER";

/// Name of the environment variable through which Slurm hands a SPANK option's value to
/// slurmstepd when the option callback does not run (e.g. `sbatch --export=NONE`):
/// `SLURM_SPANK__SLURM_SPANK_OPTION_<plugin>_<option>`, with `-` in the option name as `_`.
pub fn spank_option_env(option: &str) -> String {
    format!(
        "SLURM_SPANK__SLURM_SPANK_OPTION_{}_{}",
        crate::PLUGIN_NAME,
        option.replace('-', "_")
    )
}

/// The same variable as seen through `spank_job_control_getenv` (without `SLURM_SPANK_`).
pub fn spank_option_job_control_env(option: &str) -> String {
    format!(
        "_SLURM_SPANK_OPTION_{}_{}",
        crate::PLUGIN_NAME,
        option.replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_env_names() {
        assert_eq!(
            spank_option_env("checkpoint"),
            "SLURM_SPANK__SLURM_SPANK_OPTION_torpor_checkpoint"
        );
        assert_eq!(
            spank_option_env("checkpoint-dir"),
            "SLURM_SPANK__SLURM_SPANK_OPTION_torpor_checkpoint_dir"
        );
        assert_eq!(
            spank_option_job_control_env("checkpoint"),
            "_SLURM_SPANK_OPTION_torpor_checkpoint"
        );
    }

    #[test]
    fn all_names_are_distinct_and_prefixed() {
        let mut v = ALL.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), ALL.len());
        assert!(ALL.iter().all(|n| n.starts_with("TORPOR_")));
    }
}
