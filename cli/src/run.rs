//! `torpor run` (exec a program under the agent) and `torpor restore` (exec the restorer).
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use torpor_conf::env as tenv;
use torpor_conf::interval::Interval;

use crate::paths;

/// Replaces this process with `cmd` running under the agent. Returns only on failure.
pub fn run(
    interval: Option<&str>,
    dir: Option<PathBuf>,
    keep: u32,
    cmd: &[OsString],
) -> Result<i32> {
    let agent = paths::agent()?;
    let restorer = paths::restorer().unwrap_or_default();
    let secs = match interval {
        Some(s) => Interval::parse(s)
            .with_context(|| format!("--interval={s}"))?
            .as_secs(),
        None => 0,
    };
    if keep == 0 {
        bail!("--keep must be at least 1");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("torpor-images"));
    torpor_image::safedir::ensure_private_dir(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let preload = match std::env::var_os(tenv::LD_PRELOAD) {
        Some(p) if !p.is_empty() => {
            let mut s = p;
            s.push(":");
            s.push(agent.as_os_str());
            s
        }
        _ => agent.clone().into_os_string(),
    };
    let (prog, args) = cmd.split_first().context("no command given")?;
    let err = Command::new(prog)
        .args(args)
        .env(tenv::LD_PRELOAD, preload)
        .env(tenv::TORPOR_DIR, &dir)
        .env(tenv::TORPOR_INTERVAL_SECS, secs.to_string())
        .env(tenv::TORPOR_KEEP, keep.to_string())
        .env(tenv::TORPOR_RESTORER, restorer)
        .env("TORPOR_ROOT_PID", std::process::id().to_string())
        .exec();
    bail!("cannot run {}: {err}", Path::new(prog).display())
}

/// Replaces this process with the restorer. Returns only on failure.
pub fn restore(path: &Path, pids: &str, verbose: bool) -> Result<i32> {
    if !matches!(pids, "auto" | "original" | "new") {
        bail!("--pids takes auto, original or new (got {pids:?})");
    }
    let restorer = paths::restorer()?;
    let mut c = Command::new(&restorer);
    c.arg("--pids").arg(pids);
    if verbose {
        c.arg("--verbose");
    }
    let err = c.arg(path).exec();
    bail!("cannot run {}: {err}", restorer.display())
}
