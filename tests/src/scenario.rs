//! One interrupted-job scenario as a fixed sequence: submit a script running the counter,
//! wait until it runs, act on the job (requeue, `torpor checkpoint`, vacate, ...), wait
//! until it ended, then check that its output equals an uninterrupted run's and that its
//! images are gone. Each case supplies the script and the action (with its own checks).

use std::path::PathBuf;
use std::time::Duration;

use crate::resume::{now_ms, Checks, Trace};
use crate::resume_checks::{
    check_final_checkpoint, check_images_removed, check_output, check_resumed_once,
    check_resumed_trace, context, Ctx,
};
use crate::JobId;

/// What the scenario waits for before acting.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    /// The trace reached the step and the program directory has a complete generation
    /// (periodic checkpoints).
    Checkpointed(u32),
    /// The trace reached the step and the program directory exists (no generation needed).
    Running(u32),
}

/// How a resumed program's trace is checked.
#[derive(Debug, Clone, Copy)]
pub enum TraceCheck {
    /// Two runs split by the pause ([`check_resumed_trace`]).
    Runs,
    /// By counting lines only ([`check_resumed_once`]).
    Counts,
}

/// How the job must end.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// It completes without a restart.
    Uninterrupted,
    /// It is requeued exactly once, runs again, resumes and completes; `after` names the
    /// interruption in messages ("after the requeue").
    Resumed {
        after: &'static str,
        trace: TraceCheck,
    },
}

/// The running job handed to the action.
pub struct Running<'a> {
    pub ctx: &'a Ctx,
    pub job: JobId,
    pub steps: u32,
    pub trace: PathBuf,
    /// The program directories found when the job was ready.
    pub dirs: Vec<PathBuf>,
    pub ck: Checks,
}

type Script<'a> = Box<dyn Fn(&str) -> String + 'a>;

/// A scenario: see the module documentation.
pub struct Scenario<'a> {
    ctx: &'a Ctx,
    tag: &'a str,
    steps: u32,
    args: &'a [&'a str],
    script: Script<'a>,
    ready: Ready,
    ending: Ending,
    /// What the batch script prints after the counter's output.
    tail: &'a str,
}

impl<'a> Scenario<'a> {
    /// `counter STEPS` run directly by a bash batch script, submitted with `args`; `tag`
    /// names its trace.
    pub fn new(ctx: &'a Ctx, tag: &'a str, steps: u32, args: &'a [&'a str]) -> Self {
        Self {
            ctx,
            tag,
            steps,
            args,
            script: Box::new(|cmd| format!("#!/bin/bash\n{cmd}\n")),
            ready: Ready::Checkpointed(14),
            ending: Ending::Uninterrupted,
            tail: "",
        }
    }

    /// The batch script, given the counter's command line.
    pub fn script(mut self, f: impl Fn(&str) -> String + 'a) -> Self {
        self.script = Box::new(f);
        self
    }

    pub fn ready(mut self, r: Ready) -> Self {
        self.ready = r;
        self
    }

    pub fn ending(mut self, e: Ending) -> Self {
        self.ending = e;
        self
    }

    /// Lines the script prints after the counter (the expected output is the
    /// uninterrupted counter's followed by these).
    pub fn output_tail(mut self, tail: &'a str) -> Self {
        self.tail = tail;
        self
    }

    /// Runs the sequence with `act` between "ready" and "ended"; panics listing every
    /// failed check.
    pub fn run(self, act: impl FnOnce(&mut Running<'a>)) {
        let ctx = self.ctx;
        let (cmd, trace) = ctx.command(self.steps, self.tag);
        let job = ctx.submit(self.args, &(self.script)(&cmd));
        let dirs = match self.ready {
            Ready::Checkpointed(step) => {
                let d = ctx.wait_progress(job, &[&trace], step, 1);
                eprintln!("  before acting: {}", ctx.stores(job));
                d
            }
            Ready::Running(step) => ctx.wait_running(job, &[&trace], step, 1),
        };
        let mut r = Running {
            ctx,
            job,
            steps: self.steps,
            trace,
            dirs,
            ck: Checks::default(),
        };
        let t_act = now_ms();
        act(&mut r);
        let Running {
            trace,
            dirs,
            mut ck,
            ..
        } = r;
        match self.ending {
            Ending::Uninterrupted => {
                let fin = ctx.wait_end(job);
                ck.check(fin == "COMPLETED", format!("job completed: {fin}"));
            }
            Ending::Resumed { after, trace: tc } => {
                let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
                eprintln!("  ended {fin} after {} ms", now_ms() - t_act);
                ck.check(fin == "COMPLETED", format!("job completed {after}: {fin}"));
                ck.check(ctx.restarts(job) == 1, "requeued exactly once");
                let tr = Trace::read(&trace);
                match tc {
                    TraceCheck::Runs => {
                        check_resumed_trace(&mut ck, "counter", &tr, self.steps);
                    }
                    TraceCheck::Counts => check_resumed_once(&mut ck, "counter", &tr, self.steps),
                }
            }
        }
        check_output(
            &mut ck,
            "job output file",
            &format!("{}{}", ctx.reference(self.steps), self.tail),
            &ctx.c.read_output(job).unwrap_or_default(),
        );
        check_images_removed(&mut ck, &dirs);
        ck.finish(&context(ctx, job, &[&trace]));
    }
}

impl Running<'_> {
    /// `scontrol requeue`, wait until the job stopped, then check there is one program
    /// directory (`one_dir`: which one) whose newest generation is the final checkpoint.
    pub fn requeue_with_final_checkpoint(&mut self, one_dir: &str) {
        let t_req = now_ms();
        self.ctx.c.requeue(self.job).expect("scontrol requeue");
        let (state, t_stop) = self.ctx.wait_stopped(self.job);
        eprintln!(
            "  after requeue: {state} after {} ms; {}",
            t_stop - t_req,
            self.ctx.stores(self.job)
        );
        self.ck
            .check(self.dirs.len() == 1, format!("{one_dir}: {:?}", self.dirs));
        check_final_checkpoint(
            &mut self.ck,
            &self.dirs,
            &[&self.trace],
            Some(t_req),
            "requeue",
        );
    }
}
