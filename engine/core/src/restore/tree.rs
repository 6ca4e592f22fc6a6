//! Restore stage 1, process trees (ADR 0006): recreates the pipes shared by the
//! processes of a generation (with the data buffered at the checkpoint), enters the pid
//! namespace as the root, forks the tree in order with the original pids (zombies
//! included), sets process groups and sessions, and lets every process exec stage 2
//! with its own plan. A tree comes back whole or not at all: every process waits, with
//! its files ready, until the root has heard that all of them are ready.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use torpor_image::meta::{FdKind, FdMeta, ProcessMeta};
use torpor_image::store::{ManifestProcess, SharedMemory};
use torpor_image::ImageReader;

use super::namespace::enter_pid_namespace;
use super::select::open_checked;
use super::{
    check_compat, exec_stage2, last_os, memfd, prepare_process, put_back_output, PidMode,
    RestoreError, Selected, ShmMap,
};
use crate::plan::CloneArgs;

/// The pipes of a generation: one pipe per inode that has a reader and a writer in
/// the generation, refilled with its saved data; and one socket pair per pair of
/// socket ends whose inodes both appear.
pub(crate) struct Pipes {
    /// Read end and write end (none for a pipe whose writers were all gone).
    ends: HashMap<u64, (OwnedFd, Option<OwnedFd>)>,
    /// Every socket of the generation, by inode (`restore::channels`).
    sockets: HashMap<u64, OwnedFd>,
    /// One read-write keeper per named FIFO, held until the processes have their fds.
    _fifos: HashMap<u64, OwnedFd>,
    /// Open file descriptions shared by several processes, and who holds which.
    shared: Vec<OwnedFd>,
    shared_by: HashMap<(i32, i32), usize>,
}

fn acc(f: &FdMeta) -> i32 {
    f.flags as i32 & libc::O_ACCMODE
}

impl Pipes {
    pub(crate) fn create(metas: &[&ProcessMeta], gen_dir: &Path) -> Result<Pipes, RestoreError> {
        let mut seen: HashMap<u64, (bool, bool)> = HashMap::new();
        let mut widowed: std::collections::HashSet<u64> = Default::default();
        for f in metas.iter().flat_map(|m| &m.fds) {
            if f.kind == FdKind::Pipe {
                let e = seen.entry(f.pipe_ino).or_default();
                e.0 |= acc(f) != libc::O_WRONLY;
                e.1 |= acc(f) != libc::O_RDONLY || f.pipe_no_writers;
                if f.pipe_no_writers {
                    widowed.insert(f.pipe_ino);
                }
            }
        }
        let fifos = super::channels::fifo_keepers(metas, gen_dir)?;
        let mut sockets = super::channels::unix_sockets(metas, gen_dir)?;
        sockets.extend(super::channels::tcp_sockets(metas, gen_dir)?);
        let mut ends = HashMap::new();
        for (ino, rw) in seen {
            if rw != (true, true) {
                continue;
            }
            let mut p = [-1i32; 2];
            // SAFETY: pipe2 writes two fds.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(last_os("pipe2"));
            }
            // SAFETY: both fds were just created and are owned here.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
            let data_path = gen_dir.join("pipes").join(ino.to_string());
            if let Ok(data) = std::fs::read(&data_path) {
                if data.len() > 65536 {
                    // SAFETY: F_SETPIPE_SZ on our own pipe.
                    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, data.len() as i32) }
                        < data.len() as i32
                    {
                        return Err(last_os("F_SETPIPE_SZ"));
                    }
                }
                let mut out = File::from(w.try_clone().map_err(super::ioe("dup"))?);
                std::io::Write::write_all(&mut out, &data)
                    .map_err(super::ioe(data_path.display().to_string()))?;
            }
            // Writers all gone at the checkpoint: readers get EOF once the data is read.
            let w = (!widowed.contains(&ino)).then_some(w);
            ends.insert(ino, (r, w));
        }
        Ok(Pipes {
            ends,
            sockets,
            _fifos: fifos,
            shared: Vec::new(),
            shared_by: HashMap::new(),
        })
    }

    /// Opens once each open file description that several processes share.
    pub(crate) fn share_files(
        &mut self,
        groups: &[torpor_image::store::SharedFile],
        procs: &[(i32, &ProcessMeta, &Path)],
    ) -> Result<(), RestoreError> {
        (self.shared, self.shared_by) = super::channels::shared_files(groups, procs)?;
        Ok(())
    }

    /// A new fd on the open file description that process `pid` shares at `fd`, if it
    /// shares one.
    pub(crate) fn shared_file(&self, pid: i32, fd: i32) -> Result<Option<OwnedFd>, RestoreError> {
        match self.shared_by.get(&(pid, fd)) {
            None => Ok(None),
            Some(&i) => self.shared[i]
                .try_clone()
                .map(Some)
                .map_err(super::ioe("dup of a shared file")),
        }
    }

    /// A new fd on the end of the pipe that `f` held, with its status flags; `None` for
    /// a pipe at 0-2 whose other end is outside the tree (stdio, inherited).
    pub(crate) fn end_for(&self, f: &FdMeta) -> Result<Option<OwnedFd>, RestoreError> {
        if f.kind != FdKind::Pipe {
            let Some(s) = self.sockets.get(&f.pipe_ino) else {
                if f.fd <= 2 {
                    return Ok(None);
                }
                return Err(RestoreError::FileChanged {
                    path: f.path.clone(),
                    why: "is a socket whose peer is not in the checkpoint",
                });
            };
            let fd = s.try_clone().map_err(super::ioe("dup of a socket"))?;
            // SAFETY: F_SETFL on our own fd (O_NONBLOCK and the like).
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, f.flags as i32) };
            return Ok(Some(fd));
        }
        let Some((r, w)) = self.ends.get(&f.pipe_ino) else {
            if f.fd <= 2 {
                return Ok(None);
            }
            return Err(RestoreError::FileChanged {
                path: f.path.clone(),
                why: "is a pipe whose other end is not in the checkpoint",
            });
        };
        let end = if acc(f) == libc::O_RDONLY {
            Some(r)
        } else {
            w.as_ref()
        };
        let Some(end) = end else {
            return Err(RestoreError::FileChanged {
                path: f.path.clone(),
                why: "is the write end of a pipe recorded as having no writers",
            });
        };
        let fd = end.try_clone().map_err(super::ioe("dup of a pipe end"))?;
        // SAFETY: F_SETFL on our own fd (O_NONBLOCK and the like).
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, f.flags as i32) };
        Ok(Some(fd))
    }
}

