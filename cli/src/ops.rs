//! The operator verbs on batch jobs: `torpor checkpoint JOBID[.STEP]` (checkpoint now, keep
//! running), `torpor vacate JOBID` (checkpoint, then requeue) and `torpor drain NODES`
//! (drain, then vacate every checkpointed job on the nodes).
//!
//! Only steps whose tasks left a marker for the job's current attempt (the agent writes
//! `task.json` when a task of a checkpointed step starts) are ever signalled: a job
//! without checkpointing would be killed by the request signal. Every process that
//! carries the agent but is not checkpointed itself ignores the signal harmlessly.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use torpor_image::store::Store;
use torpor_sched::{Job, JobRef, Scheduler, SignalTarget, StepId};

use crate::images::{self, Program};
use crate::site::Site;
use crate::table::{Progress, Table};

/// What the verbs share.
pub struct Ctx<'a> {
    pub sched: &'a dyn Scheduler,
    pub site: &'a Site,
}

/// How one program answered the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A new generation is durable.
    Committed(u64),
    /// The round failed; the program runs on.
    Failed(String),
    /// The program ended (normally) meanwhile: nothing left to checkpoint.
    Ended,
    /// No answer within the time limit (or the job stopped).
    NoAnswer,
}

/// One program's result.
#[derive(Debug, Clone)]
pub struct ProgramResult {
    pub program: Program,
    pub before: u64,
    pub answer: Answer,
}

/// The result of checkpointing one job.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    pub job: Job,
    pub dir: PathBuf,
    pub steps: Vec<StepId>,
    pub programs: Vec<ProgramResult>,
    pub secs: f64,
}

