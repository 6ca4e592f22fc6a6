//! Writes the image of the process it runs in: the forked writer child calls this on its
//! own copy-on-write snapshot of the paused program.
//!
//! Runs after a raw `clone` from a multithreaded process: it must not call into glibc's
//! allocator or anything that takes a glibc lock (no `opendir`, no stdio). The agent's own
//! allocator serves every Rust allocation made here.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;

use thiserror::Error;
use torpor_image::meta::*;
use torpor_image::store::{ManifestProcess, Pending, StoreError};
use torpor_image::{ImageError, ImageWriter, PAGE_SIZE};
use xxhash_rust::xxh3::xxh3_64;

use crate::procmaps::{self, Vma};
use crate::records::{FdSnap, LockSnap, ThreadRec, TimerSnap, SIDECARS};

/// Largest run of pages stored as one chunk.
const MAX_CHUNK: u64 = 4 << 20;

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
    /// Pre-fork copy of the agent's writable data (address, bytes): the writer changes
    /// those pages while it works, the image must hold them as they were at the pause.
    pub patch: Option<(u64, &'a [u8])>,
    pub generation: u64,
    pub attempt: u32,
    pub time_unix: f64,
    pub in_restore_pidns: bool,
    /// The site's limit on file contents copied into a generation (for messages).
    pub capture_limit: u64,
}

/// Result of writing one process image.
#[derive(Debug)]
pub struct Captured {
    pub process: ManifestProcess,
    pub bytes: u64,
    pub pages: u64,
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

/// Reads memory of this process. The caller guarantees the range is mapped and readable.
fn mem(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: callers only pass ranges of VMAs listed in /proc/self/maps with read
    // permission (added with mprotect in this single-threaded writer if needed); nothing
    // unmaps them while the writer runs, since the writer is the only thread.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) }
}

fn classify(v: &Vma) -> Result<Option<RegionKind>, CaptureError> {
    let n = v.name.as_str();
    Ok(Some(match n {
        "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => return Ok(None),
        "[heap]" => RegionKind::Heap,
        "[stack]" => RegionKind::Stack,
        "" => {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::Anon
            }
        }
        _ if n.starts_with("[anon:")
            || n.starts_with("[stack:")
            || n.starts_with("[anon_shmem:") =>
        {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::Anon
            }
        }
        _ if n.starts_with('[') || !n.starts_with('/') => {
            // `[uprobes]`, `anon_inode:[perf_event]`, ...: nothing we can map again.
            return Err(CaptureError::SpecialMapping(n.into()));
        }
        "/dev/zero" | "/dev/zero (deleted)" => {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::Anon
            }
        }
        _ if n.starts_with("/SYSV") || n.starts_with("/memfd:") || n.ends_with(" (deleted)") => {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::DeletedFile
            }
        }
        _ if n.starts_with("/dev/") && !n.starts_with("/dev/shm/") => {
            return Err(CaptureError::DeviceMapping(n.into()))
        }
        _ if v.shared => RegionKind::FileShared,
        _ => RegionKind::FilePrivate,
    }))
}

fn file_id(path: &str) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

struct PageSink<'a> {
    w: ImageWriter,
    patch: Option<(u64, &'a [u8])>,
    /// The writer's own stack: it changes while we write, so it is copied first.
    volatile: (u64, u64),
    run_start: u64,
    run_len: u64,
    buf: Vec<u8>,
    pages: u64,
}

