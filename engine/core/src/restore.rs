//! Restore stage 1: picks the newest valid generation, checks that the image can be
//! restored here (owner, kernel vdso, unchanged binaries and files), reopens the program's
//! files at their fds, enters a user+pid namespace to get the original pids back when it
//! can, writes the plan for stage 2 into a memfd, and execs stage 2.
//!
//! Everything that can fail for a reason the user can fix fails here, before the point
//! of no return (stage 2 throws the old address space away).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

use thiserror::Error;
use torpor_image::meta::*;
use torpor_image::store::{Store, MANIFEST};
use torpor_image::{ImageError, ImageReader};
use xxhash_rust::xxh3::xxh3_64;

use crate::plan::*;
use crate::procmaps;

/// Why an image cannot be restored here. Nothing has been changed when these are returned.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("{0}: no checkpoint image there")]
    NoImage(PathBuf),
    #[error("{dir}: no valid generation:\n  {}", reasons.join("\n  "))]
    NoValidGeneration { dir: PathBuf, reasons: Vec<String> },
    #[error(transparent)]
    Image(#[from] ImageError),
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

fn ioe(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

fn last_os(what: &str) -> RestoreError {
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

/// A generation chosen for restore.
pub struct Selected {
    pub gen_dir: PathBuf,
    pub generation: Option<u64>,
    pub reader: ImageReader,
    /// Newer generations that were skipped, with the reason.
    pub skipped: Vec<String>,
}

fn my_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn open_checked(img: &Path) -> Result<ImageReader, RestoreError> {
    let md = fs::metadata(img).map_err(ioe(img.display().to_string()))?;
    if md.uid() != my_uid() {
        return Err(RestoreError::Owner {
            path: img.into(),
            owner: md.uid(),
            me: my_uid(),
        });
    }
    let r = ImageReader::open(img)?;
    r.verify_chunks()?;
    Ok(r)
}

fn open_gen(gen_dir: &Path) -> Result<ImageReader, RestoreError> {
    let m = fs::read(gen_dir.join(MANIFEST))
        .map_err(ioe(gen_dir.join(MANIFEST).display().to_string()))?;
    let m: torpor_image::store::Manifest =
        serde_json::from_slice(&m).map_err(|e| RestoreError::Io {
            what: format!("{}: manifest", gen_dir.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
    let p = m
        .processes
        .first()
        .ok_or_else(|| RestoreError::NoImage(gen_dir.into()))?;
    open_checked(&gen_dir.join(&p.image))
}

/// Chooses what to restore from `path`: an image file, a generation directory, or a
/// program's image directory (newest valid generation, falling back to older ones).
pub fn select(path: &Path) -> Result<Selected, RestoreError> {
    if path.is_file() {
        let reader = open_checked(path)?;
        return Ok(Selected {
            gen_dir: path.parent().unwrap_or(Path::new(".")).into(),
            generation: None,
            reader,
            skipped: vec![],
        });
    }
    if path.join(MANIFEST).is_file() {
        return Ok(Selected {
            gen_dir: path.into(),
            generation: None,
            reader: open_gen(path)?,
            skipped: vec![],
        });
    }
    let store = Store::new(path);
    let gens = store.generations().map_err(|e| RestoreError::Io {
        what: e.to_string(),
        source: std::io::Error::other("store"),
    })?;
    if gens.is_empty() {
        return Err(RestoreError::NoImage(path.into()));
    }
    let mut skipped = Vec::new();
    for &g in gens.iter().rev() {
        match open_gen(&store.gen_dir(g)) {
            Ok(reader) => {
                return Ok(Selected {
                    gen_dir: store.gen_dir(g),
                    generation: Some(g),
                    reader,
                    skipped,
                })
            }
            Err(e @ RestoreError::Owner { .. }) => return Err(e),
            Err(e) => skipped.push(format!("generation {g}: {e}")),
        }
    }
    Err(RestoreError::NoValidGeneration {
        dir: path.into(),
        reasons: skipped,
    })
}

/// Refuses images that this kernel, this machine or the current files cannot take.
pub fn check_compat(meta: &ProcessMeta) -> Result<(), RestoreError> {
    let maps = fs::read_to_string("/proc/self/maps").map_err(ioe("/proc/self/maps"))?;
    let maps = procmaps::parse(&maps);
    let kernel = meta.origin.kernel.clone();
    if meta.vdso.vdso_len != 0 {
        let v = maps
            .iter()
            .find(|v| v.name == "[vdso]")
            .ok_or(RestoreError::Vdso {
                what: "no vdso here",
                kernel: kernel.clone(),
            })?;
        if v.len() != meta.vdso.vdso_len {
            return Err(RestoreError::Vdso {
                what: "vdso size differs",
                kernel,
            });
        }
        // SAFETY: the vdso is mapped readable in every process for its whole length.
        let bytes = unsafe { std::slice::from_raw_parts(v.start as *const u8, v.len() as usize) };
        if xxh3_64(bytes) != meta.vdso.vdso_hash {
            return Err(RestoreError::Vdso {
                what: "vdso contents differ",
                kernel,
            });
        }
        let vvar = maps.iter().find(|v| v.name == "[vvar]");
        let vclock = maps.iter().find(|v| v.name == "[vvar_vclock]");
        let vvar_len = match (vvar, vclock) {
            (Some(a), Some(c)) if c.start == a.end => c.end - a.start,
            (Some(a), _) => a.len(),
            _ => 0,
        };
        if vvar_len != meta.vdso.vvar_len {
            return Err(RestoreError::Vdso {
                what: "vvar layout differs",
                kernel,
            });
        }
    }
    for r in &meta.regions {
        if r.start < RESTORER_END && STAGE2_BASE < r.end {
            return Err(RestoreError::Overlap {
                start: r.start,
                end: r.end,
            });
        }
        if matches!(r.kind, RegionKind::FilePrivate | RegionKind::FileShared) {
            let Some(id) = r.file else { continue };
            if r.captured.is_some() {
                continue; // a shared writable mapping: its contents are put back
            }
            let md = fs::metadata(&r.name).map_err(|_| RestoreError::FileChanged {
                path: r.name.clone(),
                why: "was removed",
            })?;
            if md.size() != id.size
                || md.mtime() != id.mtime_sec
                || md.mtime_nsec() != id.mtime_nsec
            {
                return Err(RestoreError::FileChanged {
                    path: r.name.clone(),
                    why: "binary, library or mapped file changed",
                });
            }
        }
    }
    Ok(())
}

fn open_flags(flags: u32) -> i32 {
    (flags as i32) & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY)
        | libc::O_CLOEXEC
}

fn raw_open(path: &str, flags: i32) -> Result<OwnedFd, RestoreError> {
    let c = CString::new(path).map_err(|_| RestoreError::FileChanged {
        path: path.into(),
        why: "path contains NUL",
    })?;
    // SAFETY: c is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(last_os(path));
    }
    // SAFETY: fd was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn copy_into(src: &Path, dst: &mut File) -> Result<(), RestoreError> {
    let mut s = File::open(src).map_err(ioe(src.display().to_string()))?;
    std::io::copy(&mut s, dst).map_err(ioe(src.display().to_string()))?;
    Ok(())
}

/// Reopens one saved fd, putting back its file's contents as the disposition says.
fn reopen(f: &FdMeta, gen_dir: &Path) -> Result<Option<OwnedFd>, RestoreError> {
    let fd = match f.kind {
        FdKind::Stdio => return Ok(None),
        FdKind::Directory => raw_open(
            &f.path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )?,
        FdKind::Device => raw_open(&f.path, open_flags(f.flags))?,
        FdKind::Deleted => {
            let cap = f.captured.as_ref().ok_or(RestoreError::NotCaptured {
                path: f.path.clone(),
            })?;
            let dir = Path::new(&f.path).parent().unwrap_or(Path::new("/tmp"));
            let tmp = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o600)
                .open(dir)
                .or_else(|_| {
                    fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_TMPFILE)
                        .mode(0o600)
                        .open(std::env::temp_dir())
                })
                .map_err(ioe(format!("recreating deleted file {}", f.path)))?;
            let mut tmp = tmp;
            copy_into(&gen_dir.join(cap), &mut tmp)?;
            let fdn = raw_open(
                &format!("/proc/self/fd/{}", tmp.as_raw_fd()),
                open_flags(f.flags),
            )?;
            drop(tmp);
            fdn
        }
        FdKind::File => {
            let id = f.file.unwrap_or_default();
            let md = fs::metadata(&f.path).map_err(|_| RestoreError::FileChanged {
                path: f.path.clone(),
                why: "was removed",
            })?;
            match f.disposition {
                FileDisposition::Verify => {
                    if md.size() != id.size
                        || md.mtime() != id.mtime_sec
                        || md.mtime_nsec() != id.mtime_nsec
                    {
                        return Err(RestoreError::FileChanged {
                            path: f.path.clone(),
                            why: "file opened read-only changed",
                        });
                    }
                }
                FileDisposition::Truncate => {
                    if md.size() < id.size {
                        return Err(RestoreError::FileChanged {
                            path: f.path.clone(),
                            why: "file shrank",
                        });
                    }
                }
                FileDisposition::Captured => {
                    let cap = f.captured.as_ref().ok_or(RestoreError::NotCaptured {
                        path: f.path.clone(),
                    })?;
                    let mut out = fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&f.path)
                        .map_err(ioe(f.path.clone()))?;
                    copy_into(&gen_dir.join(cap), &mut out)?;
                    out.sync_all().map_err(ioe(f.path.clone()))?;
                }
                FileDisposition::None => {}
            }
            let fd = raw_open(&f.path, open_flags(f.flags))?;
            if f.disposition == FileDisposition::Truncate {
                // SAFETY: ftruncate on our own fd.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), id.size as i64) } != 0 {
                    return Err(last_os(&f.path));
                }
            }
            fd
        }
    };
    if matches!(f.kind, FdKind::File | FdKind::Deleted) && f.offset >= 0 {
        // SAFETY: lseek on our own fd.
        unsafe { libc::lseek(fd.as_raw_fd(), f.offset, libc::SEEK_SET) };
    }
    Ok(Some(fd))
}

