//! The Slurm front end: `scontrol`, `squeue` and `scancel` from PATH (or from
//! `TORPOR_SCONTROL`, `TORPOR_SQUEUE`, `TORPOR_SCANCEL`), and parsers for their output.
//!
//! Signals: `scancel --full --signal=S JOB` reaches the batch shell and every process under
//! it (srun clients included) but no launched step; `scancel --signal=S JOB.STEP` reaches
//! one step's tasks (Slurm 22.05 semantics, checked by the cluster tests).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::{Job, Result, SchedError, Scheduler, SignalTarget, Step, StepId};

/// Environment variables that point at the Slurm clients.
pub const SCONTROL_VAR: &str = "TORPOR_SCONTROL";
pub const SQUEUE_VAR: &str = "TORPOR_SQUEUE";
pub const SCANCEL_VAR: &str = "TORPOR_SCANCEL";

/// Slurm through its client commands.
#[derive(Debug, Clone)]
pub struct Slurm {
    scontrol: OsString,
    squeue: OsString,
    scancel: OsString,
}

fn from_env(var: &str, default: &str) -> OsString {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

/// The output of a command that ran.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Default for Slurm {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Slurm {
    /// The clients named by the environment, else `scontrol`, `squeue`, `scancel` on PATH.
    pub fn from_env() -> Self {
        Self {
            scontrol: from_env(SCONTROL_VAR, "scontrol"),
            squeue: from_env(SQUEUE_VAR, "squeue"),
            scancel: from_env(SCANCEL_VAR, "scancel"),
        }
    }

    fn run(&self, which: &OsString, var: &'static str, args: &[String]) -> Result<(String, Ran)> {
        let shown = format!(
            "{} {}",
            std::path::Path::new(which)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            args.join(" ")
        );
        let out = Command::new(which)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| SchedError::Spawn {
                cmd: shown.clone(),
                var,
                source,
            })?;
        Ok((
            shown,
            Ran {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
        ))
    }

    /// Runs a command that must succeed without complaint; returns stdout.
    fn must(&self, which: &OsString, var: &'static str, args: &[String]) -> Result<String> {
        let (cmd, r) = self.run(which, var, args)?;
        // scancel reports some refusals on stderr with exit status 0 in older releases.
        if !r.ok || r.stderr.contains("error:") {
            return Err(SchedError::Refused {
                cmd,
                message: slurm_message(&r.stderr, &r.stdout),
            });
        }
        Ok(r.stdout)
    }

    fn scontrol(&self, args: &[String]) -> Result<String> {
        self.must(&self.scontrol, SCONTROL_VAR, args)
    }
}

/// Slurm's own message, without the `scontrol: error:` decoration repeated per line.
pub fn slurm_message(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no message (non-zero exit status)".to_owned()
    } else {
        lines.join("; ")
    }
}

/// Whether Slurm's message says the job (or step) does not exist.
pub fn is_invalid_job(message: &str) -> bool {
    message.contains("Invalid job id")
}

/// `Key=value Key=value ...` from one `scontrol -o` line. A word without `=` continues the
/// previous value (values such as `Reason=Not responding` contain spaces).
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for w in line.split_whitespace() {
        let key = w.split_once('=').filter(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_:/.".contains(c))
        });
        match key {
            Some((k, v)) => {
                m.insert(k.to_owned(), v.to_owned());
                last = Some(k.to_owned());
            }
            None => {
                if let Some(v) = last.as_ref().and_then(|k| m.get_mut(k)) {
                    v.push(' ');
                    v.push_str(w);
                }
            }
        }
    }
    m
}

/// `name(1001)` -> (`name`, 1001).
fn name_and_id(v: &str) -> (String, u32) {
    match v.split_once('(') {
        Some((n, rest)) => (
            n.to_owned(),
            rest.trim_end_matches(')').parse().unwrap_or(u32::MAX),
        ),
        None => (v.to_owned(), v.parse().unwrap_or(u32::MAX)),
    }
}

