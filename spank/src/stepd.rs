//! slurmstepd side (remote context): put the agent and the `TORPOR_*` variables into the tasks of jobs that asked.
//!
//! `user_init` (once per step, euid = job user) resolves the request and the image root;
//! `task_init` (in each task, as the user, just before execve) sets the environment.
//! Nothing here touches files. Jobs that did not ask, and every job while plugstack.conf is
//! refused, are left exactly as they were.

use std::ffi::OsString;
use std::path::PathBuf;

use slurm_spank::{spank_log_error, SpankHandle};
use torpor_conf::env;
use torpor_conf::options::{CHECKPOINT, CHECKPOINT_DIR};
use torpor_conf::UserOptions;

use crate::{state, CbResult, Torpor};

/// What every task of a checkpointed step receives.
#[derive(Debug)]
pub(crate) struct StepEnv {
    agent: PathBuf,
    /// Step-wide `TORPOR_*` variables, already formatted.
    vars: Vec<(&'static str, String)>,
}

/// The option's value: from the option callback, else from the `SLURM_SPANK_*` variable Slurm
/// hands over when the callback does not run (`sbatch --export=NONE`).
fn option_value(spank: &SpankHandle, from_callback: Option<String>, name: &str) -> Option<String> {
    if from_callback.is_some() {
        return from_callback;
    }
    if let Ok(Some(v)) = spank.getenv_lossy(env::spank_option_env(name)) {
        return Some(v);
    }
    spank
        .job_control_getenv_lossy(env::spank_option_job_control_env(name))
        .ok()
        .flatten()
}

pub(crate) fn user_init(plugin: &mut Torpor, spank: &mut SpankHandle) -> CbResult {
    plugin.step = None;
    let (site, checkpoint, dir) = state::with(|s| {
        (
            s.site.as_ref().and_then(|r| r.as_ref().ok()).cloned(),
            s.checkpoint.clone(),
            s.dir.clone(),
        )
    });
    let Some(site) = site else {
        return Ok(()); // refused plugstack.conf: logged in init, job untouched
    };
    let checkpoint = option_value(spank, checkpoint, CHECKPOINT.name());
    let dir = option_value(spank, dir, CHECKPOINT_DIR.name());
    let job = spank.job_id()?;
    let opts = match UserOptions::resolve(checkpoint.as_deref(), dir.as_deref(), &site) {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(()),
        Err(e) => {
            // Submit-side validation was bypassed or the site minimum changed since: do not guess.
            spank_log_error!("torpor: job {job}: {e}; running without checkpointing");
            return Ok(());
        }
    };
    let uid = spank.job_uid()?;
    let step = spank.job_stepid()?;
    let user = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let root = opts.dir.expand(&user, uid, job);
    let vars = vec![
        (env::TORPOR_DIR, root.display().to_string()),
        (
            env::TORPOR_INTERVAL_SECS,
            opts.interval.as_secs().to_string(),
        ),
        (env::TORPOR_KEEP, site.keep.to_string()),
        (env::TORPOR_FULL_EVERY, site.full_every.to_string()),
        (env::TORPOR_JOB_ID, job.to_string()),
        (env::TORPOR_STEP_ID, step.to_string()),
        (env::TORPOR_RESTORER, site.restorer.display().to_string()),
        (env::TORPOR_SIGNAL, site.signal.to_string()),
        (
            env::TORPOR_ON_BAD_IMAGE,
            site.on_bad_image.as_str().to_owned(),
        ),
        (env::TORPOR_CONTEXT, env::CONTEXT_SLURM.to_owned()),
    ];
    plugin.step = Some(StepEnv {
        agent: site.agent.clone(),
        vars,
    });
    Ok(())
}

pub(crate) fn task_init(plugin: &mut Torpor, spank: &mut SpankHandle) -> CbResult {
    let Some(step) = &plugin.step else {
        return Ok(());
    };
    for (name, value) in &step.vars {
        spank.setenv(name, value, true)?;
    }
    spank.setenv(
        env::TORPOR_TASK_ID,
        spank.task_global_id()?.to_string(),
        true,
    )?;
    let attempt = spank
        .getenv_lossy(env::SLURM_RESTART_COUNT)
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    spank.setenv(env::TORPOR_ATTEMPT, attempt.to_string(), true)?;
    let preload = spank.getenv_os(env::LD_PRELOAD)?;
    spank.setenv(env::LD_PRELOAD, with_agent(preload, &step.agent), true)?;
    Ok(())
}

/// Appends the agent to an `LD_PRELOAD` list, keeping existing entries and never adding it twice
/// (an srun step inside a checkpointed batch script inherits the batch step's list).
fn with_agent(existing: Option<OsString>, agent: &std::path::Path) -> OsString {
    let agent = agent.as_os_str();
    match existing {
        Some(list) if !list.is_empty() => {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(list.as_os_str());
            let present = bytes
                .split(|b| *b == b':' || *b == b' ')
                .any(|e| e == std::os::unix::ffi::OsStrExt::as_bytes(agent));
            if present {
                list
            } else {
                let mut out = list;
                out.push(":");
                out.push(agent);
                out
            }
        }
        _ => agent.to_os_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn preload_is_set_when_empty() {
        assert_eq!(
            with_agent(None, Path::new("/a.so")),
            OsString::from("/a.so")
        );
        assert_eq!(
            with_agent(Some(OsString::new()), Path::new("/a.so")),
            OsString::from("/a.so")
        );
    }
    #[test]
    fn preload_keeps_existing_entries() {
        assert_eq!(
            with_agent(Some("/x.so /y.so".into()), Path::new("/a.so")),
            OsString::from("/x.so /y.so:/a.so")
        );
    }
    #[test]
    fn preload_is_not_duplicated() {
        assert_eq!(
            with_agent(Some("/x.so:/a.so".into()), Path::new("/a.so")),
            OsString::from("/x.so:/a.so")
        );
    }
}