fn push<T: Copy>(buf: &mut Vec<u8>, v: &T) {
    // SAFETY: T is one of the plain repr(C) plan records (integers only, no padding
    // with undefined contents that matters to the reader, which reads the same layout).
    let b =
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) };
    buf.extend_from_slice(b);
}

fn kind_code(k: RegionKind) -> u32 {
    match k {
        RegionKind::Anon | RegionKind::Heap | RegionKind::DeletedFile => KIND_ANON,
        RegionKind::Stack => KIND_STACK,
        RegionKind::FilePrivate => KIND_FILE_PRIVATE,
        RegionKind::FileShared => KIND_FILE_SHARED,
        RegionKind::SharedAnon => KIND_SHARED_ANON,
    }
}

/// Serializes the plan that stage 2 follows.
pub fn build_plan(meta: &ProcessMeta, image_fd: i32, plan_fd: i32, same_pids: bool) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut regions = Vec::new();
    let mut extents = Vec::new();
    let mut chunks = meta.chunks.clone();
    chunks.sort_by_key(|c| c.vaddr);
    let mut ci = 0;
    for r in &meta.regions {
        let first = extents.len() as u64;
        while ci < chunks.len() && chunks[ci].vaddr < r.start {
            ci += 1;
        }
        while ci < chunks.len() && chunks[ci].vaddr < r.end {
            let c = chunks[ci];
            extents.push(PlanExtent {
                vaddr: c.vaddr,
                len: c.len,
                file_off: c.offset,
            });
            ci += 1;
        }
        let kind = kind_code(r.kind);
        let path_off = if matches!(kind, KIND_FILE_PRIVATE | KIND_FILE_SHARED) {
            let off = strings.len() as u64;
            strings.extend_from_slice(r.name.as_bytes());
            strings.push(0);
            off
        } else {
            0
        };
        regions.push(PlanRegion {
            start: r.start,
            end: r.end,
            prot: r.prot,
            kind,
            path_off,
            file_offset: r.offset,
            first_extent: first,
            nextents: extents.len() as u64 - first,
        });
    }
    let threads: Vec<PlanThread> = meta
        .threads
        .iter()
        .map(|t| PlanThread {
            tid: t.tid as i64,
            is_main: t.is_main as u64,
            ctx_addr: t.ctx_addr,
            fs_base: t.fs_base,
            gs_base: t.gs_base,
            clear_tid: t.clear_tid,
            robust_head: t.robust_head,
            robust_len: t.robust_len,
            rseq_addr: t.rseq_addr,
            rseq_len: t.rseq_len as u64,
            rseq_sig: t.rseq_sig as u64,
        })
        .collect();
    let sigs: Vec<PlanSig> = meta
        .sigactions
        .iter()
        .map(|s| PlanSig {
            signo: s.signo as u64,
            handler: s.handler,
            flags: s.flags,
            restorer: s.restorer,
            mask: s.mask,
        })
        .collect();
    let fds: Vec<PlanFd> = meta
        .fds
        .iter()
        .filter(|f| f.kind != FdKind::Stdio)
        .map(|f| PlanFd {
            fd: f.fd as i64,
            cloexec: f.cloexec as u64,
        })
        .collect();
    let timers: Vec<PlanTimer> = meta
        .timers
        .iter()
        .map(|t| PlanTimer {
            id: t.id as i64,
            clock: t.clock as i64,
            signo: t.signo as i64,
            notify: t.notify as i64,
            tid: t.tid as i64,
            value: t.value,
            interval_ns: t.interval_ns,
            value_ns: t.value_ns,
        })
        .collect();
    let mut itimers = [[0u64; 2]; 3];
    for (i, &(a, b)) in meta.itimers.iter().take(3).enumerate() {
        itimers[i] = [a, b];
    }
    let sz = |n: usize, each: usize| (n * each) as u64;
    let mut h = PlanHeader {
        magic: PLAN_MAGIC,
        nregions: regions.len() as u64,
        nextents: extents.len() as u64,
        nthreads: threads.len() as u64,
        nsigs: sigs.len() as u64,
        nfds: fds.len() as u64,
        auxv_len: 0,
        image_fd: image_fd as i64,
        plan_fd: plan_fd as i64,
        same_pids: same_pids as u64,
        mm: [
            meta.mm.start_code,
            meta.mm.end_code,
            meta.mm.start_data,
            meta.mm.end_data,
            meta.mm.start_brk,
            meta.mm.brk,
            meta.mm.start_stack,
            meta.mm.arg_start,
            meta.mm.arg_end,
            meta.mm.env_start,
            meta.mm.env_end,
        ],
        vvar_start: meta.vdso.vvar_start,
        vvar_len: meta.vdso.vvar_len,
        vdso_start: meta.vdso.vdso_start,
        vdso_len: meta.vdso.vdso_len,
        restore_info: meta.agent.restore_info,
        ntimers: timers.len() as u64,
        itimers,
        drop_caps: (same_pids && my_uid() != 0) as u64,
        attempt_plus1: std::env::var("TORPOR_ATTEMPT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|a| a + 1)
            .unwrap_or(0),
        ..Default::default()
    };
    let mut off = std::mem::size_of::<PlanHeader>() as u64;
    h.regions_off = off;
    off += sz(regions.len(), std::mem::size_of::<PlanRegion>());
    h.extents_off = off;
    off += sz(extents.len(), std::mem::size_of::<PlanExtent>());
    h.threads_off = off;
    off += sz(threads.len(), std::mem::size_of::<PlanThread>());
    h.sigs_off = off;
    off += sz(sigs.len(), std::mem::size_of::<PlanSig>());
    h.fds_off = off;
    off += sz(fds.len(), std::mem::size_of::<PlanFd>());
    h.timers_off = off;
    off += sz(timers.len(), std::mem::size_of::<PlanTimer>());
    h.auxv_off = off;
    h.strings_off = off;
    off += strings.len() as u64;
    h.total_len = off;
    let mut buf = Vec::with_capacity(off as usize);
    push(&mut buf, &h);
    regions.iter().for_each(|x| push(&mut buf, x));
    extents.iter().for_each(|x| push(&mut buf, x));
    threads.iter().for_each(|x| push(&mut buf, x));
    sigs.iter().for_each(|x| push(&mut buf, x));
    fds.iter().for_each(|x| push(&mut buf, x));
    timers.iter().for_each(|x| push(&mut buf, x));
    buf.extend_from_slice(&strings);
    buf
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

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: i32) {
    let pid = FORWARD_TO.load(SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Waits for `child` while forwarding signals to it, then exits the way it did.
fn wait_and_mirror(child: i32, reap_all: bool) -> ! {
    FORWARD_TO.store(child, SeqCst);
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGCONT,
        libc::SIGALRM,
        std::env::var("TORPOR_SIGNAL")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&s: &i32| (34..=64).contains(&s) && s != 61 || s == 10 || s == 12)
            .unwrap_or(38),
    ] {
        // SAFETY: installs a handler that only calls kill.
        unsafe { libc::signal(sig, forward as *const () as usize) };
    }
    loop {
        let mut st = 0;
        // SAFETY: waits for our children.
        let w = unsafe { libc::waitpid(if reap_all { -1 } else { child }, &mut st, libc::__WALL) };
        if w < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            std::process::exit(127);
        }
        if w == child {
            if libc::WIFSIGNALED(st) {
                let sig = libc::WTERMSIG(st);
                // SAFETY: re-raise the same signal with its default action.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::kill(libc::getpid(), sig);
                }
                std::process::exit(128 + sig);
            }
            std::process::exit(libc::WEXITSTATUS(st));
        }
    }
}

