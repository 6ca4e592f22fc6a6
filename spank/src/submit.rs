//! sbatch / salloc / srun side (user context): the checks that need every option at once.

use slurm_spank::SpankHandle;
use torpor_conf::options::{CHECKPOINT, CHECKPOINT_DIR};
use torpor_conf::UserOptions;

use crate::options::{on_option, VAL_CHECKPOINT, VAL_CHECKPOINT_DIR};
use crate::{state, CbResult};

/// sbatch/salloc: options were registered through `slurm-spank`, whose callback only caches
/// them; run them through our option check first, then the common validation.
pub(crate) fn validate_allocator(spank: &SpankHandle) -> CbResult {
    for (def, val) in [
        (&CHECKPOINT, VAL_CHECKPOINT),
        (&CHECKPOINT_DIR, VAL_CHECKPOINT_DIR),
    ] {
        if let Some(v) = spank.get_option_value_lossy(def.name()) {
            on_option(val, Some(v.into_owned()), false)?;
        }
    }
    validate()
}

/// Runs after all options (command line, `#SBATCH` lines, inherited `SLURM_SPANK_*`) were
/// handed to the option callback, which already refused bad single values. Runs as the
/// submitting user, so checking that the user's directory exists is safe here, and only here.
pub(crate) fn validate() -> CbResult {
    let (checkpoint, dir, site) = state::with(|s| {
        (
            s.checkpoint.clone(),
            s.dir.clone(),
            s.site.as_ref().and_then(|r| r.as_ref().ok()).cloned(),
        )
    });
    let Some(site) = site else {
        return Ok(()); // disabled: a --checkpoint was already refused by the option callback
    };
    if let Some(opts) = UserOptions::resolve(checkpoint.as_deref(), dir.as_deref(), &site)? {
        opts.check_user_dir_exists()?;
    }
    Ok(())
}
