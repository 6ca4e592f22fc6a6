//! Which process of a job is a checkpoint target, where its images live, and restarting
//! it from its newest image when the job runs again.
//!
//! In a Slurm task the agent is preloaded into the whole process chain (the batch shell,
//! srun, every command). The first process in a chain that is not a shell, a Slurm
//! client or a torpor tool is the target; it marks its descendants inert. Its image
//! directory is `<root>/<job>/<step>/<task>/<exe>-<hash>.<n>`, where the hash covers the
//! executable and argv and `n` counts earlier runs of the same command in this step and
//! attempt, so the rerun batch script maps each program to the same directory again.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Set in the target's environment so that its descendants stay inert.
pub const INERT_VAR: &str = "TORPOR_INERT";

/// Programs that are never checkpoint targets: shells (the batch script reruns from the
/// top anyway), Slurm's clients, torpor's own tools and id-changing launchers.
const SKIP: &[&str] = &[
    "bash",
    "sh",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "tcsh",
    "csh",
    "fish",
    "env",
    "srun",
    "sbatch",
    "salloc",
    "scontrol",
    "squeue",
    "scancel",
    "sacct",
    "sinfo",
    "sstat",
    "sattach",
    "sbcast",
    "sprio",
    "sshare",
    "strigger",
    "torpor",
    "torpor-restore",
    "slurmstepd",
    // Launchers that change ids and exec the real program: an extra thread breaks their
    // per-thread capability juggling (glibc aborts a setresgid that succeeds in one
    // thread and fails in another).
    "setpriv",
    "su",
    "sudo",
    "runuser",
];

/// Descendants of a tree's root that never join the tree (they stay inert, so a round
/// taken while one runs is refused, naming it): id-changing launchers (an extra thread
/// breaks their per-thread setresgid), Slurm's clients and torpor's own tools.
const NEVER_MEMBER: &[&str] = &[
    "setpriv",
    "su",
    "sudo",
    "runuser",
    "srun",
    "sbatch",
    "salloc",
    "scontrol",
    "scancel",
    "sattach",
    "sbcast",
    "torpor",
    "torpor-restore",
    "slurmstepd",
];

/// Whether this executable stays out of process trees.
pub fn never_member(exe: &str) -> bool {
    NEVER_MEMBER.contains(&exe)
}

/// The executable's base name (from /proc/self/exe, not argv[0]).
pub fn exe_name() -> String {
    fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// Whether this process is skipped by name.
pub fn skipped(exe: &str) -> bool {
    SKIP.contains(&exe)
}

fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `<exe>-<hash of exe path and argv>`.
pub fn program_key(exe: &str) -> String {
    let path = fs::read_link("/proc/self/exe").unwrap_or_default();
    let cmdline = fs::read("/proc/self/cmdline").unwrap_or_default();
    let safe: String = exe
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!(
        "{safe}-{:08x}",
        fnv64(&[path.as_os_str().as_bytes(), &cmdline]) as u32
    )
}

/// Creates `p` (0700) without following another user's symlinks or trusting directories
/// others can change (see `torpor_image::safedir`).
fn mkdir_private(p: &Path) -> std::io::Result<()> {
    torpor_image::safedir::ensure_private_dir(p)
        .map(drop)
        .map_err(std::io::Error::other)
}

/// The image directory of this program in a Slurm task, claiming the next occurrence
/// (`.claims-<attempt>/<name>`) and creating the directory.
pub fn slurm_program_dir(
    root: &Path,
    job: &str,
    step: &str,
    task: &str,
    attempt: u32,
    exe: &str,
) -> std::io::Result<PathBuf> {
    let task_dir = root.join(job).join(step).join(task);
    let claims = task_dir.join(format!(".claims-{attempt}"));
    mkdir_private(&claims)?;
    let key = program_key(exe);
    for n in 0..10_000u32 {
        let name = format!("{key}.{n}");
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(claims.join(&name))
        {
            Ok(_) => {
                // Created at once (not at the first checkpoint) so that `torpor checkpoint
                // JOBID` knows every program of the current attempt that is still running.
                let dir = task_dir.join(name);
                mkdir_private(&dir)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many runs of the same command"))
}

/// Whether this process is the top process of a Slurm task (its parent is slurmstepd).
/// `comm`, not `exe`: slurmstepd runs as root and its exe link is not readable by the user.
pub fn parent_is_stepd() -> bool {
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() };
    fs::read_to_string(format!("/proc/{ppid}/comm"))
        .map(|c| c.trim() == "slurmstepd")
        .unwrap_or(false)
}

/// Name of the per-task marker: `<root>/<job>/<step>/<task>/task.json`.
pub const TASK_MARKER: &str = "task.json";

/// Records that this task of a job runs with checkpointing on (written by the task's top
/// process at every start, so `attempt` tells a current run from an earlier one). `torpor
/// checkpoint JOBID` signals only steps that have such a marker for the job's current attempt.
pub fn mark_task(root: &Path, job: &str, step: &str, task: &str, attempt: u32) {
    let dir = root.join(job).join(step).join(task);
    if mkdir_private(&dir).is_err() {
        return;
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_default();
    let marker = serde_json::json!({
        "job": job, "step": step, "task": task, "attempt": attempt,
        "node": node, "host": host.trim(), "pid": crate::sys::getpid(),
        // SAFETY: getuid cannot fail.
        "uid": unsafe { libc::getuid() },
        "time_unix": crate::sys::unix_time(),
    });
    let tmp = dir.join(format!(".{TASK_MARKER}-{}", crate::sys::getpid()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, marker.to_string().as_bytes()));
    if written.is_ok() {
        let _ = fs::rename(&tmp, dir.join(TASK_MARKER));
    } else {
        let _ = fs::remove_file(&tmp);
    }
}

/// Whether `dir` holds at least one complete generation.
pub fn has_generation(dir: &Path) -> bool {
    torpor_image::store::Store::new(dir)
        .generations()
        .map(|g| !g.is_empty())
        .unwrap_or(false)
}

/// Replaces this process with the restorer for `dir` (same pid, same stdio). The
/// original command follows `--` so that the restorer can start it fresh if no image
/// is usable. Returns only if the exec failed.
pub fn exec_restorer(restorer: &Path, dir: &Path) -> std::io::Error {
    let mut list: Vec<OsString> = vec![
        "torpor-restore".into(),
        "--slurm".into(),
        dir.as_os_str().to_owned(),
        "--".into(),
        fs::read_link("/proc/self/exe")
            .unwrap_or_default()
            .into_os_string(),
    ];
    let cmdline = fs::read("/proc/self/cmdline").unwrap_or_default();
    list.extend(
        cmdline
            .split(|&b| b == 0)
            .skip(1)
            .map(|a| OsString::from(std::ffi::OsStr::from_bytes(a))),
    );
    if cmdline.ends_with(&[0]) && list.len() > 5 {
        list.pop(); // the empty piece after the final NUL
    }
    let args: Vec<CString> = list
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let Ok(path) = CString::new(restorer.as_os_str().as_bytes()) else {
        return std::io::Error::other("restorer path contains NUL");
    };
    // SAFETY: execv with NUL-terminated strings and a NULL-terminated argv; the
    // environment (with LD_PRELOAD and TORPOR_*) is inherited.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
    std::io::Error::last_os_error()
}
