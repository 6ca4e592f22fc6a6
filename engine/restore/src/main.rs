//! `torpor-restore`: restores a checkpointed process in this process (same pid, same
//! stdio): `torpor-restore [--pids auto|original|new] [--verbose] PATH`, where PATH is a
//! program's image directory, a generation directory or an image file.

use anyhow::{bail, Context, Result};
use torpor_engine::restore::{self, PidMode};

/// Stage 2, built by build.rs.
static STAGE2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/torpor-restore-stage2"));

fn main() {
    if let Err(e) = run() {
        eprintln!("torpor-restore: {e:#}");
        std::process::exit(126);
    }
}

fn run() -> Result<()> {
    let mut pids = PidMode::Auto;
    let mut verbose = std::env::var_os("TORPOR_VERBOSE").is_some();
    let mut path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pids" => {
                pids = match args.next().as_deref() {
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
    let sel = restore::select(std::path::Path::new(&path))?;
    for s in &sel.skipped {
        eprintln!("torpor-restore: skipped {s}");
    }
    if !sel.skipped.is_empty() || verbose {
        eprintln!("torpor-restore: using {}", sel.gen_dir.display());
    }
    let err = match restore::restore(sel, STAGE2, pids, verbose) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(err.into())
}