impl PageSink<'_> {
    /// Bytes of the page at `addr` as they were at the pause.
    fn page(&self, addr: u64) -> &[u8] {
        if let Some((pa, pb)) = self.patch {
            if addr >= pa && addr + PAGE_SIZE <= pa + pb.len() as u64 {
                let o = (addr - pa) as usize;
                return &pb[o..o + PAGE_SIZE as usize];
            }
        }
        mem(addr, PAGE_SIZE)
    }

    fn flush(&mut self) -> Result<(), CaptureError> {
        if self.run_len == 0 {
            return Ok(());
        }
        let (vs, ve) = self.volatile;
        let patched = self.patch.is_some_and(|(pa, pb)| {
            self.run_start < pa + pb.len() as u64 && pa < self.run_start + self.run_len
        }) || (self.run_start < ve && vs < self.run_start + self.run_len);
        if patched {
            self.buf.clear();
            let mut a = self.run_start;
            while a < self.run_start + self.run_len {
                let p = self.page(a).to_vec();
                self.buf.extend_from_slice(&p);
                a += PAGE_SIZE;
            }
            let data = std::mem::take(&mut self.buf);
            self.w.add_chunk(self.run_start, &data)?;
            self.buf = data;
        } else {
            self.w
                .add_chunk(self.run_start, mem(self.run_start, self.run_len))?;
        }
        self.run_len = 0;
        Ok(())
    }

    /// Adds the page at `addr` unless it is all zeros. Returns whether it was stored.
    fn push(&mut self, addr: u64) -> Result<bool, CaptureError> {
        if self.page(addr).iter().all(|&b| b == 0) {
            self.flush()?;
            return Ok(false);
        }
        if self.run_len > 0 && (self.run_start + self.run_len != addr || self.run_len >= MAX_CHUNK)
        {
            self.flush()?;
        }
        if self.run_len == 0 {
            self.run_start = addr;
        }
        self.run_len += PAGE_SIZE;
        self.pages += 1;
        Ok(true)
    }
}

fn stat_fields() -> Result<Vec<u64>, CaptureError> {
    let s = String::from_utf8_lossy(&read_file("/proc/self/stat")?).into_owned();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    // Field 3 is the first after the command name; index so that f[n] is field n.
    let mut f = vec![0u64; 3];
    f.extend(
        rest.split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0)),
    );
    f.resize(64, 0);
    Ok(f)
}

fn sigactions() -> Vec<SigAction> {
    let mut v = Vec::new();
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = [0u64; 4];
        // SAFETY: rt_sigaction with a null new action only writes the old action into
        // `old`, which has the size of the kernel's struct sigaction on x86_64.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                8usize,
            )
        };
        if r == 0 && (old[0] != 0 || old[1] != 0 || old[3] != 0) {
            v.push(SigAction {
                signo: sig,
                handler: old[0],
                flags: old[1],
                restorer: old[2],
                mask: old[3],
            });
        }
    }
    v
}

fn rlimits() -> Vec<(u32, u64, u64)> {
    let mut v = Vec::new();
    for r in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 on ourselves with a null new limit only writes `old`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                r,
                std::ptr::null::<libc::rlimit64>(),
                &mut old as *mut libc::rlimit64,
            )
        };
        if rc == 0 {
            v.push((r, old.rlim_cur, old.rlim_max));
        }
    }
    v
}

