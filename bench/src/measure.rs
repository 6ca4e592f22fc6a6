//! Running the benchmark program under torpor: checkpoints (program pause, time to
//! durable, image size), restore to the first tick, and the agent's overhead.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Worker threads of the program (issue 7: 4 threads).
const THREADS: u32 = 4;

/// Lines the program printed, with their arrival time.
#[derive(Default)]
struct Lines {
    v: Mutex<Vec<(Instant, String)>>,
    cv: Condvar,
}

impl Lines {
    /// Collects the lines of `out`; with `echo`, also passes them to our stderr, except
    /// the agent's timing lines (TORPOR_DEBUG_TIMING).
    fn spawn_reader(self: &Arc<Self>, out: impl std::io::Read + Send + 'static, echo: bool) {
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if echo && !l.starts_with(TIMING) {
                    eprintln!("{l}");
                }
                let mut v = me.v.lock().unwrap_or_else(|e| e.into_inner());
                v.push((Instant::now(), l));
                me.cv.notify_all();
            }
        });
    }

    /// Waits for a line starting with `prefix` that arrived at or after `since`.
    fn wait(&self, prefix: &str, since: Instant, timeout: Duration) -> Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut v = self.v.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((t, l)) = v.iter().find(|(t, l)| *t >= since && l.starts_with(prefix)) {
                return Ok((*t, l.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no `{prefix}` line from the program within {timeout:?}");
            }
            v = self
                .cv
                .wait_timeout(v, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Longest gap (µs) the program reported in ticks that arrived in `[from, to]`.
    fn max_gap_us(&self, from: Instant, to: Instant) -> u64 {
        let v = self.v.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter(|(t, l)| *t >= from && *t <= to && l.starts_with("tick "))
            .filter_map(|(_, l)| l.split_whitespace().nth(2)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }
}

struct Prog {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Lines>,
}

impl Prog {
    fn start(mut cmd: Command) -> Result<Prog> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting the program")?;
        let lines = Arc::new(Lines::default());
        lines.spawn_reader(child.stdout.take().context("stdout")?, false);
        lines.spawn_reader(child.stderr.take().context("stderr")?, true);
        let stdin = child.stdin.take();
        Ok(Prog {
            child,
            stdin,
            lines,
        })
    }

    fn send(&mut self, s: &str) -> Result<()> {
        let i = self.stdin.as_mut().context("stdin")?;
        i.write_all(s.as_bytes())?;
        i.flush()?;
        Ok(())
    }

    fn kill(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// How the agent's round breakdown (TORPOR_DEBUG_TIMING) starts.
const TIMING: &str = "torpor: round timing";

/// The milliseconds after `what` in the agent's round timing line (e.g. "fork 12.3").
fn timing_ms(line: &str, what: &str) -> Option<f64> {
    let at = line.find(&format!(" {what} "))? + what.len() + 2;
    line[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .parse()
        .ok()
}

struct Ckpt {
    /// The pause's fork alone (agent's TORPOR_DEBUG_TIMING), and stopping the threads.
    fork_ms: f64,
    stop_ms: f64,
    pause_ms_agent: f64,
    total_ms: f64,
    wall_ms: f64,
    program_pause_ms: f64,
    image_bytes: u64,
    gen_dir: PathBuf,
    /// The generation names a parent (incremental, ADR 0009).
    incremental: bool,
}

fn image_bytes(gen_dir: &Path) -> u64 {
    std::fs::read_dir(gen_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn checkpoint(torpor: &Path, p: &Prog) -> Result<Ckpt> {
    let t = Instant::now();
    let out = Command::new(torpor)
        .args(["checkpoint", "--json", "--pid"])
        .arg(p.child.id().to_string())
        .output()
        .context("torpor checkpoint")?;
    let wall = t.elapsed();
    if !out.status.success() {
        bail!(
            "torpor checkpoint failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("checkpoint --json output")?;
    // Ticks come every 10 ms: the gap that covers the pause is reported by the next one.
    std::thread::sleep(Duration::from_millis(60));
    let gap = p.lines.max_gap_us(t, Instant::now());
    let gen_dir = PathBuf::from(v["path"].as_str().context("no path in status")?);
    let timing = p
        .lines
        .wait(TIMING, t, Duration::from_secs(5))
        .map(|(_, l)| l)
        .unwrap_or_default();
    Ok(Ckpt {
        fork_ms: timing_ms(&timing, "fork").unwrap_or(f64::NAN),
        stop_ms: timing_ms(&timing, "threads").unwrap_or(f64::NAN),
        pause_ms_agent: v["pause_ms"].as_f64().unwrap_or(f64::NAN),
        total_ms: v["total_ms"].as_f64().unwrap_or(f64::NAN),
        wall_ms: wall.as_secs_f64() * 1e3,
        program_pause_ms: gap as f64 / 1e3,
        image_bytes: image_bytes(&gen_dir),
        incremental: generation_parent(&gen_dir).is_some(),
        gen_dir,
    })
}

/// The `parent` of a generation's manifest (incremental generations), if any.
fn generation_parent(gen_dir: &Path) -> Option<u64> {
    let b = std::fs::read(gen_dir.join("manifest.json")).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    v["parent"].as_u64()
}

pub struct Env {
    pub torpor: PathBuf,
    pub prog: PathBuf,
    pub work: PathBuf,
}

/// One program of `mib` MiB of `kind` data: checkpoint, dirty 1%, checkpoint, restore.
pub fn run_case(env: &Env, kind: &str, mib: u64) -> Result<Value> {
    let dir = env.work.join(format!("{kind}-{mib}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(&env.torpor);
    cmd.args(["run", "--keep", "2", "--dir"])
        .env("TORPOR_DEBUG_TIMING", "1")
        .arg(&dir)
        .arg("--")
        .arg(&env.prog)
        .args(["run", kind, &mib.to_string(), &THREADS.to_string()]);
    let mut p = Prog::start(cmd)?;
    let t0 = Instant::now();
    p.lines.wait("ready", t0, Duration::from_secs(300))?;
    let fill_s = t0.elapsed().as_secs_f64();
    // Quiet baseline: the program's own tick gaps without any checkpoint.
    let b0 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let baseline_ms = p.lines.max_gap_us(b0, Instant::now()) as f64 / 1e3;

    let c1 = checkpoint(&env.torpor, &p)?;
    let d0 = Instant::now();
    p.send("dirty 10\n")?;
    p.lines.wait("dirtied", d0, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(200));
    let c2 = checkpoint(&env.torpor, &p)?;
    p.kill();

    // Restore the newest generation: time from launch to the program's first tick.
    let mut cmd = Command::new(&env.torpor);
    cmd.args(["restore", "--pids", "new"]).arg(&dir);
    let t = Instant::now();
    let r = Prog::start(cmd)?;
    let first = r.lines.wait("tick ", t, Duration::from_secs(120));
    let restore_ms = first
        .as_ref()
        .map(|(at, _)| at.duration_since(t).as_secs_f64() * 1e3)
        .ok();
    let resumed_seq = first
        .as_ref()
        .ok()
        .and_then(|(_, l)| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    r.kill();
    let _ = std::fs::remove_dir_all(&dir);

    let ck = |c: &Ckpt| {
        json!({
            "program_pause_ms": c.program_pause_ms,
            "agent_pause_ms": c.pause_ms_agent,
            "fork_ms": c.fork_ms,
            "stop_threads_ms": c.stop_ms,
            "durable_ms": c.total_ms,
            "wall_ms": c.wall_ms,
            "image_bytes": c.image_bytes,
            "generation": c.gen_dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            // Incremental generations (ADR 0009) name their parent in the manifest.
            "kind": if c.incremental { "incremental" } else { "full" },
        })
    };
    Ok(json!({
        "kind": kind,
        "mib": mib,
        "threads": THREADS,
        "fill_s": fill_s,
        "baseline_max_tick_gap_ms": baseline_ms,
        "first": ck(&c1),
        "second_after_1pct_dirty": ck(&c2),
        "restore_to_first_tick_ms": restore_ms,
        "restored_tick_seq": resumed_seq,
    }))
}

/// Median of `n` runs of `benchprog MODE ARG`, with or without the agent (ns).
fn timed_loop(env: &Env, mode: &str, arg: &str, agent: bool, n: usize) -> Result<f64> {
    let mut v = Vec::new();
    for i in 0..n {
        let mut cmd = if agent {
            let mut c = Command::new(&env.torpor);
            c.args(["run", "--dir"])
                .arg(env.work.join(format!("overhead-{mode}-{i}")))
                .arg("--")
                .arg(&env.prog);
            c
        } else {
            Command::new(&env.prog)
        };
        let out = cmd.args([mode, arg]).output().context("overhead run")?;
        let s = String::from_utf8_lossy(&out.stdout);
        let ns: f64 = s
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .with_context(|| format!("benchprog {mode} printed {s:?}"))?;
        v.push(ns);
        let _ = std::fs::remove_dir_all(env.work.join(format!("overhead-{mode}-{i}")));
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

pub fn overhead(env: &Env) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (mode, arg) in [("compute", "400000000"), ("syscall", "3000000")] {
        // Interleave to spread machine noise over both.
        let mut with = Vec::new();
        let mut without = Vec::new();
        for _ in 0..7 {
            without.push(timed_loop(env, mode, arg, false, 1)?);
            with.push(timed_loop(env, mode, arg, true, 1)?);
        }
        // Best of 7 each, interleaved: other load on the machine only ever adds time.
        let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        let (a, b) = (best(&with), best(&without));
        out.insert(
            mode.into(),
            json!({"with_agent_ms": a / 1e6, "without_ms": b / 1e6, "overhead": a / b - 1.0}),
        );
    }
    Ok(Value::Object(out))
}