/// One job from `scontrol -o show job ID`.
pub fn parse_job(line: &str) -> Option<Job> {
    let m = parse_kv(line);
    let get = |k: &str| m.get(k).cloned().unwrap_or_default();
    let id = m.get("JobId")?.parse().ok()?;
    let (user, uid) = name_and_id(&get("UserId"));
    let null = |s: String| if s == "(null)" { String::new() } else { s };
    Some(Job {
        id,
        name: get("JobName"),
        user,
        uid,
        state: get("JobState"),
        nodes: null(get("NodeList")),
        batch_host: null(get("BatchHost")),
        restarts: get("Restarts").parse().unwrap_or(0),
        partition: get("Partition"),
        requeue: get("Requeue") == "1",
    })
}

/// Every job of `scontrol -o show job` (one line each; "No jobs in the system" gives none).
pub fn parse_jobs(text: &str) -> Vec<Job> {
    text.lines()
        .filter(|l| l.starts_with("JobId="))
        .filter_map(parse_job)
        .collect()
}

/// Steps from `scontrol -o show step JOB` (the batch step included; extern and
/// interactive steps, which torpor never checkpoints, left out).
pub fn parse_steps(text: &str) -> Vec<Step> {
    text.lines()
        .filter_map(|l| {
            let m = parse_kv(l);
            let id = m.get("StepId")?.split_once('.')?.1.to_owned();
            Some(Step {
                id: StepId::parse(&id)?,
                state: m.get("State").cloned().unwrap_or_default(),
                nodes: m.get("NodeList").cloned().unwrap_or_default(),
            })
        })
        .collect()
}

/// `PlugStackConfig = /etc/slurm/plugstack.conf` from `scontrol show config`.
pub fn parse_plugstack_path(config: &str) -> Option<PathBuf> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        if k.trim() != "PlugStackConfig" {
            return None;
        }
        let v = v.trim();
        (!v.is_empty() && v != "(null)").then(|| PathBuf::from(v))
    })
}

