//! Restore stage 1: picks the newest valid generation, checks that the image can be
//! restored here (owner, kernel vdso, unchanged binaries and files), reopens the program's
//! files at their fds, enters a user+pid namespace to get the original pids back when it
//! can, writes the plan for stage 2 into a memfd, and execs stage 2.
//!
//! Everything that can fail for a reason the user can fix fails here, before the point
//! of no return (stage 2 throws the old address space away).

mod chain;
mod channels;
mod files;
mod namespace;
mod plan_build;
mod select;
mod tree;
pub mod verify;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use thiserror::Error;
use torpor_image::ImageError;

pub use chain::open_chain;
use files::{copy_into, put_back_output, relock, reopen};
use namespace::enter_pid_namespace;
pub use namespace::{userns_unavailable, NO_USERNS_VAR};
pub use plan_build::{build_plan, build_plan_chain, build_plan_closing};
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

/// Said once (stderr of the restore and the restored root's status.json) when a process
/// tree comes back with new pids.
pub const NEW_PIDS_WARNING: &str = "the process tree is restored with NEW pids: the processes run on, but what depends on their old pids will not work: pids a program saved (getpid() values kept in variables, pid files), kill() or waitpid() of a saved pid of another process of the tree, and /proc/<old pid> paths";

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

/// Restores the selected generation in this process (a process tree when the manifest
/// lists several processes). Returns only on failure before the point of no return.
pub fn restore(
    sel: Selected,
    stage2: &[u8],
    pids: PidMode,
    verbose: bool,
    slurm: bool,
) -> Result<std::convert::Infallible, RestoreError> {
    if sel.manifest.as_ref().is_some_and(|m| m.processes.len() > 1) {
        return tree::restore_tree(sel, stage2, pids, verbose, slurm);
    }
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
    let pipes = tree::Pipes::create(&[&meta], &sel.gen_dir)?;
    let files = prepare_process(&meta, &sel.gen_dir, &pipes, verbose)?;
    drop(pipes);
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
    let (image_file, _) = sel.reader.into_parts();
    match place_and_exec(
        &meta,
        image_file,
        sel.chain,
        &stage2_file,
        files,
        &[],
        same_pids,
        verbose,
        &sel.gen_dir,
        sel.started,
    ) {
        Ok(never) => match never {},
        Err(e) => Err(e),
    }
}

/// One mapping of tree shared memory in this process: (start, the object's fd, its
/// offset in the object).
pub(super) struct ShmMap<'a> {
    pub start: u64,
    pub fd: &'a OwnedFd,
    pub offset: u64,
}