fn fd_meta(s: &FdSnap) -> Result<FdMeta, CaptureError> {
    let target = read_link(&format!("/proc/self/fd/{}", s.fd));
    let acc = s.flags & libc::O_ACCMODE;
    let mut m = FdMeta {
        fd: s.fd,
        kind: FdKind::File,
        path: target.clone(),
        flags: s.flags as u32,
        cloexec: s.fdflags & libc::FD_CLOEXEC != 0,
        offset: s.offset,
        disposition: FileDisposition::None,
        file: Some(FileId {
            dev: s.dev,
            ino: s.ino,
            size: s.size as u64,
            mtime_sec: s.mtime_sec,
            mtime_nsec: s.mtime_nsec,
        }),
        captured: None,
        dup_of: None,
        absent_sidecars: Vec::new(),
    };
    if s.fd <= 2 {
        m.kind = FdKind::Stdio;
        if s.captured == 1 {
            m.captured = Some(format!("files/fd-{}", s.fd));
        } else {
            m.file = None;
        }
        return Ok(m);
    }
    let fmt = s.mode & libc::S_IFMT;
    if fmt == libc::S_IFREG {
        if let Some(p) = target.strip_suffix(" (deleted)") {
            m.kind = FdKind::Deleted;
            m.path = p.to_string();
            m.disposition = FileDisposition::Captured;
            if s.captured == 1 {
                m.captured = Some(format!("files/fd-{}", s.fd));
            }
        } else if acc == libc::O_RDONLY {
            m.disposition = FileDisposition::Verify;
        } else if s.flags & libc::O_APPEND != 0 || (acc == libc::O_WRONLY && s.offset == s.size) {
            m.disposition = FileDisposition::Truncate;
        } else {
            m.disposition = FileDisposition::Captured;
            if s.captured == 1 {
                m.captured = Some(format!("files/fd-{}", s.fd));
            }
            m.absent_sidecars = SIDECARS
                .iter()
                .enumerate()
                .filter(|(i, _)| s.sidecars & (1 << i) == 0)
                .map(|(_, n)| n.to_string())
                .collect();
        }
    } else if fmt == libc::S_IFDIR {
        m.kind = FdKind::Directory;
        m.file = None;
    } else if fmt == libc::S_IFCHR
        && matches!(
            target.as_str(),
            "/dev/null" | "/dev/zero" | "/dev/full" | "/dev/random" | "/dev/urandom"
        )
    {
        m.kind = FdKind::Device;
        m.file = None;
    } else {
        let why = match fmt {
            libc::S_IFIFO => "pipes are not supported yet",
            libc::S_IFSOCK => "sockets are not supported yet",
            libc::S_IFCHR => "character devices other than null/zero/full/random/urandom",
            _ => "unsupported file kind",
        };
        return Err(CaptureError::UnsupportedFd {
            fd: s.fd,
            target,
            why,
        });
    }
    Ok(m)
}

fn vdso_info(maps: &[Vma]) -> Vdso {
    let find = |n: &str| maps.iter().find(|v| v.name == n);
    let mut d = Vdso::default();
    if let Some(v) = find("[vvar]") {
        d.vvar_start = v.start;
        d.vvar_len = v.len();
        if let Some(c) = find("[vvar_vclock]") {
            if c.start == v.end {
                d.vvar_len = c.end - v.start;
            }
        }
    }
    if let Some(v) = find("[vdso]") {
        d.vdso_start = v.start;
        d.vdso_len = v.len();
        d.vdso_hash = xxh3_64(mem(v.start, v.len()));
    }
    d
}

