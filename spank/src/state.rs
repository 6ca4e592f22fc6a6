//! Process-wide plugin state, shared by Slurm's option callback and the SPANK callbacks.
//!
//! Slurm calls a plugin's callbacks one at a time; the mutex only makes that explicit. A task
//! child forked from slurmstepd inherits the state as it was at fork time.

use std::sync::{Mutex, PoisonError};

use torpor_conf::{PlugstackConfig, PlugstackError};

#[derive(Debug)]
pub(crate) struct State {
    /// plugstack.conf arguments, parsed in `init`; an error disables the plugin.
    pub site: Option<Result<PlugstackConfig, PlugstackError>>,
    /// Raw `--checkpoint` value as Slurm handed it to the option callback.
    pub checkpoint: Option<String>,
    /// Raw `--checkpoint-dir` value.
    pub dir: Option<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    site: None,
    checkpoint: None,
    dir: None,
});

/// Runs `f` with the state locked (a poisoned lock is still usable: the state is plain data).
pub(crate) fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}
