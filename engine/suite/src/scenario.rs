//! The sequences a case runs through: uninterrupted; checkpoint, SIGKILL,
//! restore (single); the same twice in a row (double); and double as the
//! unprivileged user (nonroot).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cases::{Case, Expect};
use crate::contract::{Contract, TIMING};
use crate::output::{is_ready, self_check_lines, stitch, strip_ready};
use crate::process::{self, killed_by_sigkill, status_text, Finished, Proc};
use crate::user::RunAs;
use crate::workspace::Workspace;

/// Which sequence to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Plainly, without torpor: guards the programs themselves.
    Uninterrupted,
    /// Checkpoint, SIGKILL, restore, run to the end.
    Single,
    /// Checkpoint, SIGKILL, restore, run on, checkpoint, SIGKILL, restore.
    Double,
    /// Double, as the unprivileged user.
    Nonroot,
}

/// How a case ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Checked and passed.
    Passed,
    /// Not applicable here (missing hardware feature or user namespaces).
    Skipped(String),
}

struct Log {
    start: Instant,
    label: String,
}

impl Log {
    fn say(&self, msg: impl AsRef<str>) {
        println!(
            "[{} +{:.2}s] {}",
            self.label,
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

/// Runs `case` through `variant`. Errors carry what each step printed.
pub fn run_case(case: &Case, variant: Variant) -> Result<Outcome> {
    let label = format!("{}.{variant:?}", case.name).to_lowercase();
    let log = Log {
        start: Instant::now(),
        label: label.clone(),
    };
    let runner = match variant {
        Variant::Nonroot => RunAs::unprivileged()?,
        _ => RunAs::Me,
    };
    let mut ws = Workspace::new(&label, &runner)?;
    let argv = ws.install(&case.program, TIMING.ticks)?;
    let result = match variant {
        Variant::Uninterrupted => uninterrupted(case, &ws, &argv, &log),
        _ => checkpointed(case, variant, &runner, &ws, &argv, &log),
    };
    match &result {
        Ok(Outcome::Skipped(why)) => log.say(format!("SKIP: {why}")),
        Ok(Outcome::Passed) => log.say("passed"),
        Err(_) => ws.keep(),
    }
    result
}

/// Runs the program plainly to its end in `dir`.
fn plain_run(
    runner: &RunAs,
    ws: &Workspace,
    argv: &[OsString],
    dir: &Path,
    label: &str,
) -> Result<Finished> {
    process::run(plain_command(runner, ws, argv, dir), label, TIMING.exit)
}

/// The program itself as `runner`, through fdclean, in `dir`.
fn plain_command(runner: &RunAs, ws: &Workspace, argv: &[OsString], dir: &Path) -> Command {
    let mut cmd = runner.command(ws.bin.join("fdclean"), argv);
    cmd.current_dir(dir).env("HOME", dir);
    cmd
}

fn skipped(out: &[String]) -> Option<String> {
    out.first()
        .and_then(|l| l.strip_prefix("SKIP:"))
        .map(|s| s.trim().to_string())
}

fn uninterrupted(case: &Case, ws: &Workspace, argv: &[OsString], log: &Log) -> Result<Outcome> {
    ws.install_fdclean()?;
    log.say(format!("plain run of {argv:?}"));
    match case.expect {
        Expect::SelfCheck => {
            let f = plain_run(&RunAs::Me, ws, argv, &ws.work, "plain run")?;
            if let Some(why) = skipped(&f.stdout) {
                return Ok(Outcome::Skipped(why));
            }
            if !f.status.success() || strip_ready(&f.stdout) != self_check_lines(TIMING.ticks) {
                bail!("the program does not pass on its own\n{}", f.describe());
            }
            if !f.stdout.first().is_some_and(|l| is_ready(l)) {
                bail!("the program did not start with READY\n{}", f.describe());
            }
        }
        Expect::SameAsUninterrupted => {
            // Two concurrent runs must agree: the output is deterministic.
            let (a, b) = thread::scope(|s| {
                let other =
                    s.spawn(|| plain_run(&RunAs::Me, ws, argv, &ws.reference, "plain run 2"));
                let a = plain_run(&RunAs::Me, ws, argv, &ws.work, "plain run 1");
                (a, other.join())
            });
            let a = a?;
            let b = match b {
                Ok(r) => r?,
                Err(_) => bail!("reference thread panicked"),
            };
            for f in [&a, &b] {
                if !f.status.success() || f.stdout.len() < TIMING.ticks as usize {
                    bail!("the program failed on its own\n{}", f.describe());
                }
            }
            if strip_ready(&a.stdout) != strip_ready(&b.stdout) {
                bail!(
                    "two uninterrupted runs differ: the output is not deterministic\n{}\n{}",
                    a.describe(),
                    b.describe()
                );
            }
        }
    }
    Ok(Outcome::Passed)
}

/// `torpor ARGS` as `runner`, through fdclean (only stdio inherited).
fn torpor(contract: &Contract, runner: &RunAs, args: Vec<OsString>, ws: &Workspace) -> Command {
    let mut all: Vec<OsString> = vec![contract.torpor.clone().into()];
    all.extend(args);
    let mut c = runner.command(ws.bin.join("fdclean"), &all);
    c.current_dir(&ws.work).env("HOME", &ws.root);
    c
}

/// `torpor checkpoint --pid`; returns the generation directory it printed.
fn checkpoint(
    contract: &Contract,
    runner: &RunAs,
    ws: &Workspace,
    pid: u32,
    log: &Log,
) -> Result<PathBuf> {
    log.say(format!("torpor checkpoint --pid {pid}"));
    let cmd = torpor(
        contract,
        runner,
        contract.checkpoint_args(pid, TIMING.checkpoint),
        ws,
    );
    let f = process::run(cmd, "torpor checkpoint", TIMING.command)?;
    if !f.status.success() {
        bail!("torpor checkpoint --pid {pid} failed\n{}", f.describe());
    }
    let Some(gen) = f.stdout.iter().rev().find(|l| !l.trim().is_empty()) else {
        bail!(
            "torpor checkpoint printed no generation directory\n{}",
            f.describe()
        );
    };
    let gen = PathBuf::from(gen.trim());
    let gen = if gen.is_absolute() {
        gen
    } else {
        ws.work.join(gen)
    };
    if !gen.exists() {
        bail!(
            "torpor checkpoint printed {}, which does not exist\n{}",
            gen.display(),
            f.describe()
        );
    }
    log.say(format!("generation {}", gen.display()));
    Ok(gen)
}

fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let s = v.as_str()?;
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    })
}

