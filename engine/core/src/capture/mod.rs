//! Writes the image of the process it runs in: the forked writer child calls this on its
//! own copy-on-write snapshot of the paused program.
//!
//! Runs after a raw `clone` from a multithreaded process: it must not call into glibc's
//! allocator or anything that takes a glibc lock (no `opendir`, no stdio). The agent's own
//! allocator serves every Rust allocation made here.

mod attrs;
mod fds;
mod helper;
mod memory;
mod tcp;
pub(crate) mod unix;

pub use fds::{save_deleted, shared_map_name};
use memory::PageSink;

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;

use thiserror::Error;
use torpor_image::meta::*;
use torpor_image::store::{ManifestProcess, Pending, StoreError};
use torpor_image::ImageError;

use crate::procmaps;
use crate::records::{FdSnap, LockSnap, ThreadRec, TimerSnap};

/// Why a process could not be captured. The program keeps running either way.
#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("reading {what}: {source}")]
    Proc {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot checkpoint a mapping of device {0}")]
    DeviceMapping(String),
    #[error("cannot checkpoint the special mapping {0}")]
    SpecialMapping(String),
    #[error("cannot checkpoint fd {fd} ({target}): {why}")]
    UnsupportedFd {
        fd: i32,
        target: String,
        why: &'static str,
    },
    #[error("{path} (fd {fd}) is written by the program and could not be saved with the generation (over the site's capture limit of {limit} bytes, or the copy failed); the previous generation stays the newest")]
    NotCaptured { fd: i32, path: String, limit: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn proc_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CaptureError {
    let what = what.into();
    move |source| CaptureError::Proc { what, source }
}

/// What the paused program handed to the writer.
pub struct CaptureInput<'a> {
    pub pid: i32,
    pub ppid: i32,
    pub threads: &'a [ThreadRec],
    pub fds: &'a [FdSnap],
    pub timers: &'a [TimerSnap],
    pub locks: &'a [LockSnap],
    /// setitimer (interval_ns, value_ns) for REAL, VIRTUAL, PROF at the pause.
    pub itimers: [(u64, u64); 3],
    pub restore_info_addr: u64,
    /// Address ranges created by the writer itself, never part of the image.
    pub skip: &'a dyn Fn(u64, u64) -> bool,
    /// Address ranges of the agent's own scratch buffers (dirty-page scan results, the
    /// maps buffer), whose contents a restored agent never reads: their pages are not
    /// saved and come back as zeros.
    pub scratch: &'a [(u64, u64)],
    /// Pre-fork copy of the agent's writable data (address, bytes): the writer changes
    /// those pages while it works, the image must hold them as they were at the pause.
    pub patch: Option<(u64, &'a [u8])>,
    pub generation: u64,
    pub attempt: u32,
    pub time_unix: f64,
    pub in_restore_pidns: bool,
    /// The site's limit on file contents copied into a generation (for messages).
    pub capture_limit: u64,
    /// Write an incremental image on top of a parent (ADR 0009); `None`: full.
    pub incremental: Option<Incremental<'a>>,
}

/// What an incremental image builds on.
pub struct Incremental<'a> {
    pub parent: ParentRef,
    /// The parent image file.
    pub parent_image: &'a std::path::Path,
    /// Address ranges whose write tracking held since the parent was taken (sorted).
    pub clean: &'a [(u64, u64)],
    /// Page ranges `[start, end, _]` written since then, inside `clean` (sorted).
    pub dirty: &'a [[u64; 3]],
}

/// Result of writing one process image.
#[derive(Debug)]
pub struct Captured {
    pub process: ManifestProcess,
    pub bytes: u64,
    pub pages: u64,
    /// The parent generation, if the image is incremental.
    pub parent: Option<u64>,
}

fn read_file(path: &str) -> Result<Vec<u8>, CaptureError> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .map_err(proc_err(path))?;
    Ok(v)
}

