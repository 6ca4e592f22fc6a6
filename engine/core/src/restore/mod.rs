//! Restore stage 1: picks the newest valid generation, checks that the image can be
//! restored here (owner, kernel vdso, unchanged binaries and files), reopens the program's
//! files at their fds, enters a user+pid namespace to get the original pids back when it
//! can, writes the plan for stage 2 into a memfd, and execs stage 2.
//!
//! Everything that can fail for a reason the user can fix fails here, before the point
//! of no return (stage 2 throws the old address space away).

mod files;
mod namespace;
mod plan_build;
mod select;
pub mod verify;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use thiserror::Error;
use torpor_image::ImageError;

use files::{copy_into, put_back_output, relock, reopen};
use namespace::enter_pid_namespace;
pub use plan_build::build_plan;
pub use select::{check_compat, select, Selected};

/// Why an image cannot be restored here. Nothing has been changed when these are returned.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("{0}: no checkpoint image there")]
    NoImage(PathBuf),
    #[error("{dir}: no valid generation:\n  {}", reasons.join("\n  "))]
    NoValidGeneration { dir: PathBuf, reasons: Vec<String> },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] torpor_image::store::StoreError),
    #[error("{path}: owned by uid {owner}; only that user may restore it (you are uid {me})")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("the kernel differs from the one that wrote the image ({what}); restore on a node with kernel {kernel}")]
    Vdso { what: &'static str, kernel: String },
    #[error("{path}: {why} since the checkpoint; refusing to restore")]
    FileChanged { path: String, why: &'static str },
    #[error("{path}: was written by the program but not captured with the generation (over the site's capture limit or the copy failed); refusing to restore rather than corrupt it")]
    NotCaptured { path: String },
    #[error("image memory at {start:#x}-{end:#x} overlaps the restorer's fixed range")]
    Overlap { start: u64, end: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn ioe(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

pub(super) fn last_os(what: &str) -> RestoreError {
    RestoreError::Io {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

/// How to treat pids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidMode {
    /// Original pids in a user+pid namespace when possible, new pids otherwise.
    Auto,
    /// Original pids or fail.
    Original,
    /// New pids (glibc's cached tids are patched).
    New,
}

pub(super) fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn memfd(name: &std::ffi::CStr, data: &[u8]) -> Result<File, RestoreError> {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(last_os("memfd_create"));
    }
    // SAFETY: fd was just created and is owned here.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(data).map_err(ioe("writing memfd"))?;
    Ok(f)
}

pub(super) fn fds_open() -> Vec<i32> {
    fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Moves `fd` to the lowest free number >= `min` (close-on-exec cleared).
fn move_above(fd: OwnedFd, min: i32, cloexec: bool) -> Result<i32, RestoreError> {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: F_DUPFD on an fd we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, min) };
    if n < 0 {
        return Err(last_os("F_DUPFD"));
    }
    Ok(n)
}

/// Restores the selected image in this process. Returns only on failure before the
/// point of no return.
pub fn restore(
    sel: Selected,
    stage2: &[u8],
    pids: PidMode,
    verbose: bool,
    slurm: bool,
) -> Result<std::convert::Infallible, RestoreError> {
    let meta = sel.reader.meta().clone();
    check_compat(&meta)?;
    if slurm {
        put_back_output(&meta, &sel.gen_dir, verbose)?;
    }
    for s in &sel.skipped {
        eprintln!("torpor-restore: skipped {s}");
    }
    if !sel.skipped.is_empty() || verbose {
        eprintln!("torpor-restore: using {}", sel.gen_dir.display());
    }
    // Shared writable file mappings: put the file back as it was at the checkpoint.
    for r in &meta.regions {
        if let Some(cap) = &r.captured {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&r.name)
                .map_err(ioe(r.name.clone()))?;
            copy_into(&sel.gen_dir.join(cap), &mut out)?;
            out.sync_all().map_err(ioe(r.name.clone()))?;
        }
    }
    // Reopen the program's files (still at temporary numbers).
    let mut files = Vec::new();
    for f in &meta.fds {
        if f.dup_of.is_some() {
            continue;
        }
        if let Some(fd) = reopen(f, &sel.gen_dir)? {
            files.push((f.fd, fd));
        }
    }
    std::env::set_current_dir(&meta.process.cwd)
        .map_err(ioe(format!("cwd {}", meta.process.cwd)))?;
    for &(res, soft, hard) in &meta.process.rlimits {
        let lim = libc::rlimit64 {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit64 on ourselves with a valid struct.
        if unsafe { libc::setrlimit64(res as _, &lim) } != 0 && verbose {
            eprintln!("torpor-restore: could not restore rlimit {res}");
        }
    }
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(meta.process.umask) };
    let stage2_file = memfd(c"torpor-restore", stage2)?;
    let orig_pid = meta.origin.pid;
    let same_pids = match pids {
        PidMode::New => false,
        PidMode::Auto | PidMode::Original => {
            match enter_pid_namespace(orig_pid) {
                Ok(()) => true,
                Err(e) if pids == PidMode::Auto => {
                    if verbose {
                        eprintln!("torpor-restore: original pids unavailable ({e}); restoring with new pids");
                    }
                    false
                }
                Err(e) => {
                    return Err(RestoreError::Io {
                        what: "original pids".into(),
                        source: std::io::Error::other(e),
                    })
                }
            }
        }
    };
    // Place the fds: everything we keep goes above every target first.
    let max_target = meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let base = max_target + 1;
    let (image_file, _) = sel.reader.into_parts();
    let image_fd = move_above(OwnedFd::from(image_file), base, false)?;
    let stage2_fd = move_above(OwnedFd::from(stage2_file), base, true)?;
    let mut staged = Vec::new();
    for (target, fd) in files {
        staged.push((target, move_above(fd, base, true)?));
    }
    let keep: Vec<i32> = staged
        .iter()
        .map(|s| s.1)
        .chain([image_fd, stage2_fd])
        .collect();
    for fd in fds_open() {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing fds that the restored program must not see.
            unsafe { libc::close(fd) };
        }
    }
    let plan_probe = build_plan(&meta, image_fd, 0, same_pids);
    let plan_file = memfd(c"torpor-plan", &plan_probe)?;
    let plan_fd = move_above(OwnedFd::from(plan_file), base, false)?;
    let plan = build_plan(&meta, image_fd, plan_fd, same_pids);
    // SAFETY: pwrite into our own memfd (same length as before).
    unsafe { libc::pwrite(plan_fd, plan.as_ptr() as *const libc::c_void, plan.len(), 0) };
    for (target, fd) in &staged {
        // SAFETY: dup2 onto the program's fd numbers (all our own fds are above them).
        if unsafe { libc::dup2(*fd, *target) } < 0 {
            return Err(last_os("dup2"));
        }
        // SAFETY: the staged copy is ours.
        unsafe { libc::close(*fd) };
    }
    for f in meta.fds.iter().filter(|f| f.dup_of.is_some()) {
        let from = f.dup_of.unwrap_or(-1);
        // SAFETY: duplicates an fd placed above onto its twin's number.
        if unsafe { libc::dup2(from, f.fd) } < 0 {
            return Err(last_os("dup2 (shared open file)"));
        }
    }
    relock(&meta)?;
    if verbose {
        eprintln!(
            "torpor-restore: restoring pid {} from {} ({} threads, {} regions, {} pages, {} pids; checked in {} ms)",
            orig_pid,
            sel.gen_dir.display(),
            meta.threads.len(),
            meta.regions.len(),
            meta.pages_saved(),
            if same_pids { "original" } else { "new" },
            sel.started.elapsed().as_millis()
        );
    }
    let argv0 = CString::new("torpor-restore").unwrap_or_default();
    let arg1 = CString::new(plan_fd.to_string()).unwrap_or_default();
    let argv = [argv0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: execveat of our memfd with valid argv/envp arrays.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            stage2_fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(last_os("exec of the restorer's second stage"))
}
