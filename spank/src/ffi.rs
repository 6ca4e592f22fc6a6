//! The only unsafe code in the plugin: the symbols Slurm loads and the `Plugin` trait impl.
#![allow(unsafe_code)]

use slurm_spank::{spank_log_error, Plugin, SpankHandle, SLURM_VERSION_NUMBER, SPANK_PLUGIN};

use crate::{CbResult, Torpor};

// Exports plugin_name/plugin_type/plugin_version and the slurm_spank_* callbacks, each wrapped
// by the crate in catch_unwind. The version is that of the headers we were built against:
// Slurm refuses a plugin whose major.minor differs from its own.
SPANK_PLUGIN!(b"torpor", SLURM_VERSION_NUMBER, Torpor);

// SAFETY: `Plugin` is unsafe because task callbacks run in a child forked from slurmstepd.
// Torpor starts no threads and takes no locks of its own, so a forked child never inherits a
// lock held by another thread of ours. Callbacks we do not override are the crate's no-ops.
unsafe impl Plugin for Torpor {
    fn init(&mut self, spank: &mut SpankHandle) -> CbResult {
        Torpor::init(self, spank)
    }
    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> CbResult {
        Torpor::init_post_opt(self, spank)
    }
    fn user_init(&mut self, spank: &mut SpankHandle) -> CbResult {
        Torpor::user_init(self, spank)
    }
    fn task_init(&mut self, spank: &mut SpankHandle) -> CbResult {
        Torpor::task_init(self, spank)
    }
    /// No tracing subscriber: logging through `tracing` panics in sbatch's `exit()` (thread-local
    /// teardown). Everything goes through Slurm's own log functions instead.
    fn setup(&mut self, _spank: &mut SpankHandle) -> CbResult {
        Ok(())
    }
    /// One line, through Slurm: `sbatch: error: torpor: --checkpoint=banana: ...`.
    fn report_error(&self, _spank: &mut SpankHandle, error: &dyn std::error::Error) {
        spank_log_error!("torpor: {error}");
    }
}