/// Puts the process's files back and reopens its fds (at temporary numbers), then sets
/// cwd, rlimits and umask. Returns (target fd, open fd) pairs.
pub(super) fn prepare_process(
    meta: &torpor_image::meta::ProcessMeta,
    gen_dir: &std::path::Path,
    pipes: &tree::Pipes,
    verbose: bool,
) -> Result<Vec<(i32, OwnedFd)>, RestoreError> {
    // Shared writable file mappings: put the file back as it was at the checkpoint.
    for r in &meta.regions {
        if let Some(cap) = &r.captured {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&r.name)
                .map_err(ioe(r.name.clone()))?;
            copy_into(&gen_dir.join(cap), &mut out)?;
            out.sync_all().map_err(ioe(r.name.clone()))?;
        }
    }
    // Reopen the program's files (still at temporary numbers).
    let mut files = Vec::new();
    for f in &meta.fds {
        if f.dup_of.is_some() {
            continue;
        }
        if let Some(k) = f.launch {
            // A copy of the new launch's stdio fd k (still the restorer's own).
            if k != f.fd {
                // SAFETY: F_DUPFD_CLOEXEC of one of our stdio fds.
                let fd = unsafe { libc::fcntl(k, libc::F_DUPFD_CLOEXEC, 3) };
                if fd < 0 {
                    return Err(last_os(&format!("copy of stdio fd {k} for fd {}", f.fd)));
                }
                // SAFETY: just created, owned here.
                files.push((f.fd, unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            continue;
        }
        if let Some(fd) = pipes.shared_file(meta.origin.pid, f.fd)? {
            files.push((f.fd, fd));
            continue;
        }
        use torpor_image::meta::FdKind::*;
        if matches!(
            f.kind,
            Pipe | UnixStream
                | UnixDgram
                | UnixSeqpacket
                | UnixDgramNamed
                | UnixListen
                | Tcp
                | TcpListen
        ) {
            if let Some(fd) = pipes.end_for(f)? {
                files.push((f.fd, fd));
            }
            continue;
        }
        if let Some(fd) = reopen(f, gen_dir)? {
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
    Ok(files)
}

/// Places the fds at their numbers, writes the plan and execs stage 2. Returns only
/// the error that stopped it.
#[allow(clippy::too_many_arguments)]
pub(super) fn exec_stage2(
    meta: &torpor_image::meta::ProcessMeta,
    image_file: File,
    stage2_file: &File,
    files: Vec<(i32, OwnedFd)>,
    shm: &[ShmMap],
    same_pids: bool,
    verbose: bool,
    gen_dir: &std::path::Path,
    started: std::time::Instant,
) -> RestoreError {
    match place_and_exec(
        meta,
        image_file,
        Vec::new(),
        stage2_file,
        files,
        shm,
        same_pids,
        verbose,
        gen_dir,
        started,
    ) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

#[allow(clippy::too_many_arguments)]
fn place_and_exec(
    meta: &torpor_image::meta::ProcessMeta,
    image_file: File,
    chain: Vec<torpor_image::ImageReader>,
    stage2_file: &File,
    files: Vec<(i32, OwnedFd)>,
    shm: &[ShmMap],
    same_pids: bool,
    verbose: bool,
    gen_dir: &std::path::Path,
    started: std::time::Instant,
) -> Result<std::convert::Infallible, RestoreError> {
    let orig_pid = meta.origin.pid;
    // Place the fds: everything we keep goes above every target first.
    let max_target = meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2);
    let base = max_target + 1;
    let image_fd = move_above(OwnedFd::from(image_file), base, false)?;
    // Older images of an incremental chain, read by stage 2 too.
    let mut chain_metas = Vec::new();
    for r in chain {
        let (f, m) = r.into_parts();
        chain_metas.push((m, move_above(OwnedFd::from(f), base, false)?));
    }
    let chain_refs: Vec<(&torpor_image::meta::ProcessMeta, i32)> =
        chain_metas.iter().map(|(m, fd)| (m, *fd)).collect();
    // SAFETY: F_DUPFD_CLOEXEC of the stage 2 memfd, owned by the new number.
    let stage2_fd = move_above(
        stage2_file
            .try_clone()
            .map(OwnedFd::from)
            .map_err(ioe("stage 2 memfd"))?,
        base,
        true,
    )?;
    let mut staged = Vec::new();
    for (target, fd) in files {
        staged.push((target, move_above(fd, base, true)?));
    }
    // Tree shared memory: stage 2 maps the one object through /proc/self/fd (instead of
    // a fresh memfd of its own) and closes the fd; no pages are read from the image.
    if shm.len() > 8 {
        return Err(RestoreError::Io {
            what: "shared memory".into(),
            source: std::io::Error::other("more than 8 shared memory mappings in one process"),
        });
    }
    let mut shm_fds = Vec::new();
    let mut rewritten;
    let mut meta = meta;
    if !shm.is_empty() {
        rewritten = meta.clone();
        for m in shm {
            let fd = move_above(
                m.fd.try_clone().map_err(ioe("shared memory fd"))?,
                base,
                false,
            )?;
            shm_fds.push(fd);
            let Some(r) = rewritten.regions.iter_mut().find(|r| r.start == m.start) else {
                continue;
            };
            r.kind = torpor_image::meta::RegionKind::FileShared;
            r.name = format!("/proc/self/fd/{fd}");
            r.offset = m.offset;
            r.file = None;
            r.captured = None;
            let (s, e) = (r.start, r.end);
            rewritten.chunks.retain(|c| c.vaddr < s || c.vaddr >= e);
        }
        meta = &rewritten;
    }
    let keep: Vec<i32> = staged
        .iter()
        .map(|s| s.1)
        .chain([image_fd, stage2_fd])
        .chain(shm_fds.iter().copied())
        .chain(chain_refs.iter().map(|c| c.1))
        .collect();
    for fd in fds_open() {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing fds that the restored program must not see.
            unsafe { libc::close(fd) };
        }
    }
    let plan_probe = build_plan_chain(meta, image_fd, &chain_refs, 0, same_pids, &shm_fds);
    let plan_file = memfd(c"torpor-plan", &plan_probe)?;
    let plan_fd = move_above(OwnedFd::from(plan_file), base, false)?;
    let plan = build_plan_chain(meta, image_fd, &chain_refs, plan_fd, same_pids, &shm_fds);
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
    relock(meta)?;
    if verbose {
        eprintln!(
            "torpor-restore: restoring pid {} from {} ({} threads, {} regions, {} pages, {} pids; checked in {} ms)",
            orig_pid,
            gen_dir.display(),
            meta.threads.len(),
            meta.regions.len(),
            meta.pages_saved(),
            if same_pids { "original" } else { "new" },
            started.elapsed().as_millis()
        );
    }
    let argv0 = CString::new("torpor-restore").unwrap_or_default();
    let arg1 = CString::new(plan_fd.to_string()).unwrap_or_default();
    let argv = [argv0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // The exec resets our handlers to the default, and the default of the request signal
    // (`torpor checkpoint JOBID` may send it at any time) is to terminate: keep it blocked
    // across the exec. Stage 2 blocks everything at once and each restored thread gets
    // its own mask back, so a request that came meanwhile reaches the restored program.
    let request = std::env::var("TORPOR_SIGNAL")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s: &i32| (34..=64).contains(&s) && s != 61 || s == 10 || s == 12)
        .unwrap_or(38);
    // SAFETY: a sigset_t on our stack; sigprocmask only changes this thread's mask.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, request);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
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
    let err = last_os("exec of the restorer's second stage");
    // SAFETY: undoes the block above (the caller may start the program fresh).
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    Err(err)
}
