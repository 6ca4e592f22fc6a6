//! `torpor-restore`: restores a checkpointed process in this process (same pid, same
//! stdio): `torpor-restore [--pids auto|original|new] [--verbose] PATH`, where PATH is a
//! program's image directory, a generation directory or an image file.
//!
//! `--slurm DIR -- CMD...` (run by the agent in a Slurm task): if nothing can be resumed,
//! CMD starts over, except when images exist but none is valid and the site's policy
//! (`TORPOR_ON_BAD_IMAGE`, plugstack `on_bad_image=`) is `fail`: then the task fails.

use anyhow::{bail, Context, Result};
use torpor_conf::OnBadImage;
use torpor_engine::restore::{self, PidMode, RestoreError};

/// Stage 2, built by build.rs.
static STAGE2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/torpor-restore-stage2"));

fn main() {
    if let Err(e) = run() {
        eprintln!("torpor-restore: {e:#}");
        std::process::exit(126);
    }
}

/// In a Slurm task: if nothing usable can be restored, start the original command over
/// (with restore disabled for it), so that the task still runs.
fn start_fresh(cmd: &[std::ffi::OsString], why: &anyhow::Error) -> ! {
    use std::os::unix::process::CommandExt;
    eprintln!("torpor-restore: cannot resume: {why:#}");
    let Some((prog, args)) = cmd.split_first() else {
        std::process::exit(126)
    };
    eprintln!(
        "torpor-restore: starting {} from the beginning",
        prog.to_string_lossy()
    );
    let err = std::process::Command::new(prog)
        .args(args)
        .env("TORPOR_NO_RESTORE", "1")
        .exec();
    eprintln!(
        "torpor-restore: cannot start {}: {err}",
        prog.to_string_lossy()
    );
    std::process::exit(126)
}

fn run() -> Result<()> {
    let mut pids = PidMode::Auto;
    let mut verbose = std::env::var_os("TORPOR_VERBOSE").is_some();
    let mut path = None;
    let mut slurm = false;
    let mut fresh_cmd: Vec<std::ffi::OsString> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = match a.into_string() {
            Ok(s) => s,
            Err(_) => bail!("arguments must be UTF-8 paths"),
        };
        match a.as_str() {
            "--slurm" => slurm = true,
            "--" => {
                fresh_cmd = args.by_ref().collect();
                break;
            }
            "--pids" => {
                pids = match args.next().and_then(|s| s.into_string().ok()).as_deref() {
                    Some("auto") => PidMode::Auto,
                    Some("original") => PidMode::Original,
                    Some("new") => PidMode::New,
                    other => bail!("--pids takes auto, original or new (got {other:?})"),
                }
            }
            "--verbose" | "-v" => verbose = true,
            "-h" | "--help" => {
                println!("usage: torpor-restore [--pids auto|original|new] [--verbose] DIR|GENERATION|IMAGE");
                return Ok(());
            }
            _ if path.is_none() => path = Some(a),
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    let path = path.context("no image given (usage: torpor-restore [--pids MODE] PATH)")?;
    let sel = match restore::select(std::path::Path::new(&path)) {
        Ok(sel) => sel,
        // Images are there but none is valid: the site decides (plugstack on_bad_image).
        Err(
            e @ (RestoreError::NoValidGeneration { .. }
            | RestoreError::Image(_)
            | RestoreError::Store(_)
            | RestoreError::Owner { .. }),
        ) if slurm => {
            let e = anyhow::Error::from(e);
            match bad_image_policy() {
                Ok(OnBadImage::Fresh) => start_fresh(&fresh_cmd, &e),
                Ok(OnBadImage::Fail) => bail!(
                    "{e:#}\nno checkpoint image of this task is valid; failing the task \
                     (the site's on_bad_image=fail; remove {path} to start over)"
                ),
                Err(why) => bail!("{e:#}\n{why}; failing the task"),
            }
        }
        Err(e) if slurm => start_fresh(&fresh_cmd, &e.into()),
        Err(e) => return Err(e.into()),
    };
    let result = resume(sel, pids, verbose, slurm);
    match result {
        Err(e) if slurm => start_fresh(&fresh_cmd, &e),
        other => other,
    }
}

/// The site's policy from `TORPOR_ON_BAD_IMAGE` (absent: fail).
fn bad_image_policy() -> Result<OnBadImage, String> {
    match std::env::var(torpor_conf::env::TORPOR_ON_BAD_IMAGE) {
        Err(std::env::VarError::NotPresent) => Ok(OnBadImage::Fail),
        Ok(v) => OnBadImage::parse(&v)
            .map_err(|e| format!("{}={v:?}: {e}", torpor_conf::env::TORPOR_ON_BAD_IMAGE)),
        Err(e) => Err(format!("{}: {e}", torpor_conf::env::TORPOR_ON_BAD_IMAGE)),
    }
}

fn resume(sel: restore::Selected, pids: PidMode, verbose: bool, slurm: bool) -> Result<()> {
    // Messages are printed by restore() once the job's output file has been put back
    // (printing them now would be erased with it).
    let err = match restore::restore(sel, STAGE2, pids, verbose, slurm) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(err.into())
}