fn hostname() -> String {
    read_file("/proc/sys/kernel/hostname")
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
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
    let (file, path) = pending.create_file(&name)?;
    let pagemap = File::open("/proc/self/pagemap").map_err(proc_err("/proc/self/pagemap"))?;
    let here = &maps as *const _ as u64;
    let volatile = maps
        .iter()
        .find(|v| v.start <= here && here < v.end)
        .map(|v| (v.start, v.end))
        .unwrap_or((0, 0));
    let mut sink = PageSink {
        w: ImageWriter::new(file, &path)?,
        patch: inp.patch,
        volatile,
        run_start: 0,
        run_len: 0,
        buf: Vec::new(),
        pages: 0,
    };
    let mut regions = Vec::new();
    let mut pm = Vec::<u64>::new();
    for v in &maps {
        if (inp.skip)(v.start, v.end) {
            continue;
        }
        let Some(kind) = classify(v)? else { continue };
        let npages = v.len() / PAGE_SIZE;
        let mut region = Region {
            start: v.start,
            end: v.end,
            prot: v.prot(),
            kind,
            name: v.name.clone(),
            offset: v.offset,
            file: None,
            pages_saved: 0,
            flags: Vec::new(),
            captured: None,
        };
        if matches!(kind, RegionKind::FilePrivate | RegionKind::FileShared) {
            region.file = file_id(&v.name);
        }
        if kind == RegionKind::FileShared && v.write {
            let name = shared_map_name(v.dev_major, v.dev_minor, v.inode);
            if pending.path().join(&name).exists() {
                region.captured = Some(name);
            }
        }
        if kind != RegionKind::FileShared {
            pm.resize(npages as usize, 0);
            // SAFETY: the slice of u64 is viewed as bytes for the duration of the read.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(pm.as_mut_ptr() as *mut u8, pm.len() * 8) };
            use std::os::unix::fs::FileExt;
            pagemap
                .read_exact_at(bytes, (v.start / PAGE_SIZE) * 8)
                .map_err(proc_err("/proc/self/pagemap"))?;
            let want = |e: u64| match kind {
                RegionKind::FilePrivate => {
                    (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
                }
                RegionKind::SharedAnon | RegionKind::DeletedFile => true,
                _ => e & (PM_PRESENT | PM_SWAPPED) != 0,
            };
            if pm.iter().any(|&e| want(e)) {
                if !v.read {
                    // SAFETY: changes protection of our own (the writer's) copy only.
                    unsafe {
                        libc::mprotect(
                            v.start as *mut libc::c_void,
                            v.len() as usize,
                            libc::PROT_READ,
                        )
                    };
                }
                for (i, &e) in pm.iter().enumerate() {
                    if want(e) && sink.push(v.start + i as u64 * PAGE_SIZE)? {
                        region.pages_saved += 1;
                    }
                }
                sink.flush()?;
            }
        }
        regions.push(region);
    }
    let mut fds = Vec::new();
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    for (i, s) in inp.fds.iter().enumerate() {
        if s.fd > 2 {
            // fds sharing one open file description must share it again after restore.
            let same = inp.fds[..i].iter().find(|o| {
                o.fd > 2
                    // SAFETY: kcmp(KCMP_FILE=0) compares two of our own fds.
                    && unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, o.fd, s.fd) } == 0
            });
            if let Some(o) = same {
                let orig = fds.iter().find(|m: &&FdMeta| m.fd == o.fd).cloned();
                if let Some(mut m) = orig {
                    m.fd = s.fd;
                    m.cloexec = s.fdflags & libc::FD_CLOEXEC != 0;
                    m.dup_of = Some(o.fd);
                    fds.push(m);
                    continue;
                }
            }
        }
        if s.captured == -1 && s.fd > 2 {
            return Err(CaptureError::NotCaptured {
                fd: s.fd,
                path: read_link(&format!("/proc/self/fd/{}", s.fd)),
                limit: inp.capture_limit,
            });
        }
        let mut m = fd_meta(s)?;
        if m.kind == FdKind::Deleted && m.captured.is_none() {
            save_deleted(pending, s.fd)?;
            m.captured = Some(format!("files/fd-{}", s.fd));
        }
        fds.push(m);
    }
    let f = stat_fields()?;
    // SAFETY: brk(0) only queries the current program break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0usize) } as u64;
    let auxv_raw = read_file("/proc/self/auxv")?;
    let mut auxv = Vec::new();
    for c in auxv_raw.chunks_exact(16) {
        let k = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
        let val = u64::from_le_bytes(c[8..16].try_into().unwrap_or_default());
        auxv.push((k, val));
        if k == 0 {
            break;
        }
    }
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
            hostname: hostname(),
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
        vdso: vdso_info(&maps),
        sigactions: sigactions(),
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
            rlimits: rlimits(),
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
    let pages = sink.pages;
    let file = sink.w.finish(&mut meta)?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(file);
    Ok(Captured {
        process: ManifestProcess {
            pid: inp.pid,
            image: name,
        },
        bytes,
        pages,
    })
}

/// Name (inside the generation) of the captured contents of a shared writable mapping.
pub fn shared_map_name(major: u32, minor: u32, ino: u64) -> String {
    format!("files/map-{major:x}-{minor:x}-{ino}")
}

/// Copies the contents of a deleted-but-open file from `/proc/self/fd/N` into the generation.
pub fn save_deleted(pending: &Pending, fd: i32) -> Result<(), CaptureError> {
    let dir = pending.path().join("files");
    let _ = std::fs::create_dir(&dir);
    let (mut out, _) = pending.create_file(&format!("files/fd-{fd}"))?;
    let src = File::open(format!("/proc/self/fd/{fd}")).map_err(proc_err("deleted file"))?;
    let mut src = src;
    std::io::copy(&mut src, &mut out).map_err(proc_err("deleted file copy"))?;
    out.sync_all().map_err(proc_err("deleted file fsync"))?;
    Ok(())
}