fn read_link(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cstr_name(b: &[u8; 16]) -> String {
    CStr::from_bytes_until_nul(b)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes `proc-<pid>.img` into the pending generation.
pub fn write_process_image(
    pending: &Pending,
    inp: &CaptureInput,
) -> Result<Captured, CaptureError> {
    let maps_text = String::from_utf8_lossy(&read_file("/proc/self/maps")?).into_owned();
    let maps = procmaps::parse(&maps_text);
    let name = format!("proc-{}.img", inp.pid);
    let mut sink = PageSink::start(pending, &name, &maps, inp.patch)?;
    let regions = memory::capture_regions(&maps, pending, inp, &mut sink)?;
    let fds = fds::capture_fds(pending, inp)?;
    let f = attrs::stat_fields()?;
    // SAFETY: brk(0) only queries the current program break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0usize) } as u64;
    let auxv = attrs::auxv()?;
    // SAFETY: umask has no memory-safety preconditions; we restore the old mask at once.
    let umask = unsafe {
        let u = libc::umask(0o022);
        libc::umask(u);
        u
    };
    let argv = read_file("/proc/self/cmdline")?
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let main = inp.threads.iter().find(|t| t.is_main != 0);
    let mut meta = ProcessMeta {
        format: format!(
            "{}.{}",
            torpor_image::FORMAT_MAJOR,
            torpor_image::FORMAT_MINOR
        ),
        origin: Origin {
            pid: inp.pid,
            ppid: inp.ppid,
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            hostname: attrs::hostname(),
            kernel: read_file("/proc/sys/kernel/osrelease")
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default(),
            time_unix: inp.time_unix,
            exe: read_link("/proc/self/exe"),
            argv,
            generation: inp.generation,
            attempt: inp.attempt,
            in_restore_pidns: inp.in_restore_pidns,
        },
        mm: MmFields {
            start_code: f[26],
            end_code: f[27],
            start_stack: f[28],
            start_data: f[45],
            end_data: f[46],
            start_brk: f[47],
            brk,
            arg_start: f[48],
            arg_end: f[49],
            env_start: f[50],
            env_end: f[51],
        },
        auxv,
        vdso: memory::vdso_info(&maps),
        sigactions: attrs::sigactions(),
        threads: inp
            .threads
            .iter()
            .map(|t| ThreadMeta {
                tid: t.tid,
                is_main: t.is_main != 0,
                ctx_addr: &t.ctx as *const _ as u64,
                fs_base: t.fs_base,
                gs_base: t.gs_base,
                clear_tid: t.clear_tid,
                robust_head: t.robust_head,
                robust_len: t.robust_len,
                rseq_addr: t.rseq_addr,
                rseq_len: t.rseq_len,
                rseq_sig: t.rseq_sig,
                name: cstr_name(&t.name),
            })
            .collect(),
        regions,
        chunks: Vec::new(),
        fds,
        process: ProcessAttrs {
            cwd: read_link("/proc/self/cwd"),
            umask,
            rlimits: attrs::rlimits(),
            comm: main.map(|t| cstr_name(&t.name)).unwrap_or_default(),
        },
        agent: AgentAddrs {
            restore_info: inp.restore_info_addr,
        },
        timers: inp
            .timers
            .iter()
            .map(|t| TimerMeta {
                id: t.id,
                clock: t.clock,
                signo: t.signo,
                notify: t.notify,
                tid: t.tid,
                value: t.value,
                interval_ns: t.interval_ns,
                value_ns: t.value_ns,
            })
            .collect(),
        itimers: inp.itimers.to_vec(),
        locks: inp
            .locks
            .iter()
            .map(|l| LockMeta {
                fd: l.fd,
                write: l.write != 0,
                start: l.start,
                end: l.end,
            })
            .collect(),
        parent: None,
    };
    // The copies made during the pause must be durable before the generation commits.
    let copies = meta
        .fds
        .iter()
        .filter_map(|f| f.captured.clone())
        .chain(meta.regions.iter().filter_map(|r| r.captured.clone()));
    for name in copies {
        let p = pending.path().join(&name);
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(proc_err(p.display().to_string()))?;
    }
    let files_dir = pending.path().join("files");
    if files_dir.is_dir() {
        File::open(&files_dir)
            .and_then(|f| f.sync_all())
            .map_err(proc_err(files_dir.display().to_string()))?;
    }
    if meta.regions.iter().any(|r| r.inherit) {
        meta.parent = inp.incremental.as_ref().map(|i| i.parent.clone());
    }
    let parent = meta.parent.as_ref().map(|p| p.generation);
    let (writer, pages) = sink.into_writer()?;
    let file = writer.finish(&mut meta)?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    Ok(Captured {
        process: ManifestProcess {
            pid: inp.pid,
            image: name,
            ..Default::default()
        },
        bytes,
        pages,
        parent,
    })
}