/// `torpor inspect GEN --json` lists threads, regions and fds as the case
/// expects.
fn inspect(
    case: &Case,
    contract: &Contract,
    runner: &RunAs,
    ws: &Workspace,
    gen: &Path,
    log: &Log,
) -> Result<()> {
    log.say(format!("torpor inspect {} --json", gen.display()));
    let f = process::run(
        torpor(contract, runner, contract.inspect_args(gen), ws),
        "torpor inspect",
        TIMING.command,
    )?;
    if !f.status.success() {
        bail!("torpor inspect failed\n{}", f.describe());
    }
    let text = f.stdout.join("\n");
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("torpor inspect --json printed no JSON:\n{}", f.describe()))?;
    let array = |k: &str| -> Result<&Vec<Value>> {
        v.get(k)
            .and_then(Value::as_array)
            .with_context(|| format!("inspect JSON has no array `{k}`:\n{text}"))
    };
    let threads = array("threads")?;
    if threads.len() < case.min_threads {
        bail!(
            "inspect lists {} threads, the program has at least {}",
            threads.len(),
            case.min_threads
        );
    }
    let regions = array("regions")?;
    if regions.is_empty() {
        bail!("inspect lists no regions");
    }
    for r in regions {
        let kind = r.get("kind").and_then(Value::as_str);
        let start = r.get("start").and_then(json_u64);
        let end = r.get("end").and_then(json_u64);
        let saved = r.get("pages_saved").and_then(json_u64);
        match (kind, start, end, saved) {
            (Some(_), Some(s), Some(e), Some(p)) if s < e && p <= (e - s) / 4096 => {}
            _ => bail!("inspect region lacks kind/start/end/pages_saved or they disagree: {r}"),
        }
    }
    let fds = array("fds")?;
    for &(fd, path) in case.fds {
        let found = fds.iter().any(|e| {
            (fd < 0 || e.get("fd").and_then(Value::as_i64) == Some(fd))
                && e.get("path")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.contains(path))
                && e.get("kind").is_some()
        });
        if !found {
            let which = if fd < 0 {
                "any fd".to_string()
            } else {
                format!("fd {fd}")
            };
            bail!("inspect lists no {which} with a path containing {path:?}: {fds:?}");
        }
    }
    log.say(format!(
        "inspect: {} threads, {} regions, {} fds",
        threads.len(),
        regions.len(),
        fds.len()
    ));
    Ok(())
}

