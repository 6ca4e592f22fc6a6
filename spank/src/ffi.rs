//! The only unsafe code in the plugin: the symbols Slurm loads, the option table and the `Plugin` impl.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr};
use std::panic::catch_unwind;
use std::ptr;

use slurm_spank::spank_sys::spank_option;
use slurm_spank::{spank_log_error, Plugin, SpankHandle, SLURM_VERSION_NUMBER, SPANK_PLUGIN};
use torpor_conf::options::{CHECKPOINT, CHECKPOINT_DIR};

use crate::options::{on_option, VAL_CHECKPOINT, VAL_CHECKPOINT_DIR};
use crate::{CbResult, Torpor};

// Exports plugin_name/plugin_type/plugin_version and the slurm_spank_* callbacks, each wrapped
// by the crate in catch_unwind. The version is that of the headers we were built against:
// Slurm refuses a plugin whose major.minor differs from its own.
SPANK_PLUGIN!(b"torpor", SLURM_VERSION_NUMBER, Torpor);

/// Slurm's `struct spank_option spank_options[]`, terminated by an all-zero entry.
#[repr(transparent)]
pub struct OptionTable([spank_option; 3]);

// SAFETY: the table is never written; its pointers refer to 'static NUL-terminated strings
// and a plain function, so sharing it between threads is sound.
unsafe impl Sync for OptionTable {}

const fn entry(def: &torpor_conf::OptionDef, val: c_int) -> spank_option {
    spank_option {
        name: def.name_c.as_ptr(),
        arginfo: def.arg_c.as_ptr(),
        usage: def.usage_c.as_ptr(),
        has_arg: 1,
        val,
        cb: Some(option_callback),
    }
}

/// Read by Slurm's plugin loader (dlsym) in every context: the options from `torpor_conf::OPTIONS`.
#[no_mangle]
pub static spank_options: OptionTable = OptionTable([
    entry(&CHECKPOINT, VAL_CHECKPOINT),
    entry(&CHECKPOINT_DIR, VAL_CHECKPOINT_DIR),
    spank_option {
        name: ptr::null(),
        arginfo: ptr::null(),
        usage: ptr::null(),
        has_arg: 0,
        val: 0,
        cb: None,
    },
]);

/// Slurm's option callback: `0` accepts the value, `-1` refuses it (after logging why).
unsafe extern "C" fn option_callback(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    let value = if optarg.is_null() {
        None
    } else {
        // SAFETY: Slurm passes either NULL or a NUL-terminated string that outlives this call.
        Some(
            unsafe { CStr::from_ptr(optarg) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    let result = catch_unwind(move || on_option(val, value, remote != 0));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            spank_log_error!("torpor: {msg}");
            -1
        }
        Err(_) => {
            spank_log_error!("torpor: internal error while reading an option");
            -1
        }
    }
}

// SAFETY: `Plugin` is unsafe because task callbacks run in a child forked from slurmstepd.
// Torpor starts no threads, and its one lock (crate::state) is only taken inside callbacks,
// which Slurm runs one at a time, so a forked child never inherits it locked.
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
