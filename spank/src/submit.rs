//! sbatch / salloc / srun side (user context): refuse bad option values before anything is submitted.

use slurm_spank::SpankHandle;
use torpor_conf::options::{CHECKPOINT, CHECKPOINT_DIR};
use torpor_conf::UserOptions;

use crate::{CbResult, Torpor};

/// Validates `--checkpoint` / `--checkpoint-dir` (from the command line, `#SBATCH` lines or
/// inherited `SLURM_SPANK_*` variables). Runs as the submitting user, so checking that the
/// user's directory exists is safe here, and only here.
pub(crate) fn validate(plugin: &Torpor, spank: &mut SpankHandle) -> CbResult {
    let checkpoint = value(spank, CHECKPOINT.name)?;
    let dir = value(spank, CHECKPOINT_DIR.name)?;
    if checkpoint.is_none() && dir.is_none() {
        return Ok(());
    }
    let Some(site) = plugin.site() else {
        return match (&checkpoint, &plugin.config) {
            (Some(v), Some(Err(e))) => Err(format!(
                "--checkpoint={v}: checkpointing is disabled on this cluster ({e})"
            )
            .into()),
            _ => Ok(()),
        };
    };
    if let Some(opts) = UserOptions::resolve(checkpoint.as_deref(), dir.as_deref(), site)? {
        opts.check_user_dir_exists()?;
    }
    Ok(())
}

fn value(spank: &SpankHandle, name: &str) -> Result<Option<String>, String> {
    match spank.get_option_value(name) {
        Ok(v) => Ok(v.map(|v| v.into_owned())),
        Err(_) => Err(format!(
            "--{name}={}: not valid UTF-8",
            spank.get_option_value_lossy(name).unwrap_or_default()
        )),
    }
}