impl CheckpointReport {
    pub fn ok(&self) -> bool {
        self.programs
            .iter()
            .all(|p| matches!(p.answer, Answer::Committed(_) | Answer::Ended))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "job": self.job.id,
            "user": self.job.user,
            "dir": self.dir,
            "steps": self.steps.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "ok": self.ok(),
            "seconds": self.secs,
            "programs": self.programs.iter().map(|p| {
                let (result, generation, error) = match &p.answer {
                    Answer::Committed(g) => ("committed", Some(*g), None),
                    Answer::Failed(e) => ("failed", None, Some(e.clone())),
                    Answer::Ended => ("ended", None, None),
                    Answer::NoAnswer => ("no answer", None, Some("did not commit a new generation in time".to_owned())),
                };
                json!({
                    "step": p.program.step.to_string(), "task": p.program.task,
                    "program": p.program.name, "dir": p.program.dir,
                    "previous_generation": p.before, "result": result,
                    "generation": generation, "error": error,
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// Slurm-style table rows.
    pub fn table(&self) -> Table {
        let mut t = Table::new(&["JOBID", "STEP", "TASK", "PROGRAM", "RESULT", "GEN"]);
        for p in &self.programs {
            let (r, g) = match &p.answer {
                Answer::Committed(g) => ("committed".to_owned(), g.to_string()),
                Answer::Failed(e) => (format!("FAILED: {e}"), "-".into()),
                Answer::Ended => ("ended meanwhile".to_owned(), "-".into()),
                Answer::NoAnswer => ("NO ANSWER".to_owned(), "-".into()),
            };
            t.row(vec![
                self.job.id.to_string(),
                p.program.step.to_string(),
                p.program.task.clone(),
                p.program.name.clone(),
                r,
                g,
            ]);
        }
        t
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Ctx<'_> {
    /// The job, which must be known to the batch system.
    pub fn job(&self, id: u64) -> Result<Job> {
        self.sched
            .job(id)?
            .with_context(|| format!("job {id} is not known to {}", self.sched.name()))
    }

    /// Steps of the job that run with checkpointing in its current attempt (empty: the
    /// job does not checkpoint, and must never get the request signal).
    pub fn checkpointed_steps(&self, job: &Job) -> Result<Vec<StepId>> {
        let dir = self.site.job_dir(job);
        if let Err(e) = std::fs::read_dir(&dir) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                bail!(
                    "cannot read {} ({e}): only the job's user or root can tell whether job {} checkpoints",
                    dir.display(),
                    job.id
                );
            }
        }
        Ok(images::checkpointed_steps(&dir, job.restarts))
    }

    /// Asks every checkpointed program of the job (or of one step) for a checkpoint and
    /// waits until each committed a new generation, failed, ended, or `timeout` passed.
    pub fn checkpoint(
        &self,
        job: &Job,
        only: Option<&StepId>,
        timeout: Duration,
        mut progress: Progress,
    ) -> Result<CheckpointReport> {
        if !job.is_running() {
            bail!(
                "job {} is {}: only a running job can be checkpointed",
                job.id,
                job.state
            );
        }
        let dir = self.site.job_dir(job);
        let marked = self.checkpointed_steps(job)?;
        if marked.is_empty() {
            bail!(
                "job {} does not run with checkpointing (no torpor marker for attempt {} under {}); it was not signalled",
                job.id,
                job.restarts,
                dir.display()
            );
        }
        let running: Vec<StepId> = self
            .sched
            .steps(job.id)?
            .into_iter()
            .filter(|s| s.state == "RUNNING")
            .map(|s| s.id)
            .collect();
        let mut steps: Vec<StepId> = marked
            .iter()
            .filter(|s| running.contains(s))
            .filter(|s| only.is_none_or(|o| o == *s))
            .cloned()
            .collect();
        steps.sort();
        if let Some(o) = only {
            if !marked.contains(o) {
                bail!("step {}.{o} does not run with checkpointing", job.id);
            }
            if steps.is_empty() {
                bail!("step {}.{o} is not running", job.id);
            }
        }
        let programs: Vec<ProgramResult> = images::programs(&dir)
            .into_iter()
            .filter(|p| steps.contains(&p.step) && p.started_in.contains(&job.restarts))
            .map(|p| ProgramResult {
                before: p.newest(),
                program: p,
                answer: Answer::NoAnswer,
            })
            .collect();
        let t0 = Instant::now();
        let sent_at = now_unix();
        for s in &steps {
            let target = match s {
                StepId::Batch => SignalTarget::Batch(job.id),
                StepId::Num(n) => SignalTarget::Step(job.id, *n),
            };
            self.sched.signal(&target, self.site.signal)?;
        }
        let mut report = CheckpointReport {
            job: job.clone(),
            dir,
            steps,
            programs,
            secs: 0.0,
        };
        let total = report.programs.len();
        let mut last_state_check = Instant::now();
        loop {
            for p in report
                .programs
                .iter_mut()
                .filter(|p| p.answer == Answer::NoAnswer)
            {
                p.answer = poll(&p.program.dir, p.before, sent_at);
            }
            let done = report
                .programs
                .iter()
                .filter(|p| p.answer != Answer::NoAnswer)
                .count();
            progress.update(done, total, &format!("programs of job {} answered", job.id));
            if done == total || t0.elapsed() >= timeout {
                break;
            }
            if last_state_check.elapsed() > Duration::from_secs(2) {
                last_state_check = Instant::now();
                if let Ok(Some(j)) = self.sched.job(job.id) {
                    if !j.is_running() {
                        break; // it ended or was requeued meanwhile: nobody will answer
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        progress.finish();
        report.secs = t0.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// One look at a program directory after the request was sent at `sent_at`.
fn poll(dir: &std::path::Path, before: u64, sent_at: f64) -> Answer {
    if !dir.exists() {
        return Answer::Ended;
    }
    let newest = Store::new(dir)
        .generations()
        .ok()
        .and_then(|g| g.last().copied())
        .unwrap_or(0);
    if newest > before {
        return Answer::Committed(newest);
    }
    let status = images::read_json(&dir.join("status.json"));
    if let Some(s) = status {
        let t = s["time_unix"].as_f64().unwrap_or(0.0);
        if s["ok"].as_bool() == Some(false) && t >= sent_at - 1.0 {
            return Answer::Failed(s["error"].as_str().unwrap_or("unknown error").to_owned());
        }
    }
    Answer::NoAnswer
}

/// `torpor checkpoint JOBID[.STEP]`.
pub fn checkpoint_verb(ctx: &Ctx, target: &str, timeout: u64, json: bool) -> Result<i32> {
    let r = JobRef::parse(target)?;
    let job = ctx.job(r.job)?;
    let rep = ctx.checkpoint(
        &job,
        r.step.as_ref(),
        Duration::from_secs(timeout),
        Progress::new(!json),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rep.to_json())?);
    } else {
        if rep.programs.is_empty() {
            println!(
                "job {}: no checkpointed program is running (steps {})",
                job.id,
                steps_list(&rep.steps)
            );
        } else {
            rep.table().print();
        }
        if !rep.ok() {
            eprintln!("torpor: {}", not_ok_summary(&rep, timeout));
        }
    }
    Ok(if rep.ok() { 0 } else { 1 })
}

fn steps_list(s: &[StepId]) -> String {
    if s.is_empty() {
        return "none running".into();
    }
    s.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn not_ok_summary(rep: &CheckpointReport, timeout: u64) -> String {
    let bad: Vec<String> = rep
        .programs
        .iter()
        .filter(|p| !matches!(p.answer, Answer::Committed(_) | Answer::Ended))
        .map(|p| match &p.answer {
            Answer::Failed(e) => format!("{} ({e})", p.program.label()),
            _ => p.program.label(),
        })
        .collect();
    format!(
        "job {}: {} program(s) did not commit a new generation within {timeout} s: {}",
        rep.job.id,
        bad.len(),
        bad.join(", ")
    )
}

/// The outcome of vacating one job.
#[derive(Debug)]
pub struct Vacated {
    pub job: Job,
    pub checkpointing: bool,
    pub checkpoint: Option<CheckpointReport>,
    pub requeued: bool,
    /// Why it was not (fully) handled.
    pub problem: Option<String>,
}

impl Vacated {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }

    pub fn action(&self) -> &'static str {
        match (self.checkpointing, self.requeued) {
            (true, true) => "checkpointed, requeued",
            (false, true) => "requeued WITHOUT checkpoint (work lost)",
            (true, false) => "left running (checkpoint incomplete)",
            (false, false) => "left running (no checkpointing)",
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "job": self.job.id, "user": self.job.user, "state": self.job.state,
            "nodes": self.job.nodes, "checkpointing": self.checkpointing,
            "action": self.action(), "requeued": self.requeued, "ok": self.ok(),
            "problem": self.problem,
            "checkpoint": self.checkpoint.as_ref().map(CheckpointReport::to_json),
        })
    }
}

impl Ctx<'_> {
    /// Checkpoint, then requeue. Without `force`, a job that does not checkpoint, or whose
    /// checkpoint is incomplete, is left running and reported.
    pub fn vacate(&self, job: &Job, force: bool, timeout: Duration, progress: Progress) -> Vacated {
        let mut v = Vacated {
            job: job.clone(),
            checkpointing: false,
            checkpoint: None,
            requeued: false,
            problem: None,
        };
        match self.checkpointed_steps(job) {
            Ok(s) => v.checkpointing = !s.is_empty(),
            Err(e) => {
                v.problem = Some(format!("{e:#}"));
                return v;
            }
        }
        if !job.is_running() {
            v.problem = Some(format!("job is {}, not running", job.state));
            return v;
        }
        if v.checkpointing {
            match self.checkpoint(job, None, timeout, progress) {
                Ok(rep) => {
                    if !rep.ok() {
                        v.problem = Some(not_ok_summary(&rep, timeout.as_secs()));
                    }
                    v.checkpoint = Some(rep);
                }
                Err(e) => v.problem = Some(format!("{e:#}")),
            }
            if v.problem.is_some() && !force {
                return v;
            }
        } else if !force {
            v.problem = Some(
                "does not run with checkpointing: requeueing it would lose its work (--force requeues anyway)"
                    .into(),
            );
            return v;
        }
        match self.sched.requeue(job.id) {
            Ok(()) => {
                v.requeued = true;
                if !v.checkpointing {
                    v.problem = None; // forced: done as asked, reported as work lost
                } else if force {
                    v.problem = v
                        .problem
                        .take()
                        .map(|p| format!("{p}; requeued anyway (--force)"));
                }
            }
            Err(e) => v.problem = Some(e.to_string()),
        }
        v
    }
}

/// `torpor vacate JOBID`.
pub fn vacate_verb(ctx: &Ctx, job: u64, force: bool, timeout: u64, json: bool) -> Result<i32> {
    let job = ctx.job(job)?;
    let v = ctx.vacate(
        &job,
        force,
        Duration::from_secs(timeout),
        Progress::new(!json),
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&v.to_json())?);
    } else {
        if let Some(rep) = &v.checkpoint {
            rep.table().print();
        }
        if v.requeued {
            println!(
                "job {}: {}; it resumes from its newest generations when it runs again",
                job.id,
                v.action()
            );
        }
        if let Some(p) = &v.problem {
            eprintln!("torpor: job {}: {p}", job.id);
        }
    }
    Ok(if v.ok() { 0 } else { 1 })
}

/// `torpor drain NODE[,NODE...] --reason TEXT [--force]`.
pub fn drain_verb(
    ctx: &Ctx,
    nodes: &str,
    reason: &str,
    force: bool,
    timeout: u64,
    json: bool,
) -> Result<i32> {
    let nodes = ctx.sched.expand_nodes(nodes)?;
    if nodes.is_empty() {
        bail!("no node named");
    }
    // First, so that nothing new (nor a requeued job) lands on them.
    ctx.sched.drain(&nodes, reason)?;
    let ids = ctx.sched.jobs_on_nodes(&nodes)?;
    let mut jobs = Vec::new();
    for id in ids {
        match ctx.sched.job(id) {
            Ok(Some(j)) => jobs.push(j),
            Ok(None) => {} // ended meanwhile
            Err(e) => eprintln!("torpor: job {id}: {e}"),
        }
    }
    let done = AtomicUsize::new(0);
    let total = jobs.len();
    let timeout = Duration::from_secs(timeout);
    let results: Vec<Vacated> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|j| {
                let done = &done;
                s.spawn(move || {
                    let v = ctx.vacate(j, force, timeout, Progress::new(false));
                    done.fetch_add(1, Ordering::SeqCst);
                    v
                })
            })
            .collect();
        let mut progress = Progress::new(!json);
        while handles.iter().any(|h| !h.is_finished()) {
            progress.update(done.load(Ordering::SeqCst), total, "jobs handled");
            std::thread::sleep(Duration::from_millis(200));
        }
        progress.finish();
        handles
            .into_iter()
            .zip(&jobs)
            .map(|(h, j)| {
                h.join().unwrap_or_else(|_| Vacated {
                    job: j.clone(),
                    checkpointing: false,
                    checkpoint: None,
                    requeued: false,
                    problem: Some("internal error (thread panicked)".into()),
                })
            })
            .collect()
    });
    let states: Vec<(String, String)> = nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                ctx.sched
                    .node_state(n)
                    .unwrap_or_else(|e| format!("unknown ({e})")),
            )
        })
        .collect();
    let all_ok = results.iter().all(Vacated::ok);
    if json {
        let v = json!({
            "nodes": states.iter().map(|(n, s)| json!({"node": n, "state": s})).collect::<Vec<_>>(),
            "reason": reason,
            "ok": all_ok,
            "jobs": results.iter().map(Vacated::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut t = Table::new(&["JOBID", "USER", "NODELIST", "CHECKPOINT", "ACTION"]);
        for r in &results {
            t.row(vec![
                r.job.id.to_string(),
                r.job.user.clone(),
                r.job.nodes.clone(),
                if r.checkpointing { "yes" } else { "no" }.into(),
                r.action().into(),
            ]);
        }
        if !results.is_empty() {
            t.print();
        }
        let mut n = Table::new(&["NODELIST", "STATE", "REASON"]);
        for (node, st) in &states {
            n.row(vec![node.clone(), st.clone(), reason.to_owned()]);
        }
        n.print();
        for r in &results {
            if let Some(p) = &r.problem {
                eprintln!("torpor: job {}: {p}", r.job.id);
            }
            if r.requeued && !r.checkpointing {
                eprintln!(
                    "torpor: job {} was requeued without a checkpoint: its work so far is lost",
                    r.job.id
                );
            }
        }
    }
    Ok(if all_ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use torpor_image::store::Manifest;

    #[test]
    fn poll_tells_the_answers_apart() {
        let d = std::env::temp_dir().join(format!("torpor-poll-{}", std::process::id()));
        let store = Store::new(&d);
        store.create().unwrap();
        let sent = now_unix();
        assert_eq!(poll(&d, 0, sent), Answer::NoAnswer);
        // An old failure (before the request) is not the answer.
        std::fs::write(
            d.join("status.json"),
            format!(
                r#"{{"ok":false,"error":"old","time_unix":{}}}"#,
                sent - 60.0
            ),
        )
        .unwrap();
        assert_eq!(poll(&d, 0, sent), Answer::NoAnswer);
        std::fs::write(
            d.join("status.json"),
            format!(
                r#"{{"ok":false,"error":"disk full","time_unix":{}}}"#,
                sent + 0.5
            ),
        )
        .unwrap();
        assert_eq!(poll(&d, 0, sent), Answer::Failed("disk full".into()));
        let m = Manifest {
            generation: 0,
            attempt: 0,
            time_unix: sent,
            hostname: "n1".into(),
            ..Manifest::default()
        };
        store.begin(0).unwrap().commit(m).unwrap();
        assert_eq!(poll(&d, 0, sent), Answer::Committed(1));
        assert_eq!(poll(&d, 1, sent), Answer::Failed("disk full".into()));
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(poll(&d, 1, sent), Answer::Ended);
    }
}
