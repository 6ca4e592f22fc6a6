//! `torpor gc`: the retention policy for jobs that ended for good.
//!
//! A program that ends normally removes its own images. A job that ends otherwise
//! (scancel, a failure, a time limit, a node failure without requeue) leaves them: its
//! last checkpoint was taken on SIGTERM. `torpor gc` removes the image directory of every
//! job that Slurm no longer lists in its queue (pending, running, suspended, requeued
//! and held jobs are all listed, so a job that will run again is never touched) and
//! that has not been modified for `--min-age` seconds. Dry run unless `--yes`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use torpor_sched::Scheduler;

/// Job directories directly under a root: `<root>/<jobid>` (root may contain `%u`-style
/// per-user directories; both `<root>/<job>` and `<root>/<user>/<job>` are scanned).
fn job_dirs(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_dir() || p.is_symlink() {
            continue;
        }
        match e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            Some(id) => out.push((id, p)),
            None => {
                if let Ok(rd2) = std::fs::read_dir(&p) {
                    for e2 in rd2.flatten() {
                        let p2 = e2.path();
                        if let Some(id) =
                            e2.file_name().to_str().and_then(|n| n.parse::<u64>().ok())
                        {
                            if p2.is_dir() && !p2.is_symlink() {
                                out.push((id, p2));
                            }
                        }
                    }
                }
            }
        }
    }
    out.sort();
    out
}

fn newest_mtime(p: &Path) -> SystemTime {
    let mut t = std::fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type()
                .map(|f| f.is_dir() && !f.is_symlink())
                .unwrap_or(false)
            {
                t = t.max(newest_mtime(&e.path()));
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                t = t.max(m);
            }
        }
    }
    t
}

/// Runs the verb; returns the exit code.
pub fn gc(roots: &[PathBuf], yes: bool, min_age: u64, json: bool) -> Result<i32> {
    if roots.is_empty() {
        bail!("give the image root(s) with --root DIR (the plugstack `dir=` without %u)");
    }
    let queued = torpor_sched::Slurm::from_env().queued()?;
    let now = SystemTime::now();
    let mut report = Vec::new();
    for root in roots {
        for (job, dir) in job_dirs(root) {
            let age = now
                .duration_since(newest_mtime(&dir))
                .unwrap_or(Duration::ZERO)
                .as_secs();
            let (action, why) = if queued.contains(&job) {
                ("keep", "job is still known to Slurm")
            } else if age < min_age {
                ("keep", "modified too recently")
            } else if yes {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => ("removed", "job ended for good"),
                    Err(_) => ("failed", "could not remove"),
                }
            } else {
                (
                    "would remove",
                    "job ended for good (dry run; --yes to remove)",
                )
            };
            report.push(serde_json::json!({
                "job": job, "dir": dir, "age_secs": age, "action": action, "reason": why,
            }));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{:<10} {:<13} {:>9}  DIR", "JOBID", "ACTION", "AGE(s)");
        for r in &report {
            println!(
                "{:<10} {:<13} {:>9}  {}",
                r["job"].as_u64().unwrap_or_default(),
                r["action"].as_str().unwrap_or_default(),
                r["age_secs"].as_u64().unwrap_or_default(),
                r["dir"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(if report.iter().any(|r| r["action"] == "failed") {
        1
    } else {
        0
    })
}
