//! The issue-4 scenarios' shared context and checks: the cluster and the counter program,
//! and what "resumed, not restarted" and "output like an uninterrupted run" mean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::resume::{
    build_counter, describe_store, first_difference, generations, latest_manifest, now_ms,
    program_dirs, reference_output, run_steps, Checks, Event, Trace,
};
use crate::scenario::{Ending, Ready, Scenario, TraceCheck};
use crate::{Cluster, JobId};

/// Milliseconds between steps of the counter.
pub const DELAY_MS: u32 = 500;
pub const WAIT: Duration = Duration::from_secs(90);

pub struct Ctx {
    pub c: Cluster,
    pub counter: PathBuf,
    /// Uninterrupted output of `counter N`, by N.
    pub reference: BTreeMap<u32, String>,
}

impl Ctx {
    /// Builds the counter in the cluster's work directory and records its uninterrupted
    /// output for each number of steps in `steps`.
    pub fn new(c: Cluster, steps: &[u32]) -> Self {
        let counter = build_counter(&c.work_dir()).expect("counter builds");
        let reference = steps
            .iter()
            .map(|&n| (n, reference_output(&counter, n).expect("reference run")))
            .collect();
        Self {
            c,
            counter,
            reference,
        }
    }

    pub fn reference(&self, steps: u32) -> &str {
        self.reference
            .get(&steps)
            .unwrap_or_else(|| panic!("no reference for {steps} steps"))
    }

    /// `counter STEPS DELAY TRACE` as a command line, with a fresh trace path for `tag`.
    pub fn command(&self, steps: u32, tag: &str) -> (String, PathBuf) {
        let trace = self.c.work_dir().join(format!("trace-{tag}"));
        let _ = std::fs::remove_file(&trace);
        (
            format!(
                "{} {steps} {DELAY_MS} {}",
                self.counter.display(),
                trace.display()
            ),
            trace,
        )
    }

    /// Submits `script` with the output on `<job>.out` and stderr on `<job>.err`.
    /// Checkpointed jobs get `TORPOR_VERBOSE=1` (the agent logs each checkpoint on stderr).
    pub fn submit(&self, args: &[&str], script: &str) -> JobId {
        let err = format!("--error={}/%j.err", self.c.work_dir().display());
        let mut all: Vec<&str> = vec![&err];
        all.extend_from_slice(args);
        let verbose: &[(&str, &str)] = if args.iter().any(|a| a.starts_with("--checkpoint")) {
            &[("TORPOR_VERBOSE", "1")]
        } else {
            &[]
        };
        let out = self
            .c
            .sbatch_env(&all, script, verbose)
            .expect("sbatch runs");
        let job = crate::cluster::parse_job_id(&out)
            .unwrap_or_else(|| panic!("sbatch {all:?} refused: {out:?}"));
        eprintln!("  submitted job {job} with {args:?}");
        job
    }

    pub fn stderr_of(&self, job: JobId) -> String {
        std::fs::read_to_string(self.c.work_dir().join(format!("{job}.err"))).unwrap_or_default()
    }