fn write_file(path: &str, s: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(s.as_bytes())
}

/// Enters a new user+pid+mount namespace and becomes `orig_pid` in it. Returns in the
/// process that will become the restored program; the others wait and mirror its exit.
fn enter_pid_namespace(orig_pid: i32) -> Result<(), String> {
    if orig_pid <= 1 {
        return Err("original pid 1 cannot be restored in a namespace".into());
    }
    let (uid, gid) = (my_uid(), {
        // SAFETY: getgid cannot fail.
        unsafe { libc::getgid() }
    });
    // SAFETY: unshare affects only this (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    // From here on a failure cannot fall back to new pids: this process already has a
    // pending pid namespace (no threads can be created in it).
    let fatal = |what: &str, e: std::io::Error| -> ! {
        eprintln!("torpor-restore: entering the restore namespace: {what}: {e}");
        std::process::exit(127);
    };
    // A single mapping of our own ids is what an unprivileged process may write itself.
    if let Err(e) = write_file("/proc/self/setgroups", "deny") {
        fatal("setgroups", e);
    }
    if let Err(e) = write_file("/proc/self/uid_map", &format!("{uid} {uid} 1")) {
        fatal("uid_map", e);
    }
    if let Err(e) = write_file("/proc/self/gid_map", &format!("{gid} {gid} 1")) {
        fatal("gid_map", e);
    }
    // SAFETY: fork in a single-threaded process.
    let init = unsafe { libc::fork() };
    if init < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if init > 0 {
        close_all_but_stdio();
        wait_and_mirror(init, false);
    }
    // Pid 1 of the new namespace: if the waiting task process is killed (Slurm kills the
    // pid it tracks), take the namespace down with it.
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // Give it its own /proc so tids read there are ours.
    // SAFETY: mount calls with NUL-terminated strings, in our own mount namespace.
    unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
    }
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let want = orig_pid;
    let ca = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: &want as *const i32 as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    // SAFETY: fork-like clone3 (no CLONE_VM, no new stack) with set_tid.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &ca as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        eprintln!(
            "torpor-restore: cannot create pid {orig_pid}: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(127);
    }
    if pid > 0 {
        close_all_but_stdio();
        wait_and_mirror(pid as i32, true);
    }
    if uid != 0 {
        keep_checkpoint_restore_cap();
    }
    Ok(())
}

