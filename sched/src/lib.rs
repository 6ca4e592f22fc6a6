//! torpor-sched: the batch system as the operator verbs see it (jobs, steps, signals,
//! requeue, node drain) behind one trait, so that a PBS front end can sit beside Slurm's.
//!
//! Implementations talk to the batch system through its own client commands, found on
//! PATH (never a hard-coded path), and report a refusal with the command and the batch
//! system's own message: authorization is the batch system's, not ours.
#![forbid(unsafe_code)]

pub mod slurm;

use std::fmt;
use std::path::PathBuf;

pub use slurm::Slurm;

/// What went wrong talking to the batch system.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("cannot run {cmd}: {source} (is it on PATH? set {var} to its location)")]
    Spawn {
        cmd: String,
        var: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The batch system said no (permission, unknown job, bad state, ...).
    #[error("`{cmd}` refused: {message}")]
    Refused { cmd: String, message: String },
    #[error("`{cmd}` printed something unexpected: {detail}")]
    Parse { cmd: String, detail: String },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, SchedError>;

/// A job, or one step of it: `1234`, `1234.0`, `1234.batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    pub job: u64,
    pub step: Option<StepId>,
}

/// A step of a job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepId {
    /// The batch script's step.
    Batch,
    /// A launched step (`srun`): 0, 1, ...
    Num(u32),
}

/// Slurm's numeric id of the batch step (what the plugin hands the agent).
pub const BATCH_STEP_NUM: u32 = 4_294_967_291;

impl StepId {
    /// Parses `batch`, a step number, or the batch step's numeric id.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "batch" => Some(Self::Batch),
            _ => match s.parse::<u32>().ok()? {
                BATCH_STEP_NUM => Some(Self::Batch),
                n if n < 0xffff_ff00 => Some(Self::Num(n)),
                _ => None,
            },
        }
    }
    /// The directory name the agent uses for this step.
    pub fn dir_name(&self) -> String {
        match self {
            Self::Batch => BATCH_STEP_NUM.to_string(),
            Self::Num(n) => n.to_string(),
        }
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Batch => f.write_str("batch"),
            Self::Num(n) => write!(f, "{n}"),
        }
    }
}

impl JobRef {
    /// `JOBID` or `JOBID.STEP`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || SchedError::Usage(format!("{s:?} is not JOBID or JOBID.STEP"));
        let (job, step) = match s.split_once('.') {
            Some((j, st)) => (j, Some(StepId::parse(st).ok_or_else(bad)?)),
            None => (s, None),
        };
        Ok(Self {
            job: job.parse().map_err(|_| bad())?,
            step,
        })
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(s) => write!(f, "{}.{s}", self.job),
            None => write!(f, "{}", self.job),
        }
    }
}

/// A job as the verbs need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub name: String,
    pub user: String,
    pub uid: u32,
    /// RUNNING, PENDING, COMPLETING, ... as the batch system spells it.
    pub state: String,
    /// The allocated nodes in the batch system's compact form (`n[1-3]`).
    pub nodes: String,
    /// Where the batch script runs.
    pub batch_host: String,
    /// How often the job was requeued (the agent's attempt number).
    pub restarts: u32,
    pub partition: String,
    /// Whether the batch system may requeue it.
    pub requeue: bool,
}

impl Job {
    pub fn is_running(&self) -> bool {
        self.state == "RUNNING"
    }
}

/// A running step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub id: StepId,
    pub state: String,
    pub nodes: String,
}

/// Who gets a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The batch step: the batch shell and every process under it.
    Batch(u64),
    /// One launched step, all its tasks.
    Step(u64, u32),
}

/// The batch system front end.
pub trait Scheduler: Send + Sync {
    /// `slurm`, `pbs`, ...
    fn name(&self) -> &'static str;
    /// The job, or `None` when the batch system does not know it (any more).
    fn job(&self, id: u64) -> Result<Option<Job>>;
    /// Every job the batch system shows the caller (all states), in one query.
    fn jobs(&self) -> Result<Vec<Job>>;
    /// Ids of the jobs still in the queue in any state (pending, running, suspended,
    /// requeued, held, completing): a job that may run again is among them.
    fn queued(&self) -> Result<Vec<u64>>;
    /// Running or suspended jobs with an allocation on any of `nodes`.
    fn jobs_on_nodes(&self, nodes: &[String]) -> Result<Vec<u64>>;
    /// The job's running steps (the batch step included).
    fn steps(&self, job: u64) -> Result<Vec<Step>>;
    /// Sends `signal` to the target's processes.
    fn signal(&self, target: &SignalTarget, signal: i32) -> Result<()>;
    /// Puts a running job back in the queue (its processes get SIGTERM, then SIGKILL).
    fn requeue(&self, job: u64) -> Result<()>;
    /// Stops new work landing on `nodes`; running jobs continue.
    fn drain(&self, nodes: &[String], reason: &str) -> Result<()>;
    /// The node's state as the batch system spells it (`IDLE`, `MIXED+DRAIN`, ...).
    fn node_state(&self, node: &str) -> Result<String>;
    /// `n[1-2],n5` -> `n1 n2 n5`.
    fn expand_nodes(&self, list: &str) -> Result<Vec<String>>;
    /// The SPANK plugin stack file the batch system reads, if it has one.
    fn plugstack_path(&self) -> Result<Option<PathBuf>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_refs() {
        assert_eq!(
            JobRef::parse("12").unwrap(),
            JobRef {
                job: 12,
                step: None
            }
        );
        assert_eq!(JobRef::parse("12.0").unwrap().step, Some(StepId::Num(0)));
        assert_eq!(JobRef::parse("12.batch").unwrap().step, Some(StepId::Batch));
        assert_eq!(
            JobRef::parse("12.4294967291").unwrap().step,
            Some(StepId::Batch)
        );
        assert_eq!(JobRef::parse("12.batch").unwrap().to_string(), "12.batch");
        for bad in ["", "x", "12.", "12.x", "-1", "12.4294967294"] {
            assert!(JobRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(StepId::Batch.dir_name(), "4294967291");
    }
}