struct Member {
    info: ManifestProcess,
    /// Image, metadata and the directory its files/ are in (none for a zombie).
    image: Option<(ImageReader, ProcessMeta, PathBuf)>,
}

/// Restores every process of the generation. Returns only on failure in the first
/// process before the point of no return.
pub(super) fn restore_tree(
    sel: Selected,
    stage2: &[u8],
    pids: PidMode,
    verbose: bool,
    slurm: bool,
) -> Result<std::convert::Infallible, RestoreError> {
    let Some(manifest) = sel.manifest.clone() else {
        return Err(RestoreError::NoImage(sel.gen_dir.clone()));
    };
    let n = manifest.processes.len();
    let gen_dir = sel.gen_dir.clone();
    let sel_started = sel.started;
    let mut procs: Vec<Member> = Vec::new();
    let mut root_reader = Some(sel.reader);
    for (i, p) in manifest.processes.iter().enumerate() {
        let image = if p.image.is_empty() {
            None
        } else {
            let path = gen_dir.join(&p.image);
            let reader = match (i, root_reader.take()) {
                (0, Some(r)) => r,
                _ => open_checked(&path)?,
            };
            let meta = reader.meta().clone();
            check_compat(&meta)?;
            let dir = path.parent().unwrap_or(&gen_dir).to_path_buf();
            Some((reader, meta, dir))
        };
        procs.push(Member {
            info: p.clone(),
            image,
        });
    }
    let Some(root_meta) = procs.first().and_then(|m| m.image.as_ref()).map(|i| &i.1) else {
        return Err(RestoreError::NoImage(gen_dir));
    };
    check_groups(&procs)?;
    if slurm {
        put_back_output(root_meta, &gen_dir, verbose)?;
    }
    for s in &sel.skipped {
        eprintln!("torpor-restore: skipped {s}");
    }
    if !sel.skipped.is_empty() || verbose {
        eprintln!(
            "torpor-restore: using {} ({n} processes)",
            gen_dir.display()
        );
    }
    let metas: Vec<&ProcessMeta> = procs
        .iter()
        .filter_map(|m| m.image.as_ref().map(|i| &i.1))
        .collect();
    let mut pipes = Pipes::create(&metas, &gen_dir)?;
    let holders: Vec<(i32, &ProcessMeta, &Path)> = procs
        .iter()
        .filter_map(|m| m.image.as_ref().map(|i| (m.info.pid, &i.1, i.2.as_path())))
        .collect();
    pipes.share_files(&manifest.open_files, &holders)?;
    let shm = shared_objects(&manifest.shared, &gen_dir)?;
    let stage2_file = memfd(c"torpor-restore", stage2)?;
    let root_pid = procs[0].info.pid;
    let same_pids = match pids {
        PidMode::New => false,
        PidMode::Auto | PidMode::Original => match enter_pid_namespace(root_pid) {
            Ok(()) => true,
            Err(e) if pids == PidMode::Auto => {
                eprintln!("torpor-restore: {e}");
                eprintln!("torpor-restore: {}", super::NEW_PIDS_WARNING);
                false
            }
            Err(e) => {
                return Err(RestoreError::Io {
                    what: format!("original pids for a tree of {n} processes"),
                    source: std::io::Error::other(e),
                })
            }
        },
    };
    if pids == PidMode::New {
        eprintln!("torpor-restore: {}", super::NEW_PIDS_WARNING);
    }
    // Zombies must exit while SIGCHLD is at its default (discarded, not queued).
    // SAFETY: resets one signal disposition of this single-threaded process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let root = procs[0].info.clone();
    // New pids: old pid -> new pid of every process created so far (each process
    // inherits the table of its parent at the fork).
    // SAFETY: getpid cannot fail.
    let mut newpids = vec![(root_pid, unsafe { libc::getpid() })];
    set_groups(&root, true, &newpids);
    let children = children_of(&procs);
    let report = pipe_cloexec()?;
    let go = pipe_cloexec()?;
    let gate = Gate {
        report_r: report.0.as_raw_fd(),
        report_w: report.1.as_raw_fd(),
        go_r: go.0.as_raw_fd(),
        go_w: go.1.as_raw_fd(),
        members: procs
            .iter()
            .skip(1)
            .filter(|m| m.info.zombie.is_none())
            .count(),
    };
    let mut gate_fds = GateFds {
        _report: report,
        go: (go.0, Some(go.1)),
    };
    let ctx = Ctx {
        same_pids,
        children: &children,
        pipes: &pipes,
        shm: &shm,
        shared: &manifest.shared,
        stage2: &stage2_file,
        verbose,
        started: sel_started,
        gate,
    };
    let res = become_process(0, &mut procs, &ctx, &mut newpids);
    // Failed before the exec: closing `go` unwritten sends every waiting member away.
    gate_fds.go.1 = None;
    res
}

