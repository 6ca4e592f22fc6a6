//! The CLI contract with the engine, in one place: where the binaries are,
//! which subcommands and flags the harness uses, and the timing of a run.
//! Adjust here if the CLI changes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::output::is_ready;
use crate::process::Proc;

/// File names of the engine's build products in `target/release`.
pub const TORPOR_BIN: &str = "torpor";
/// The LD_PRELOAD agent `torpor run` injects.
pub const AGENT_LIB: &str = "libtorpor_agent.so";
/// The restorer `torpor restore` runs.
pub const RESTORE_BIN: &str = "torpor-restore";

/// The engine's binaries and how to invoke them.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Directory holding the three build products.
    pub dir: PathBuf,
    /// `torpor` itself.
    pub torpor: PathBuf,
}

impl Contract {
    /// Finds `target/release` (or `$CARGO_TARGET_DIR/release`, or
    /// `$TORPOR_BIN_DIR`) and checks the engine was built there.
    pub fn locate() -> Result<Contract> {
        let dir = release_dir();
        let torpor = dir.join(TORPOR_BIN);
        let missing: Vec<&str> = [TORPOR_BIN, AGENT_LIB, RESTORE_BIN]
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "engine binaries missing in {}: {}. Build them first with `cargo build --release` \
                 (with the same CARGO_TARGET_DIR as the tests, or point TORPOR_BIN_DIR at them)",
                dir.display(),
                missing.join(", ")
            );
        }
        Ok(Contract { dir, torpor })
    }

    /// The same contract with the binaries in another directory (copies).
    pub fn in_dir(&self, dir: &Path) -> Contract {
        Contract {
            dir: dir.to_path_buf(),
            torpor: dir.join(TORPOR_BIN),
        }
    }

    /// `torpor run --dir DIR -- CMD ARGS...`
    pub fn run_args(&self, images: &Path, argv: &[OsString]) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["run".into(), "--dir".into(), images.into(), "--".into()];
        v.extend(argv.iter().cloned());
        v
    }

    /// `torpor checkpoint --pid PID --timeout SECS`; prints the generation
    /// directory on stdout.
    pub fn checkpoint_args(&self, pid: u32, timeout: Duration) -> Vec<OsString> {
        vec![
            "checkpoint".into(),
            "--pid".into(),
            pid.to_string().into(),
            "--timeout".into(),
            timeout.as_secs().max(1).to_string().into(),
        ]
    }

    /// `torpor restore DIR`: the newest complete generation, in the
    /// foreground, exit status passed through.
    pub fn restore_args(&self, images: &Path) -> Vec<OsString> {
        vec!["restore".into(), images.into()]
    }

    /// `torpor inspect PATH --json`
    pub fn inspect_args(&self, image: &Path) -> Vec<OsString> {
        vec!["inspect".into(), image.into(), "--json".into()]
    }

    /// `torpor ARGS` in `dir`, started through the suite's `fdclean` (only stdio
    /// inherited: torpor refuses to checkpoint the test runner's other fds).
    pub fn command(&self, dir: &Path, args: Vec<OsString>) -> Command {
        let mut c = Command::new(Path::new(env!("TORPOR_SUITE_PROGS_DIR")).join("fdclean"));
        c.arg(&self.torpor).args(args).current_dir(dir);
        c
    }

    /// Starts `torpor run` of `argv` (images in `images`) in `dir` and waits for its READY
    /// line: the running program and the pids that line names, in order.
    pub fn run_until_ready(
        &self,
        dir: &Path,
        images: &Path,
        argv: &[OsString],
    ) -> Result<(Proc, Vec<u32>)> {
        let mut p = Proc::spawn(self.command(dir, self.run_args(images, argv)), "torpor run")
            .context("program starts")?;
        let (_, first) = p
            .wait_line(0, TIMING.ready, is_ready)
            .context("program prints READY")?;
        let pids = first
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        Ok((p, pids))
    }
}

/// The release directory the engine binaries are expected in.
pub fn release_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TORPOR_BIN_DIR") {
        return PathBuf::from(d);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    target.join("release")
}

/// How long each step may take and how long the harness lets a program run
/// between steps. Programs run `TICKS` ticks of 100 ms.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Ticks passed to every program (argv[1]).
    pub ticks: u32,
    /// Program start until READY.
    pub ready: Duration,
    /// READY (or the first restored line) until the checkpoint request.
    pub before_checkpoint: Duration,
    /// Checkpoint done until SIGKILL: the program keeps changing its state.
    pub after_checkpoint: Duration,
    /// Passed to `torpor checkpoint --timeout`.
    pub checkpoint: Duration,
    /// Wall-clock limit for a `torpor checkpoint` or `inspect` command.
    pub command: Duration,
    /// Restore until the program's first line.
    pub first_line: Duration,
    /// Limit for a program to run to its end.
    pub exit: Duration,
}

/// The timing every case uses.
pub const TIMING: Timing = Timing {
    ticks: 40,
    ready: Duration::from_secs(30),
    before_checkpoint: Duration::from_millis(800),
    after_checkpoint: Duration::from_millis(300),
    checkpoint: Duration::from_secs(30),
    command: Duration::from_secs(45),
    first_line: Duration::from_secs(30),
    exit: Duration::from_secs(30),
};
