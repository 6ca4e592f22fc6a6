//! What a job's image directory says: which tasks run with checkpointing (the agent's
//! `task.json` markers), which programs exist, their generations and their last round
//! (`status.json`).
//!
//! Layout (written by the agent): `<job dir>/<step>/<task>/task.json`,
//! `<job dir>/<step>/<task>/.claims-<attempt>/<program>`, and one directory per program
//! `<job dir>/<step>/<task>/<exe>-<hash>.<n>/` holding `gen-NNNNNN/`, `latest` and
//! `status.json`. A program directory is created when the program starts and removed when
//! it ends normally.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use torpor_image::store::Store;
use torpor_sched::StepId;

/// A task's marker: the task ran with checkpointing on in `attempt`.
#[derive(Debug, Clone)]
pub struct TaskMarker {
    pub step: StepId,
    pub task: String,
    pub attempt: u32,
    pub node: String,
    pub pid: i64,
    pub raw: Value,
}

/// One complete generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub n: u64,
    pub attempt: u32,
    pub time_unix: f64,
    pub host: String,
    pub bytes: u64,
}

/// One program of a job.
#[derive(Debug, Clone)]
pub struct Program {
    pub step: StepId,
    pub task: String,
    pub name: String,
    pub dir: PathBuf,
    pub generations: Vec<Generation>,
    /// The agent's last report, if any.
    pub status: Option<Value>,
    /// Attempts in which the program was started (`.claims-<attempt>`).
    pub started_in: Vec<u32>,
}

fn subdirs(d: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads a small JSON file the job's user wrote, never through a symlink (the CLI may run
/// as root on the user's directories).
pub fn read_json(p: &Path) -> Option<Value> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.by_ref().take(1 << 20).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

/// Whether `p` is a real directory (not a symlink to one).
fn real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Every task marker under a job directory.
pub fn markers(job_dir: &Path) -> Vec<TaskMarker> {
    let mut out = Vec::new();
    if !real_dir(job_dir) {
        return out;
    }
    for (step_name, step_dir) in subdirs(job_dir) {
        let Some(step) = StepId::parse(&step_name) else {
            continue; // output/, ...
        };
        for (task, task_dir) in subdirs(&step_dir) {
            if let Some(v) = read_json(&task_dir.join("task.json")) {
                out.push(TaskMarker {
                    step: step.clone(),
                    task,
                    attempt: v["attempt"].as_u64().unwrap_or(0) as u32,
                    node: v["node"].as_str().unwrap_or_default().to_owned(),
                    pid: v["pid"].as_i64().unwrap_or(0),
                    raw: v,
                });
            }
        }
    }
    out
}

/// Steps that run with checkpointing in `attempt`.
pub fn checkpointed_steps(job_dir: &Path, attempt: u32) -> Vec<StepId> {
    let mut v: Vec<StepId> = markers(job_dir)
        .into_iter()
        .filter(|m| m.attempt == attempt)
        .map(|m| m.step)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn generations(dir: &Path) -> Vec<Generation> {
    let s = Store::new(dir);
    s.generations()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let m = s.manifest(n).ok()?;
            Some(Generation {
                n,
                attempt: m.attempt,
                time_unix: m.time_unix,
                host: m.hostname,
                bytes: m.bytes,
            })
        })
        .collect()
}

/// Every program directory under a job directory (all steps and tasks).
pub fn programs(job_dir: &Path) -> Vec<Program> {
    let mut out = Vec::new();
    if !real_dir(job_dir) {
        return out;
    }
    for (step_name, step_dir) in subdirs(job_dir) {
        let Some(step) = StepId::parse(&step_name) else {
            continue;
        };
        for (task, task_dir) in subdirs(&step_dir) {
            let claims: Vec<(u32, PathBuf)> = subdirs(&task_dir)
                .into_iter()
                .filter_map(|(n, p)| Some((n.strip_prefix(".claims-")?.parse().ok()?, p)))
                .collect();
            for (name, dir) in subdirs(&task_dir) {
                if name.starts_with('.') {
                    continue;
                }
                let mut started_in: Vec<u32> = claims
                    .iter()
                    .filter(|(_, c)| c.join(&name).exists())
                    .map(|(a, _)| *a)
                    .collect();
                started_in.sort_unstable();
                out.push(Program {
                    step: step.clone(),
                    task: task.clone(),
                    generations: generations(&dir),
                    status: read_json(&dir.join("status.json")),
                    name,
                    dir,
                    started_in,
                });
            }
        }
    }
    out
}

impl Program {
    /// The newest complete generation number (0: none yet).
    pub fn newest(&self) -> u64 {
        self.generations.last().map(|g| g.n).unwrap_or(0)
    }

    /// `step/task/program`.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.step, self.task, self.name)
    }

    /// The last round's error, if it failed.
    pub fn last_error(&self) -> Option<String> {
        let s = self.status.as_ref()?;
        (s["ok"].as_bool() == Some(false))
            .then(|| s["error"].as_str().unwrap_or("unknown error").to_owned())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "step": self.step.to_string(),
            "task": self.task,
            "program": self.name,
            "dir": self.dir,
            "started_in_attempts": self.started_in,
            "generations": self.generations.iter().map(|g| json!({
                "generation": g.n, "attempt": g.attempt, "time_unix": g.time_unix,
                "host": g.host, "bytes": g.bytes,
            })).collect::<Vec<_>>(),
            "latest": Store::new(&self.dir).latest(),
            "status": self.status,
            "last_error": self.last_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reads_through_symlinks() {
        let d = std::env::temp_dir().join(format!("torpor-nofollow-{}", std::process::id()));
        fs::create_dir_all(d.join("job/0/0")).unwrap();
        fs::write(d.join("secret.json"), r#"{"attempt":0}"#).unwrap();
        std::os::unix::fs::symlink(d.join("secret.json"), d.join("job/0/0/task.json")).unwrap();
        assert!(read_json(&d.join("secret.json")).is_some());
        assert!(markers(&d.join("job")).is_empty());
        std::os::unix::fs::symlink(d.join("job"), d.join("link")).unwrap();
        assert!(programs(&d.join("link")).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_markers_and_programs() {
        let d = std::env::temp_dir().join(format!("torpor-images-{}", std::process::id()));
        let task = d.join("4294967291/0");
        fs::create_dir_all(task.join(".claims-1")).unwrap();
        fs::create_dir_all(task.join("counter-0123abcd.0")).unwrap();
        fs::create_dir_all(d.join("output")).unwrap();
        fs::write(task.join(".claims-1/counter-0123abcd.0"), "").unwrap();
        fs::write(
            task.join("task.json"),
            r#"{"attempt":1,"node":"n2","pid":12,"job":"5","step":"4294967291","task":"0"}"#,
        )
        .unwrap();
        fs::write(
            task.join("counter-0123abcd.0/status.json"),
            r#"{"ok":false,"error":"disk full","pid":14}"#,
        )
        .unwrap();
        let m = markers(&d);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].step.clone(), m[0].attempt), (StepId::Batch, 1));
        assert_eq!(checkpointed_steps(&d, 1), vec![StepId::Batch]);
        assert!(checkpointed_steps(&d, 0).is_empty());
        let p = programs(&d);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].label(), "batch/0/counter-0123abcd.0");
        assert_eq!(p[0].started_in, vec![1]);
        assert_eq!(p[0].newest(), 0);
        assert_eq!(p[0].last_error().as_deref(), Some("disk full"));
        fs::remove_dir_all(&d).unwrap();
    }
}