/// Waits for a process killed by the harness and checks it died of SIGKILL
/// (so it was still running: the checkpoint really was mid-run).
fn reap_killed(p: Proc, what: &str, log: &Log) -> Result<Finished> {
    let f = p.finish(TIMING.exit)?;
    if !killed_by_sigkill(f.status) {
        bail!(
            "{what} was expected to die of the harness's SIGKILL but ended with {} \
             (finished too early, or the kill did not reach the program)\n{}",
            status_text(f.status),
            f.describe()
        );
    }
    log.say(format!("{what} killed, {} lines", f.stdout.len()));
    Ok(f)
}

/// SIGKILL for the program (and, for a process tree, every process of it).
fn kill_program(case: &Case, pid: u32, log: &Log) {
    if case.tree {
        let below = process::descendants(pid);
        log.say(format!(
            "killing the tree of {pid} ({} below it)",
            below.len()
        ));
        if let Err(e) = process::kill_pid(pid) {
            log.say(format!("{e:#}"));
        }
        for (p, _) in below {
            let _ = process::kill_pid(p);
        }
    } else if let Err(e) = process::kill_pid(pid) {
        log.say(format!("{e:#}"));
    }
}

fn checkpointed(
    case: &Case,
    variant: Variant,
    runner: &RunAs,
    ws: &Workspace,
    argv: &[OsString],
    log: &Log,
) -> Result<Outcome> {
    let contract = ws.engine_for(&Contract::locate()?, runner)?;
    ws.install_fdclean()?;
    if case.needs_original_pids && !runner.userns_available() {
        return Ok(Outcome::Skipped(format!(
            "needs original pids, and {} cannot create user+pid namespaces here",
            runner.describe()
        )));
    }
    log.say(format!("running as {}", runner.describe()));
    let argv_text: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();

    // The reference output, concurrently for unmodified programs (a Proc:
    // killed on drop if this run fails early).
    let reference = match case.expect {
        Expect::SelfCheck => None,
        Expect::SameAsUninterrupted => Some(Proc::spawn(
            plain_command(runner, ws, argv, &ws.reference),
            "reference run",
        )?),
    };

    // 1. run under torpor, checkpoint mid-run, SIGKILL.
    let mut run = Proc::spawn(
        torpor(&contract, runner, contract.run_args(&ws.images, argv), ws),
        "torpor run",
    )?;
    log.say(format!("torpor run pid {}", run.pid()));
    let (_, first) = run.wait_line(0, TIMING.ready, |l| is_ready(l) || l.starts_with("SKIP:"))?;
    if let Some(why) = first.strip_prefix("SKIP:") {
        return Ok(Outcome::Skipped(why.trim().to_string()));
    }
    let pid: u32 = first
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("bad READY line {first:?}"))?;
    if pid != run.pid() {
        log.say(format!(
            "note: READY pid {pid} is not the torpor run child {} (contract says torpor run execs CMD)",
            run.pid()
        ));
    }
    thread::sleep(TIMING.before_checkpoint);
    let gen1 = checkpoint(&contract, runner, ws, pid, log)?;
    if variant == Variant::Single {
        inspect(case, &contract, runner, ws, &gen1, log)?;
    }
    thread::sleep(TIMING.after_checkpoint);
    kill_program(case, pid, log);
    let first_run = reap_killed(run, "the program under torpor run", log)?;
    let mut segments = vec![strip_ready(&first_run.stdout)];

    // 2. (double) restore, run on, checkpoint again, SIGKILL.
    if matches!(variant, Variant::Double | Variant::Nonroot) {
        let mut restored = Proc::spawn(
            torpor(&contract, runner, contract.restore_args(&ws.images), ws),
            "torpor restore (1st)",
        )?;
        log.say(format!("torpor restore pid {}", restored.pid()));
        restored.wait_line(0, TIMING.first_line, |_| true)?;
        thread::sleep(TIMING.before_checkpoint);
        let (ppid, how) =
            process::find_restored_program(restored.pid(), &argv_text, &ws.images, case.tree)?;
        log.say(format!("restored program: {how}"));
        let gen2 = checkpoint(&contract, runner, ws, ppid, log)?;
        if gen2 == gen1 {
            bail!(
                "the second checkpoint reported the first generation again: {}",
                gen1.display()
            );
        }
        thread::sleep(TIMING.after_checkpoint);
        kill_program(case, ppid, log);
        let f = reap_killed(restored, "the first restored program", log)?;
        segments.push(f.stdout);
    }

    // 3. restore and run to the end.
    let last = Proc::spawn(
        torpor(&contract, runner, contract.restore_args(&ws.images), ws),
        "torpor restore (final)",
    )?;
    log.say(format!("torpor restore pid {}", last.pid()));
    let fin = last.finish(TIMING.exit)?;
    log.say(format!(
        "restored program ended: {}",
        status_text(fin.status)
    ));
    segments.push(fin.stdout.clone());

    let describe_all = |segments: &[Vec<String>]| -> String {
        let mut s = String::new();
        for (i, seg) in segments.iter().enumerate() {
            s += &format!("--- segment {i} ---\n{}\n", seg.join("\n"));
        }
        s + &format!("--- final restore stderr ---\n{}", fin.stderr.trim_end())
    };
    if segments[1..].iter().flatten().any(|l| is_ready(l)) {
        bail!(
            "a restored process printed READY: it started afresh instead of resuming\n{}",
            describe_all(&segments)
        );
    }
    if let Some(fail) = fin.stdout.iter().find(|l| l.starts_with("FAIL")) {
        bail!(
            "the restored program reports {fail}\n{}",
            describe_all(&segments)
        );
    }
    if !fin.status.success() {
        bail!(
            "the restored program ended with {}\n{}",
            status_text(fin.status),
            describe_all(&segments)
        );
    }
    let full = match (case.expect, reference) {
        (Expect::SelfCheck, _) => self_check_lines(TIMING.ticks),
        (Expect::SameAsUninterrupted, Some(r)) => {
            let f = r.finish(TIMING.exit)?;
            if !f.status.success() {
                bail!("the uninterrupted reference run failed\n{}", f.describe());
            }
            strip_ready(&f.stdout)
        }
        (Expect::SameAsUninterrupted, None) => bail!("no reference run"),
    };
    if case.expect == Expect::SelfCheck && fin.stdout.last().map(String::as_str) != Some("PASS") {
        bail!(
            "the restored program did not end with PASS\n{}",
            describe_all(&segments)
        );
    }
    match stitch(&full, &segments) {
        Ok(starts) => log.say(format!(
            "output stitches; segments start at lines {starts:?}"
        )),
        Err(e) => bail!("{e}\n{}", describe_all(&segments)),
    }
    Ok(Outcome::Passed)
}