/// One memfd per shared memory object of the tree, filled with its checkpoint copy.
fn shared_objects(shared: &[SharedMemory], gen_dir: &Path) -> Result<Vec<OwnedFd>, RestoreError> {
    let mut out = Vec::new();
    for s in shared {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"torpor-shm".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_os("memfd_create"));
        }
        // SAFETY: just created, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let f = File::from(fd.try_clone().map_err(super::ioe("dup"))?);
        f.set_len(s.offset + s.len)
            .map_err(super::ioe("sizing shared memory"))?;
        let data = std::fs::read(gen_dir.join(&s.file))
            .map_err(super::ioe(gen_dir.join(&s.file).display().to_string()))?;
        if data.len() as u64 != s.len {
            return Err(RestoreError::NotCaptured {
                path: gen_dir.join(&s.file).display().to_string(),
            });
        }
        std::os::unix::fs::FileExt::write_all_at(&f, &data, s.offset)
            .map_err(super::ioe("filling shared memory"))?;
        out.push(fd);
    }
    Ok(out)
}

struct Ctx<'a> {
    /// Original pids (inside the namespace) or new ones.
    same_pids: bool,
    children: &'a BTreeMap<i32, Vec<usize>>,
    pipes: &'a Pipes,
    shm: &'a [OwnedFd],
    shared: &'a [SharedMemory],
    stage2: &'a File,
    verbose: bool,
    started: std::time::Instant,
    /// All-or-nothing start: members write `b'o'` (ready) or `b'f'` (failed) on
    /// `report`; the root answers each with one byte on `go` once every member is
    /// ready, or closes `go` unwritten (members then exit without running).
    gate: Gate,
}

/// The raw fds of the start gate (owned by `restore_tree`'s [`GateFds`]; close-on-exec).
#[derive(Clone, Copy)]
struct Gate {
    report_r: i32,
    report_w: i32,
    go_r: i32,
    go_w: i32,
    /// Members other than the root that will report (zombies do not).
    members: usize,
}

