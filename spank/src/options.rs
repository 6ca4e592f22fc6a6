//! Slurm's option callback: remember each value, and on the submit side refuse a bad one at once.
//!
//! Refusing here (rather than only in `init_post_opt`) matters for a bare `--checkpoint`: it
//! swallows the next argument, and srun would otherwise stop on "No command given" without
//! saying why. An error from an option callback also stops sbatch/srun when the plugin is
//! loaded as `optional`, which `init_post_opt` errors do not.

use torpor_conf::options::CHECKPOINT;
use torpor_conf::{OptionError, UserOptions};

use crate::state;

/// Which option of [`torpor_conf::OPTIONS`] a callback is for (the table's `val` field).
pub(crate) const VAL_CHECKPOINT: i32 = 0;
pub(crate) const VAL_CHECKPOINT_DIR: i32 = 1;

/// Stores `value`; when `remote` is false (sbatch/srun, user context) also validates it.
/// `Err` carries the one-line message for the user.
pub(crate) fn on_option(val: i32, value: Option<String>, remote: bool) -> Result<(), String> {
    let value = value.unwrap_or_default();
    state::with(|s| {
        match val {
            VAL_CHECKPOINT => s.checkpoint = Some(value.clone()),
            VAL_CHECKPOINT_DIR => s.dir = Some(value.clone()),
            _ => return Err(format!("unexpected option callback {val}")),
        }
        if remote {
            return Ok(()); // slurmstepd re-checks in user_init and never refuses a step
        }
        let result: Result<(), OptionError> = match (val, &s.site) {
            (VAL_CHECKPOINT, Some(Ok(site))) => UserOptions::check_interval(&value, site).map(drop),
            (VAL_CHECKPOINT, Some(Err(e))) => {
                return Err(format!(
                    "--{}={value}: checkpointing is disabled on this cluster ({e})",
                    CHECKPOINT.name()
                ))
            }
            (VAL_CHECKPOINT_DIR, _) => UserOptions::check_dir(&value).map(drop),
            _ => Ok(()),
        };
        result.map_err(|e| e.to_string())
    })
}
