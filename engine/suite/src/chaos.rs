//! Helpers for the robustness tests (fault injection, corruption, disk full, security):
//! a seeded random source, the deterministic `fault_target` program driven through the
//! real `torpor` CLI, and checks of an image directory through the engine's own
//! validation and selection API (so they hold whatever the image format looks like).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cases::Program;
use crate::contract::Contract;
use crate::process::{self, Finished, Proc};
use crate::user::RunAs;
use crate::workspace::Workspace;

/// xorshift64*: small, seeded, reproducible (print the seed, rerun with it).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From `$var` if set (to replay a failure), else from the clock. Prints the seed.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("[chaos] seed {seed} (rerun with {var}={seed})");
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n.max(1)
    }

    /// A duration uniform in `0..=max`.
    pub fn upto(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }

    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// The `fault_target` program installed in a workspace, with the engine to run it.
#[derive(Debug)]
pub struct Target {
    pub ws: Workspace,
    pub contract: Contract,
    pub runner: RunAs,
    /// Its argv (program path, steps, MiB).
    pub argv: Vec<OsString>,
}

/// The name the program's processes carry (comm).
pub const TARGET_COMM: &str = "fault_target";

impl Target {
    /// Installs `fault_target STEPS MIB` in a fresh workspace for `runner`.
    pub fn new(label: &str, runner: RunAs, steps: u32, mib: u32) -> Result<Target> {
        Target::program(label, runner, "fault_target", steps, &[mib])
    }

    /// Installs suite program `name` with arguments `first rest...`.
    pub fn program(
        label: &str,
        runner: RunAs,
        name: &'static str,
        first: u32,
        rest: &[u32],
    ) -> Result<Target> {
        let ws = Workspace::new(label, &runner)?;
        let contract = ws.engine_for(&Contract::locate()?, &runner)?;
        ws.install_fdclean()?;
        let mut argv = ws.install(&Program::Native(name), first)?;
        argv.extend(rest.iter().map(|a| OsString::from(a.to_string())));
        Ok(Target {
            ws,
            contract,
            runner,
            argv,
        })
    }

    /// The program's text (argv as strings), to find it in /proc.
    pub fn argv_text(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// `torpor ARGS` as the runner, only stdio inherited, in the work directory.
    pub fn torpor(&self, args: Vec<OsString>) -> Command {
        let mut all: Vec<OsString> = vec![self.contract.torpor.clone().into()];
        all.extend(args);
        let mut c = self.runner.command(self.ws.bin.join("fdclean"), &all);
        c.current_dir(&self.ws.work).env("HOME", &self.ws.root);
        c
    }

    /// `torpor run --dir IMAGES -- fault_target ...`; returns it once READY.
    pub fn start(&self, images: &Path) -> Result<Proc> {
        let mut p = Proc::spawn(
            self.torpor(self.contract.run_args(images, &self.argv)),
            "torpor run",
        )?;
        p.wait_line(0, Duration::from_secs(30), |l| l.starts_with("READY"))?;
        Ok(p)
    }

    /// The program run plainly (no torpor): its RESULT line.
    pub fn reference(&self) -> Result<String> {
        let c = self.runner.command(self.ws.bin.join("fdclean"), &self.argv);
        let f = process::run(c, "reference run", Duration::from_secs(120))?;
        result_of(&f).with_context(|| format!("reference run\n{}", f.describe()))
    }

    /// `torpor restore --verbose IMAGES` (not waited for).
    pub fn restore(&self, images: &Path) -> Result<Proc> {
        let args: Vec<OsString> = vec!["restore".into(), "--verbose".into(), images.into()];
        Proc::spawn(self.torpor(args), "torpor restore")
    }

    /// `torpor checkpoint --pid PID` (not waited for).
    pub fn checkpoint(&self, pid: u32) -> Result<Proc> {
        Proc::spawn(
            self.torpor(self.contract.checkpoint_args(pid, Duration::from_secs(20))),
            "torpor checkpoint",
        )
    }
}

/// The `RESULT` line of a finished run that printed PASS.
pub fn result_of(f: &Finished) -> Result<String> {
    if !f.status.success() || f.stdout.last().map(String::as_str) != Some("PASS") {
        bail!("the program did not end with PASS");
    }
    f.stdout
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(str::to_string)
        .context("no RESULT line")
}

/// Complete generations (gen-* directories) in `images`, oldest first.
pub fn generations(images: &Path) -> Vec<u64> {
    torpor_image::store::Store::new(images)
        .generations()
        .unwrap_or_default()
}

/// Temporary (uncommitted) generation directories in `images`.
pub fn temporaries(images: &Path) -> Vec<String> {
    std::fs::read_dir(images)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(".tmp-gen-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every complete generation must be fully valid (all checksums, structure): a
/// half-written generation must never look complete. Uses the restorer's own selection.
pub fn check_all_complete_valid(images: &Path) -> Result<()> {
    let store = torpor_image::store::Store::new(images);
    for g in generations(images) {
        if let Err(e) = torpor_engine::restore::select(&store.gen_dir(g)) {
            if !store.gen_dir(g).exists() {
                continue; // pruned by the running program meanwhile (renamed away at once)
            }
            bail!("generation {g} looks complete but is not valid: {e}");
        }
    }
    Ok(())
}

/// The generation directory a `torpor restore --verbose` said it used.
pub fn used_generation(stderr: &str) -> Option<PathBuf> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("torpor-restore: using "))
        .map(|p| PathBuf::from(p.trim()))
}

/// A process's comm.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The writer child of program `pid` (a child of one of its threads named torpor-writer).
pub fn writer_of(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in kids
            .split_whitespace()
            .filter_map(|s| s.parse::<u32>().ok())
        {
            if comm(k) == "torpor-writer" {
                return Some(k);
            }
        }
    }
    None
}

/// Waits until no torpor-writer whose cmdline is the program's remains (writers die
/// with their program).
pub fn wait_writers_gone(argv: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&p| {
                        comm(p) == "torpor-writer" && process::cmdline(p).as_deref() == Some(argv)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("writer(s) {left:?} outlived their program");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every millisecond until true or `timeout`; returns whether it became true.
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}