/// Owns the gate's pipes in the root.
struct GateFds {
    _report: (OwnedFd, OwnedFd),
    go: (OwnedFd, Option<OwnedFd>),
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os("pipe2 (restore gate)"));
    }
    // SAFETY: both fds were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One byte to `fd`, retried on EINTR; false if it could not be written.
fn put_byte(fd: i32, b: u8) -> bool {
    loop {
        // SAFETY: writes one byte from a local into an fd of ours.
        let n = unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) };
        if n == 1 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return false;
    }
}

/// One byte from `fd`, retried on EINTR; None at end of file or on error.
fn get_byte(fd: i32) -> Option<u8> {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a local from an fd of ours.
        let n = unsafe { libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
        if n == 1 {
            return Some(b);
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

fn children_of(procs: &[Member]) -> BTreeMap<i32, Vec<usize>> {
    let mut c: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, m) in procs.iter().enumerate().skip(1) {
        c.entry(m.info.ppid).or_default().push(i);
    }
    for v in c.values_mut() {
        v.sort_by_key(|&i| procs[i].info.pid);
    }
    c
}

/// Refuses process groups and sessions that cannot be rebuilt by forking in tree order:
/// each must be the process's own, its parent's, or (groups) one led by a process
/// created before it.
fn check_groups(procs: &[Member]) -> Result<(), RestoreError> {
    let by_pid: HashMap<i32, &ManifestProcess> =
        procs.iter().map(|m| (m.info.pid, &m.info)).collect();
    let children = children_of(procs);
    let mut order: Vec<i32> = Vec::new();
    let mut stack = vec![procs[0].info.pid];
    while let Some(p) = stack.pop() {
        order.push(p);
        if let Some(c) = children.get(&p) {
            stack.extend(c.iter().rev().map(|&i| procs[i].info.pid));
        }
    }
    if order.len() != procs.len() {
        return Err(RestoreError::Io {
            what: "process tree".into(),
            source: std::io::Error::other("the manifest's parent links do not form one tree"),
        });
    }
    for (k, &pid) in order.iter().enumerate().skip(1) {
        let p = by_pid[&pid];
        let parent = by_pid[&p.ppid];
        let bad = |what: &str| RestoreError::Io {
            what: format!("process {pid}"),
            source: std::io::Error::other(format!(
                "its {what} cannot be recreated (its leader is not in the checkpointed tree)"
            )),
        };
        if p.sid != p.pid && p.sid != parent.sid {
            return Err(bad("session"));
        }
        let leader_before =
            order[..k].contains(&p.pgid) && by_pid.get(&p.pgid).is_some_and(|l| l.sid == p.sid);
        if p.pgid != p.pid && p.pgid != parent.pgid && !leader_before {
            return Err(bad("process group"));
        }
    }
    Ok(())
}

/// Session and process group as recorded (the root only when it led them). With new
/// pids a group is looked up in `newpids` (old pid -> new pid of the processes created
/// before this one on its line of ancestors and their earlier children); a group whose
/// leader is not there is left as inherited (best effort).
fn set_groups(p: &ManifestProcess, root: bool, newpids: &[(i32, i32)]) {
    let pgid = newpids
        .iter()
        .find(|m| m.0 == p.pgid)
        .map_or(p.pgid, |m| m.1);
    // SAFETY: setsid/setpgid on ourselves.
    unsafe {
        if p.sid == p.pid {
            libc::setsid();
        } else if p.pgid == p.pid {
            libc::setpgid(0, 0);
        } else if !root && pgid != libc::getpgrp() {
            libc::setpgid(0, pgid);
        }
    }
}

/// Ends this process the way the zombie ended (a wait status). Drops every capability
/// first: a zombie keeps its credentials, and the restored tree (which has none) must be
/// allowed to read its exit status in /proc at the next checkpoint.
fn exit_like(status: i32) -> ! {
    #[repr(C)]
    struct Hdr {
        version: u32,
        pid: i32,
    }
    let h = Hdr {
        version: 0x2008_0522,
        pid: 0,
    };
    let d = [0u32; 6];
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL, then capset with the v3 header and zeroed sets.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        libc::syscall(libc::SYS_capset, &h as *const Hdr, d.as_ptr());
    }
    let sig = status & 0x7f;
    if sig != 0 && sig != 0x7f {
        // SAFETY: no core dump, default action, unblocked, then raised.
        unsafe {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
    }
    // SAFETY: ends this process at once (no atexit handlers of the restorer).
    unsafe { libc::_exit((status >> 8) & 0xff) }
}

/// The root, ready itself: waits until every member said it is ready, then lets them
/// all go. A member that failed (or died without a word) fails the whole restore.
fn wait_for_members(ctx: &Ctx) -> Result<(), RestoreError> {
    let g = ctx.gate;
    // SAFETY: the root's own copy of the report write end; members hold theirs until
    // they report, so end of file means someone died without reporting.
    unsafe { libc::close(g.report_w) };
    let mut ready = 0;
    while ready < g.members {
        match get_byte(g.report_r) {
            Some(b'o') => ready += 1,
            _ => {
                return Err(RestoreError::Io {
                    what: format!(
                        "restoring the process tree ({ready} of {} other processes ready)",
                        g.members
                    ),
                    source: std::io::Error::other(
                        "a process of the tree could not be restored (said above); none runs",
                    ),
                })
            }
        }
    }
    let go = vec![b'g'; g.members];
    let mut done = 0;
    while done < go.len() {
        // SAFETY: writes from a buffer we own into the gate pipe.
        let n = unsafe {
            libc::write(
                g.go_w,
                go[done..].as_ptr() as *const libc::c_void,
                go.len() - done,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return Err(last_os("starting the restored tree"));
        }
        done += n as usize;
    }
    Ok(())
}

/// Creates this process's children (recursively), then execs stage 2 as process `idx`.
fn become_process(
    idx: usize,
    procs: &mut [Member],
    ctx: &Ctx,
    newpids: &mut Vec<(i32, i32)>,
) -> Result<std::convert::Infallible, RestoreError> {
    let me = procs[idx].info.pid;
    for &c in ctx.children.get(&me).map(Vec::as_slice).unwrap_or(&[]) {
        let want = procs[c].info.pid;
        let ca = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: if ctx.same_pids {
                &want as *const i32 as u64
            } else {
                0
            },
            set_tid_size: ctx.same_pids as u64,
            ..Default::default()
        };
        // SAFETY: fork-like clone3 (no CLONE_VM, no new stack) with set_tid, in a
        // single-threaded process.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &ca as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid < 0 {
            return Err(RestoreError::Io {
                what: format!("creating process {want}"),
                source: std::io::Error::last_os_error(),
            });
        }
        if pid == 0 {
            // Only the root may hold the write end of `go`: its closing is the no.
            // SAFETY: closes this child's copy of a gate fd (never used in the child; the
            // OwnedFd that holds it in memory is never dropped here: the child execs or
            // exits).
            unsafe { libc::close(ctx.gate.go_w) };
            // SAFETY: getpid cannot fail.
            newpids.push((want, unsafe { libc::getpid() }));
            set_groups(&procs[c].info, false, newpids);
            if let Some(status) = procs[c].info.zombie {
                exit_like(status);
            }
            let err = match become_process(c, procs, ctx, newpids) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            eprintln!("torpor-restore: process {want}: {err}");
            put_byte(ctx.gate.report_w, b'f');
            // SAFETY: ends this child of the restorer.
            unsafe { libc::_exit(127) };
        }
        newpids.push((want, pid as i32));
        if procs[c].info.zombie.is_some() {
            // SAFETY: waits, without reaping, until the child is a zombie.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child.
            unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
        }
    }
    let Some((reader, meta, dir)) = procs[idx].image.take() else {
        return Err(RestoreError::NoImage(PathBuf::from(format!(
            "process {me}"
        ))));
    };
    let files = prepare_process(&meta, &dir, ctx.pipes, ctx.verbose)?;
    let maps: Vec<ShmMap> = ctx
        .shared
        .iter()
        .zip(ctx.shm)
        .flat_map(|(s, fd)| {
            s.members.iter().filter(|m| m.0 == me).map(move |m| ShmMap {
                start: m.1,
                fd,
                offset: s.offset,
            })
        })
        .collect();
    if idx == 0 {
        wait_for_members(ctx)?;
    } else {
        put_byte(ctx.gate.report_w, b'o');
        // SAFETY: this member is done reporting; closing its copy lets the root see end
        // of file once every member has reported or died.
        unsafe { libc::close(ctx.gate.report_w) };
        if get_byte(ctx.gate.go_r) != Some(b'g') {
            // Another process of the tree failed (it said why): run nothing.
            // SAFETY: ends this child of the restorer before it becomes the program.
            unsafe { libc::_exit(127) };
        }
    }
    let (image_file, _) = reader.into_parts();
    Err(exec_stage2(
        &meta,
        image_file,
        ctx.stage2,
        files,
        &maps,
        ctx.same_pids,
        ctx.verbose,
        &dir,
        ctx.started,
    ))
}
