//! Helpers for the resume tests (`tests/slurm_resume.rs`): the `counter` test program, its
//! side trace, the image directories of a job, and a checklist that reports every failure.
//!
//! `counter STEPS DELAY_MS [TRACE]` (source in `tests/progs/counter.c`) prints `step I HEX`
//! lines and `RESULT HEX`, identical whatever the delay, and appends `start`/`step I`/`end`
//! lines with a wall-clock time in milliseconds to TRACE (`TRACE.<rank>` under srun). A
//! restarted job leaves a gap of many seconds in the trace, which splits it into runs.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use torpor_image::store::{Manifest, Store};

use crate::cluster::Cluster;
use crate::JobId;

/// Wall-clock time in milliseconds since the epoch (the unit of trace lines).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Compiles `tests/progs/counter.c` into `dir` (world-readable) and returns the binary.
pub fn build_counter(dir: &Path) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("progs/counter.c");
    let bin = dir.join("counter");
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", bin.display()))?;
    Ok(bin)
}

/// What an uninterrupted run of `counter STEPS` prints (run directly, without delay).
pub fn reference_output(bin: &Path, steps: u32) -> Result<String, String> {
    let out = Command::new(bin)
        .arg(steps.to_string())
        .arg("0")
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {:?}", bin.display(), out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start,
    Step(u32),
    End,
}

/// The trace of one program, split into runs at gaps longer than `GAP_MS`.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub events: Vec<(Event, i64)>,
}

/// A pause in the trace longer than this separates two runs (steps come every 0.5 s; a
/// requeue takes at least `cred_expire` = 10 s).
pub const GAP_MS: i64 = 4_000;

impl Trace {
    pub fn read(path: &Path) -> Self {
        let text = fs::read_to_string(path).unwrap_or_default();
        let mut events = Vec::new();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let ev = match w.as_slice() {
                ["start", t] => t.parse().ok().map(|t| (Event::Start, t)),
                ["end", t] => t.parse().ok().map(|t| (Event::End, t)),
                ["step", i, t] => match (i.parse(), t.parse()) {
                    (Ok(i), Ok(t)) => Some((Event::Step(i), t)),
                    _ => None,
                },
                _ => None,
            };
            events.extend(ev);
        }
        Self { events }
    }

    /// The highest step reached so far.
    pub fn max_step(&self) -> Option<u32> {
        self.events
            .iter()
            .filter_map(|(e, _)| match e {
                Event::Step(i) => Some(*i),
                _ => None,
            })
            .max()
    }

    /// The events split at pauses longer than [`GAP_MS`].
    pub fn runs(&self) -> Vec<Vec<(Event, i64)>> {
        let mut runs: Vec<Vec<(Event, i64)>> = Vec::new();
        let mut last = None;
        for (e, t) in &self.events {
            if last.is_none_or(|l| t - l > GAP_MS) {
                runs.push(Vec::new());
            }
            if let Some(r) = runs.last_mut() {
                r.push((e.clone(), *t));
            }
            last = Some(*t);
        }
        runs
    }

    pub fn count(&self, ev: &Event) -> usize {
        self.events.iter().filter(|(e, _)| e == ev).count()
    }

    /// One line per run: `run k: start? steps a..b end? (t0..t1)`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (k, run) in self.runs().iter().enumerate() {
            let steps: Vec<u32> = run
                .iter()
                .filter_map(|(e, _)| match e {
                    Event::Step(i) => Some(*i),
                    _ => None,
                })
                .collect();
            let _ = write!(
                s,
                "run {k}: {}steps {:?}..{:?} ({} lines){} [{}..{}]; ",
                if run.iter().any(|(e, _)| *e == Event::Start) {
                    "start, "
                } else {
                    ""
                },
                steps.first(),
                steps.last(),
                steps.len(),
                if run.iter().any(|(e, _)| *e == Event::End) {
                    ", end"
                } else {
                    ""
                },
                run.first().map(|r| r.1).unwrap_or(0),
                run.last().map(|r| r.1).unwrap_or(0),
            );
        }
        s
    }
}

/// Steps of a run, in order.
pub fn run_steps(run: &[(Event, i64)]) -> Vec<u32> {
    run.iter()
        .filter_map(|(e, _)| match e {
            Event::Step(i) => Some(*i),
            _ => None,
        })
        .collect()
}

/// `<images>/<user>/<job>`: the job's image directory.
pub fn job_image_dir(c: &Cluster, job: JobId) -> PathBuf {
    c.images_dir().join(&c.user().name).join(job.to_string())
}

/// Every program directory of a job: `<job dir>/<step>/<task>/<program>` (dot-names skipped).
pub fn program_dirs(c: &Cluster, job: JobId) -> Vec<PathBuf> {
    fn subdirs(d: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    let mut out = Vec::new();
    for step in subdirs(&job_image_dir(c, job)) {
        for task in subdirs(&step) {
            out.extend(subdirs(&task));
        }
    }
    out
}

/// Complete generations of a program directory.
pub fn generations(dir: &Path) -> Vec<u64> {
    Store::new(dir).generations().unwrap_or_default()
}

/// The manifest `latest` points to.
pub fn latest_manifest(dir: &Path) -> Option<Manifest> {
    let s = Store::new(dir);
    s.manifest(s.latest()?).ok()
}

/// `gen N attempt A at T` for every complete generation, plus `latest` and status.json.
pub fn describe_store(dir: &Path) -> String {
    let s = Store::new(dir);
    let mut out = format!("{}: ", dir.display());
    for n in s.generations().unwrap_or_default() {
        match s.manifest(n) {
            Ok(m) => {
                let _ = write!(
                    out,
                    "gen {n} attempt {} at {:.3} on {}; ",
                    m.attempt, m.time_unix, m.hostname
                );
            }
            Err(e) => {
                let _ = write!(out, "gen {n}: {e}; ");
            }
        }
    }
    let _ = write!(out, "latest={:?}; ", s.latest());
    let status = fs::read_to_string(dir.join("status.json")).unwrap_or_default();
    let _ = write!(out, "status.json={}", status.trim());
    out
}

/// A list of failed expectations, reported together so one failure does not hide the next.
#[derive(Debug, Default)]
pub struct Checks {
    failed: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            eprintln!("  ok: {what}");
        } else {
            eprintln!("  FAILED: {what}");
            self.failed.push(what);
        }
    }

    /// Panics listing every failed expectation, followed by `context`.
    pub fn finish(self, context: &str) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n    - {}\n--- context ---\n{context}",
            self.failed.len(),
            self.failed.join("\n    - ")
        );
    }
}

/// Where two texts first differ, for failure messages: `line N: expected .. got ..`.
pub fn first_difference(expected: &str, got: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    for i in 0..e.len().max(g.len()) {
        if e.get(i) != g.get(i) {
            return format!(
                "line {}: expected {:?}, got {:?} ({} lines expected, {} got)",
                i + 1,
                e.get(i),
                g.get(i),
                e.len(),
                g.len()
            );
        }
    }
    if expected != got {
        return "same lines, different bytes (trailing newline?)".to_owned();
    }
    "identical".to_owned()
}