/// A non-root user loses its namespace capabilities at execve. Stage 2 needs
/// CAP_CHECKPOINT_RESTORE to create threads with their original tids: keep that one
/// capability across the exec as an ambient capability. Stage 2 drops it in every
/// thread before the program resumes.
fn keep_checkpoint_restore_cap() {
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    #[repr(C)]
    struct Hdr {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Hdr {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with the v3 header and two data words.
    unsafe {
        libc::syscall(libc::SYS_capget, &mut h as *mut Hdr, d.as_mut_ptr());
        d[1].inheritable |= 1 << (CAP_CHECKPOINT_RESTORE - 32);
        libc::syscall(libc::SYS_capset, &mut h as *mut Hdr, d.as_ptr());
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            CAP_CHECKPOINT_RESTORE as libc::c_ulong,
            0,
            0,
        );
    }
}

fn fds_open() -> Vec<i32> {
    fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn close_all_but_stdio() {
    for fd in fds_open() {
        if fd > 2 {
            // SAFETY: closing fds in a process that only waits from now on.
            unsafe { libc::close(fd) };
        }
    }
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

/// In a batch job, Slurm truncates the output file when the job runs again (unless
/// --open-mode=append, where the dead run's later output remains). Puts a captured
/// stdout/stderr file back to its contents at the checkpoint, so the job's output reads
/// like an uninterrupted run's: what the rerun script printed before reaching the
/// program is in the saved copy too, and what the program prints next follows it.
fn put_back_output(meta: &ProcessMeta, gen_dir: &Path, verbose: bool) -> Result<(), RestoreError> {
    let mut done: Vec<String> = Vec::new();
    for f in meta.fds.iter().filter(|f| f.kind == FdKind::Stdio) {
        let (Some(cap), Some(id)) = (&f.captured, f.file) else {
            continue;
        };
        let now = fs::read_link(format!("/proc/self/fd/{}", f.fd))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if now != f.path {
            continue; // launched with different output: leave it alone
        }
        if !done.contains(&f.path) {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .open(&f.path)
                .map_err(ioe(f.path.clone()))?;
            copy_into(&gen_dir.join(cap), &mut out)?;
            out.set_len(id.size).map_err(ioe(f.path.clone()))?;
            done.push(f.path.clone());
            if verbose {
                eprintln!(
                    "torpor-restore: output {} put back to {} bytes",
                    f.path, id.size
                );
            }
        }
        // SAFETY: moves the inherited descriptor's offset to the end of the restored output.
        unsafe { libc::lseek(f.fd, id.size as i64, libc::SEEK_SET) };
    }
    Ok(())
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
    if verbose {
        eprintln!(
            "torpor-restore: restoring pid {} from {} ({} threads, {} regions, {} pages, {} pids)",
            orig_pid,
            sel.gen_dir.display(),
            meta.threads.len(),
            meta.regions.len(),
            meta.pages_saved(),
            if same_pids { "original" } else { "new" }
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