    pub fn restarts(&self, job: JobId) -> u32 {
        self.c
            .job_field(job, "Restarts")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until every trace reached `step` and every expected program directory has a
    /// complete generation; returns the program directories.
    pub fn wait_progress(
        &self,
        job: JobId,
        traces: &[&Path],
        step: u32,
        dirs: usize,
    ) -> Vec<PathBuf> {
        let t0 = Instant::now();
        let res = self.c.wait_for(
            &format!("job {job}: step {step} and {dirs} program dir(s) with a generation"),
            WAIT,
            || {
                let progressed = traces
                    .iter()
                    .all(|t| Trace::read(t).max_step().is_some_and(|s| s >= step));
                let with_gen = program_dirs(&self.c, job)
                    .iter()
                    .filter(|d| !generations(d).is_empty())
                    .count();
                Ok(progressed && with_gen >= dirs)
            },
        );
        if let Err(e) = res {
            panic!(
                "{e}\njob state {:?}\nstderr:\n{}\nstores:\n{}\ntraces: {}",
                self.c.job_state(job),
                self.stderr_of(job),
                self.stores(job),
                traces
                    .iter()
                    .map(|t| Trace::read(t).summary())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        eprintln!(
            "  progress reached after {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        program_dirs(&self.c, job)
    }

    /// Waits until every trace reached `step` and the job has `n` program directories
    /// (with or without a generation); returns them.
    pub fn wait_running(&self, job: JobId, traces: &[&Path], step: u32, n: usize) -> Vec<PathBuf> {
        let r = self.c.wait_for(
            &format!("job {job}: step {step} and {n} program dir(s)"),
            WAIT,
            || {
                Ok(traces
                    .iter()
                    .all(|t| Trace::read(t).max_step().is_some_and(|s| s >= step))
                    && program_dirs(&self.c, job).len() >= n)
            },
        );
        if let Err(e) = r {
            panic!(
                "{e}: state {:?}\nstderr:\n{}\nstores:\n{}",
                self.c.job_state(job),
                self.stderr_of(job),
                self.stores(job)
            );
        }
        program_dirs(&self.c, job)
    }

    /// Waits (up to 120 s) until the job ended; its final state.
    pub fn wait_end(&self, job: JobId) -> String {
        self.c
            .wait_finished(job, Duration::from_secs(120))
            .unwrap_or_else(|e| format!("not finished: {e}"))
    }

    pub fn stores(&self, job: JobId) -> String {
        program_dirs(&self.c, job)
            .iter()
            .map(|d| describe_store(d))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the job left RUNNING/COMPLETING after an interruption (back in the queue
    /// or ended); returns the state and when it was seen.
    pub fn wait_stopped(&self, job: JobId) -> (String, i64) {
        let mut state = String::new();
        let _ = self.c.wait_for(&format!("job {job} to stop"), WAIT, || {
            state = self.c.job_state(job)?.unwrap_or_default();
            Ok(!matches!(state.as_str(), "RUNNING" | "COMPLETING"))
        });
        // The next run truncates stderr: keep what the agent said in this one.
        eprintln!(
            "  {job}.err when the job stopped:\n    {}",
            self.stderr_of(job).trim().replace('\n', "\n    ")
        );
        (state, now_ms())
    }

    /// Waits until the job, requeued at least once, has ended; returns its final state.
    pub fn wait_done_after_restart(&self, job: JobId, timeout: Duration) -> String {
        let mut state = String::new();
        let r = self
            .c
            .wait_for(&format!("job {job} to run again and end"), timeout, || {
                state = self.c.job_state(job)?.unwrap_or_default();
                Ok(self.restarts(job) >= 1
                    && !matches!(
                        state.as_str(),
                        "RUNNING" | "COMPLETING" | "PENDING" | "REQUEUED" | "CONFIGURING"
                    ))
            });
        if let Err(e) = r {
            eprintln!("  {e} (state {state})");
        }
        state
    }
}

/// Checks the trace of a resumed program: one fresh start, one end, exactly one interruption,
/// the second run continuing (not from step 0) without skipping a step.
pub fn check_resumed_trace(ck: &mut Checks, name: &str, trace: &Trace, steps: u32) -> (u32, u32) {
    let runs = trace.runs();
    ck.check(
        runs.len() == 2,
        format!(
            "{name}: trace shows 2 runs (one interruption), got {}: {}",
            runs.len(),
            trace.summary()
        ),
    );
    ck.check(
        trace.count(&Event::Start) == 1,
        format!(
            "{name}: main() entered once (resumed, not started over): {} starts",
            trace.count(&Event::Start)
        ),
    );
    ck.check(
        trace.count(&Event::End) == 1,
        format!("{name}: program ended once"),
    );
    ck.check(
        trace.count(&Event::Step(0)) == 1,
        format!(
            "{name}: step 0 ran once, got {}",
            trace.count(&Event::Step(0))
        ),
    );
    let all: Vec<u32> = (0..steps).collect();
    let mut seen: Vec<u32> = run_steps(&trace.events);
    seen.sort_unstable();
    seen.dedup();
    ck.check(seen == all, format!("{name}: every step 0..{steps} ran"));
    let (mut last1, mut first2) = (0, 0);
    if runs.len() >= 2 {
        let r1 = run_steps(&runs[0]);
        let r2 = run_steps(&runs[1]);
        last1 = r1.last().copied().unwrap_or(0);
        first2 = r2.first().copied().unwrap_or(0);
        eprintln!(
            "  {name}: run 1 ended at step {last1}, run 2 began at step {first2} ({} step(s) redone)",
            (last1 + 1).saturating_sub(first2)
        );
        ck.check(
            first2 > 0,
            format!("{name}: run 2 did not restart from step 0 (first step {first2})"),
        );
        ck.check(
            first2 <= last1 + 1,
            format!("{name}: run 2 did not skip steps (run 1 last {last1}, run 2 first {first2})"),
        );
        ck.check(
            runs[1].iter().all(|(e, _)| *e != Event::Start),
            format!("{name}: run 2 has no fresh start"),
        );
    }
    (last1, first2)
}

/// A program resumed once, told by counting trace lines rather than by pauses (a loaded
/// machine can pause a program for seconds): main() entered once, ended once, every step
/// ran, at most one step ran twice (the one in flight at the checkpoint), step 0 once.
pub fn check_resumed_once(ck: &mut Checks, name: &str, tr: &Trace, steps: u32) {
    ck.check(
        tr.count(&Event::Start) == 1 && tr.count(&Event::End) == 1,
        format!(
            "{name}: started once, ended once (resumed, not started over): {}",
            tr.summary()
        ),
    );
    let mut seen: Vec<u32> = (0..steps)
        .filter(|i| tr.count(&Event::Step(*i)) > 0)
        .collect();
    seen.dedup();
    ck.check(
        seen.len() == steps as usize,
        format!("{name}: every step 0..{steps} ran"),
    );
    let twice: Vec<u32> = (0..steps)
        .filter(|i| tr.count(&Event::Step(*i)) > 1)
        .collect();
    ck.check(
        twice.len() <= 1 && !twice.contains(&0),
        format!("{name}: at most one step (not step 0) ran twice: {twice:?}"),
    );
}

pub fn check_output(ck: &mut Checks, what: &str, expected: &str, got: &str) {
    let result = expected.lines().last().unwrap_or_default();
    ck.check(
        got.lines().any(|l| l == result),
        format!("{what}: contains the uninterrupted {result:?}"),
    );
    ck.check(
        got == expected,
        format!(
            "{what} equals an uninterrupted run's output: {}",
            first_difference(expected, got)
        ),
    );
}

/// The final checkpoint on SIGTERM: when the program stopped, the newest generation of each
/// program directory (paired with its trace) records attempt 0, was written after the signal
/// (`since_ms`, when known), and at most one step ran after it (periodic images alone lose
/// up to an interval, 10 steps).
pub fn check_final_checkpoint(
    ck: &mut Checks,
    dirs: &[PathBuf],
    traces: &[&Path],
    since_ms: Option<i64>,
    what: &str,
) {
    for (d, tr) in dirs.iter().zip(traces) {
        let m = latest_manifest(d);
        let t = m
            .as_ref()
            .map(|m| (m.time_unix * 1000.0) as i64)
            .unwrap_or(0);
        if let Some(since) = since_ms {
            ck.check(
                m.is_some() && t >= since,
                format!(
                    "{what}: newest generation of {} written after the signal (final checkpoint): \
                     written at {t}, signal at {since} ({:+} ms)",
                    d.display(),
                    t - since
                ),
            );
        }
        // Called before the job runs again: the trace holds the first run only.
        let trace = Trace::read(tr);
        let after: Vec<u32> = trace
            .runs()
            .first()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|(e, at)| match e {
                Event::Step(i) if *at > t => Some(*i),
                _ => None,
            })
            .collect();
        ck.check(
            m.is_some() && after.len() <= 1,
            format!(
                "{what}: at most one step ran after the newest generation of {} (final \
                 checkpoint when the program was stopped): steps after it {after:?}",
                d.display()
            ),
        );
        ck.check(
            m.as_ref().is_some_and(|m| m.attempt == 0),
            format!(
                "{what}: that generation records attempt 0: {:?}",
                m.map(|m| m.attempt)
            ),
        );
    }
}

pub fn check_images_removed(ck: &mut Checks, dirs: &[PathBuf]) {
    for d in dirs {
        ck.check(
            generations(d).is_empty(),
            format!(
                "program ended normally: its images are gone ({})",
                describe_store(d)
            ),
        );
    }
}

pub fn context(ctx: &Ctx, job: JobId, traces: &[&Path]) -> String {
    format!(
        "job {job}: state {:?}, restarts {}, nodes {:?}\n{}\n== {job}.out\n{}\n== {job}.err\n{}\n== stores\n{}",
        ctx.c.job_state(job),
        ctx.restarts(job),
        ctx.c.job_field(job, "NodeList"),
        traces
            .iter()
            .map(|t| format!("{}: {}", t.display(), Trace::read(t).summary()))
            .collect::<Vec<_>>()
            .join("\n"),
        ctx.c.read_output(job).unwrap_or_default(),
        ctx.stderr_of(job),
        ctx.stores(job)
    )
}

// ---- cases --------------------------------------------------------------------------------

/// A batch job runs the counter directly (`--checkpoint=5s`, 50 steps); `scontrol requeue` in
/// the middle: a final checkpoint, then the job runs again and the counter resumes from it,
/// with the output of an uninterrupted run and its images gone at the end.
pub fn requeue_batch(ctx: &Ctx) {
    Scenario::new(ctx, "requeue-batch", 50, &["--checkpoint=5s"])
        .ready(Ready::Checkpointed(14))
        .ending(Ending::Resumed {
            after: "after the requeue",
            trace: TraceCheck::Runs,
        })
        .run(|r| r.requeue_with_final_checkpoint("one program directory (the counter, not bash)"));
}