fn ids(text: &str) -> Vec<u64> {
    let mut v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Scheduler for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn job(&self, id: u64) -> Result<Option<Job>> {
        let args = vec!["-o".into(), "show".into(), "job".into(), id.to_string()];
        let (cmd, r) = self.run(&self.scontrol, SCONTROL_VAR, &args)?;
        let msg = slurm_message(&r.stderr, &r.stdout);
        if !r.ok {
            if is_invalid_job(&msg) {
                return Ok(None);
            }
            return Err(SchedError::Refused { cmd, message: msg });
        }
        // A job array or het job lists several records; the one asked for is first.
        let line = r.stdout.lines().find(|l| l.starts_with("JobId="));
        match line.and_then(parse_job) {
            Some(j) => Ok(Some(j)),
            None => Err(SchedError::Parse {
                cmd,
                detail: r.stdout.chars().take(200).collect(),
            }),
        }
    }

    fn jobs(&self) -> Result<Vec<Job>> {
        let out = self.scontrol(&["-o".into(), "show".into(), "job".into()])?;
        Ok(parse_jobs(&out))
    }

    fn queued(&self) -> Result<Vec<u64>> {
        let out = self.must(
            &self.squeue,
            SQUEUE_VAR,
            &["-h".into(), "-a".into(), "-o".into(), "%A".into()],
        )?;
        Ok(ids(&out))
    }

    fn jobs_on_nodes(&self, nodes: &[String]) -> Result<Vec<u64>> {
        let out = self.must(
            &self.squeue,
            SQUEUE_VAR,
            &[
                "-h".into(),
                "-a".into(),
                "-t".into(),
                "RUNNING,SUSPENDED".into(),
                "-w".into(),
                nodes.join(","),
                "-o".into(),
                "%A".into(),
            ],
        )?;
        Ok(ids(&out))
    }

    fn steps(&self, job: u64) -> Result<Vec<Step>> {
        let args = vec!["-o".into(), "show".into(), "step".into(), job.to_string()];
        let (cmd, r) = self.run(&self.scontrol, SCONTROL_VAR, &args)?;
        if !r.ok {
            let msg = slurm_message(&r.stderr, &r.stdout);
            // A job that runs no step (pending, ending) has none to show.
            if is_invalid_job(&msg) || msg.contains("not found") || msg.contains("No job steps") {
                return Ok(Vec::new());
            }
            return Err(SchedError::Refused { cmd, message: msg });
        }
        Ok(parse_steps(&r.stdout))
    }

    fn signal(&self, target: &SignalTarget, signal: i32) -> Result<()> {
        let sig = format!("--signal={signal}");
        let args: Vec<String> = match target {
            SignalTarget::Batch(job) => vec![sig, "--full".into(), job.to_string()],
            SignalTarget::Step(job, step) => vec![sig, format!("{job}.{step}")],
        };
        self.must(&self.scancel, SCANCEL_VAR, &args).map(drop)
    }

    fn requeue(&self, job: u64) -> Result<()> {
        self.scontrol(&["requeue".into(), job.to_string()])
            .map(drop)
    }

    fn drain(&self, nodes: &[String], reason: &str) -> Result<()> {
        if reason.trim().is_empty() {
            return Err(SchedError::Usage("a drain needs a reason".into()));
        }
        self.scontrol(&[
            "update".into(),
            format!("NodeName={}", nodes.join(",")),
            "State=DRAIN".into(),
            format!("Reason={reason}"),
        ])
        .map(drop)
        .map_err(|e| match e {
            // What Slurm 22.05 says to a user who is not an operator.
            SchedError::Refused { cmd, message } if message.contains("Invalid user id") => {
                SchedError::Refused {
                    cmd,
                    message: format!(
                        "{message} (draining a node takes a Slurm operator or administrator)"
                    ),
                }
            }
            e => e,
        })
    }

    fn node_state(&self, node: &str) -> Result<String> {
        let out = self.scontrol(&["-o".into(), "show".into(), "node".into(), node.into()])?;
        parse_kv(out.lines().next().unwrap_or_default())
            .get("State")
            .cloned()
            .ok_or_else(|| SchedError::Parse {
                cmd: format!("scontrol -o show node {node}"),
                detail: out.chars().take(200).collect(),
            })
    }

    fn expand_nodes(&self, list: &str) -> Result<Vec<String>> {
        let out = self.scontrol(&["show".into(), "hostnames".into(), list.into()])?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    fn plugstack_path(&self) -> Result<Option<PathBuf>> {
        let out = self.scontrol(&["show".into(), "config".into()])?;
        Ok(parse_plugstack_path(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from Slurm 22.05 (Debian 12) on the test cluster.
    const JOB: &str = "JobId=1 JobName=j.sh UserId=torpor-test(1001) GroupId=torpor-test(1001) MCS_label=N/A Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:03 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-22T08:14:41 EligibleTime=2026-11-22T08:14:41 AccrueTime=2026-11-22T08:14:41 StartTime=2026-11-22T08:14:42 EndTime=Unknown Deadline=N/A PreemptEligibleTime=2026-11-22T08:14:42 PreemptTime=None SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-22T08:14:42 Scheduler=Main Partition=low AllocNode:Sid=localhost:27321 ReqNodeList=(null) ExcNodeList=(null) NodeList=n1 BatchHost=n1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/i5dev/work/j.sh WorkDir=/tmp/i5dev/work StdErr=/tmp/i5dev/work/1.out StdIn=/dev/null StdOut=/tmp/i5dev/work/1.out Power= ";
    const PENDING: &str = "JobId=7 JobName=my job UserId=alice(2001) GroupId=alice(2001) JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=0 Restarts=2 BatchFlag=1 Partition=low NodeList=(null) BatchHost=(null) Command=/home/alice/run me.sh";
    const STEPS: &str = "StepId=1.batch UserId=1001 StartTime=2026-11-22T08:14:42 TimeLimit=UNLIMITED State=RUNNING Partition=low NodeList=n1 Nodes=1 CPUs=0 Tasks=1 Name=batch Network=(null) TRES=(null) ResvPorts=(null) CPUFreqReq=Default SrunHost:Pid=(null):0
StepId=1.0 UserId=1001 StartTime=2026-11-22T08:14:42 TimeLimit=UNLIMITED State=RUNNING Partition=low NodeList=n1 Nodes=1 CPUs=1 Tasks=1 Name=sleep Network=(null) TRES=cpu=1,mem=0,node=1 ResvPorts=(null) CPUFreqReq=Default Dist=Cyclic SrunHost:Pid=vm:13
StepId=1.extern UserId=1001 StartTime=2026-11-22T08:14:42 TimeLimit=UNLIMITED State=RUNNING Partition=low NodeList=n1 Nodes=1 CPUs=0 Tasks=1 Name=extern
";

    #[test]
    fn running_job() {
        let j = parse_job(JOB).unwrap();
        assert_eq!(j.id, 1);
        assert_eq!(j.user, "torpor-test");
        assert_eq!(j.uid, 1001);
        assert_eq!(j.state, "RUNNING");
        assert!(j.is_running());
        assert_eq!(j.nodes, "n1");
        assert_eq!(j.batch_host, "n1");
        assert_eq!(j.restarts, 0);
        assert_eq!(j.partition, "low");
        assert!(j.requeue);
    }

    #[test]
    fn pending_job_with_spaces() {
        let j = parse_job(PENDING).unwrap();
        assert_eq!(j.name, "my job");
        assert_eq!((j.user.as_str(), j.uid), ("alice", 2001));
        assert_eq!(j.state, "PENDING");
        assert_eq!(j.nodes, "");
        assert_eq!(j.restarts, 2);
        assert!(!j.requeue);
        assert_eq!(parse_kv(PENDING)["Command"], "/home/alice/run me.sh");
        assert_eq!(parse_kv(JOB)["TRES"], "cpu=1,node=1,billing=1");
        assert!(parse_job("slurm_load_jobs error: Invalid job id specified").is_none());
        let all = parse_jobs(&format!("{JOB}\n{PENDING}\n"));
        assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1, 7]);
        assert!(parse_jobs("No jobs in the system\n").is_empty());
    }

    #[test]
    fn steps() {
        let s = parse_steps(STEPS);
        assert_eq!(
            s,
            vec![
                Step {
                    id: StepId::Batch,
                    state: "RUNNING".into(),
                    nodes: "n1".into()
                },
                Step {
                    id: StepId::Num(0),
                    state: "RUNNING".into(),
                    nodes: "n1".into()
                },
            ]
        );
        assert!(parse_steps("").is_empty());
    }

    #[test]
    fn node_state_and_config() {
        let node = "NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=1 CPUTot=2 State=MIXED+DRAIN ThreadsPerCore=1 Reason=torpor drain test [root@2026-11-22T08:30:00]";
        assert_eq!(parse_kv(node)["State"], "MIXED+DRAIN");
        assert_eq!(
            parse_kv(node)["Reason"],
            "torpor drain test [root@2026-11-22T08:30:00]"
        );
        let conf = "MpiDefault              = none\nPlugStackConfig         = /tmp/i5dev/plugstack.conf\nSlurmctldPlugstack      = (null)\n";
        assert_eq!(
            parse_plugstack_path(conf),
            Some(PathBuf::from("/tmp/i5dev/plugstack.conf"))
        );
        assert_eq!(parse_plugstack_path("PlugStackConfig = (null)\n"), None);
    }

    #[test]
    fn refusals_keep_slurms_words() {
        let m = slurm_message(
            "scancel: error: Kill job error on job id 77: Invalid job id specified\n",
            "",
        );
        assert_eq!(
            m,
            "scancel: error: Kill job error on job id 77: Invalid job id specified"
        );
        assert!(is_invalid_job(&m));
        let e = SchedError::Refused {
            cmd: "scancel --signal=38 --full 5".into(),
            message: "scancel: error: Kill job error on job id 5: Access/permission denied".into(),
        };
        assert_eq!(
            e.to_string(),
            "`scancel --signal=38 --full 5` refused: scancel: error: Kill job error on job id 5: Access/permission denied"
        );
    }

    #[test]
    fn missing_client_names_the_variable() {
        let s = Slurm {
            scontrol: "/nonexistent/scontrol".into(),
            squeue: "/nonexistent/squeue".into(),
            scancel: "/nonexistent/scancel".into(),
        };
        let e = s.job(1).unwrap_err().to_string();
        assert!(e.contains("TORPOR_SCONTROL"), "{e}");
        assert!(e.contains("scontrol -o show job 1"), "{e}");
    }
}
