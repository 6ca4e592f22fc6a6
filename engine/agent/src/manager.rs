//! The manager thread: waits for triggers (interval, request signal), pauses every thread,
//! snapshots fds, forks the writer child, releases the program, and reports the result.
//! In a restored process it is also the thread that finishes the restore.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

use torpor_engine::records::RestoreInfo;
use torpor_image::store::{Pending, Store};

use crate::fds::{copy_path, for_each_num, snapshot_fds, snapshot_locks, FDS};
use crate::park::{self, MAX_THREADS, PARKED, RELEASE, RESUMED, SLOT, THREADS};
use crate::prescan::{scan_shared_maps, scan_timers, snapshot_timers, unsupported_state};
use crate::writer::{child_main, ChildArgs, Parent, CHILD_ARGS, DURABLE};
use crate::{dirty, parent, sys, tree};

/// How long to wait for threads to park before giving up on a checkpoint.
const STOP_TIMEOUT_NS: u64 = 10_000_000_000;

/// Settings read from the environment at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub interval_ns: u64,
    pub keep: usize,
    /// Every this many generations one is full (1: incremental generations off).
    pub full_every: u32,
    pub attempt: u32,
    pub capture_limit: u64,
    pub verbose: bool,
    pub park_sig: i32,
    pub request_sig: i32,
    /// Running in a Slurm task (images are removed when the program ends normally).
    pub slurm: bool,
}

/// The job attempt this process belongs to (updated by a restore: the restored program
/// runs in a newer attempt and must fence its predecessor's writers).
pub static ATTEMPT: AtomicU32 = AtomicU32::new(0);
/// Set once the manager runs.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
pub static SLURM: AtomicBool = AtomicBool::new(false);
/// Set when SIGTERM arrived: the program is being stopped, keep its images.
pub static TERMINATING: AtomicBool = AtomicBool::new(false);
/// The program's image directory.
pub static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// A checkpoint round is in progress.
pub static BUSY: AtomicBool = AtomicBool::new(false);
/// The program is exiting: start no more rounds.
pub static EXITING: AtomicBool = AtomicBool::new(false);
/// pidfd of the running writer child, -1 if none.
pub static WRITER_PIDFD: AtomicI32 = AtomicI32::new(-1);

/// Request counter bumped by the request signal handler, and the id it carried.
pub static REQ: AtomicU32 = AtomicU32::new(0);
pub static REQ_ID: AtomicI32 = AtomicI32::new(0);
/// `si_code` of the newest request: `SI_QUEUE` from `torpor checkpoint --pid` (sigqueue),
/// `SI_USER` from a plain kill such as `scancel --signal`.
pub static REQ_CODE: AtomicI32 = AtomicI32::new(0);
/// Pid of this process when it is a tree's root (its fork children join its tree).
pub static ROOT_SELF: AtomicI32 = AtomicI32::new(0);
/// Tid of the manager thread.
pub static MANAGER_TID: AtomicI32 = AtomicI32::new(0);
/// The agent's writable segments (.data/.bss), found at start.
pub static WSEG_START: AtomicU64 = AtomicU64::new(0);
pub static WSEG_END: AtomicU64 = AtomicU64::new(0);
/// Set after a restore into a fresh pid namespace.
pub(crate) static IN_PIDNS: AtomicU32 = AtomicU32::new(0);

pub struct Cell<T>(pub(crate) UnsafeCell<T>);
// SAFETY: these buffers are used by the manager thread only (and by its forked child,
// which is a separate process).
unsafe impl<T> Sync for Cell<T> {}

static SIGNALLED: Cell<[i32; MAX_THREADS]> = Cell(UnsafeCell::new([0; MAX_THREADS]));

/// Filled by the restorer in a restored process.
#[unsafe(no_mangle)]
pub static TORPOR_RESTORE_INFO: Cell<RestoreInfo> = Cell(UnsafeCell::new(RestoreInfo {
    restored: 0,
    unmap: [[0; 2]; 4],
    same_pids: 0,
    attempt_plus1: 0,
}));

/// Outcome of one checkpoint round.
pub enum Outcome {
    Committed {
        generation: u64,
        path: PathBuf,
        pause_ns: u64,
        total_ns: u64,
    },
    Failed(String),
    Restored,
}

pub(crate) fn sys_open(path: &[u8], flags: i32) -> i32 {
    // SAFETY: path is NUL-terminated by every caller.
    unsafe {
        libc::open(
            path.as_ptr() as *const libc::c_char,
            flags | libc::O_CLOEXEC,
        )
    }
}

pub(crate) fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: closing an fd the agent opened.
        unsafe { libc::close(fd) };
    }
}

/// Signals every thread but the caller until all are parked or the timeout passes.
fn stop_all(task_fd: i32, sig: i32) -> Result<(), &'static str> {
    let me = sys::gettid();
    // SAFETY: manager-only buffer.
    let sig_list = unsafe { &mut *SIGNALLED.0.get() };
    let mut ns = 0usize;
    let t0 = sys::now_ns();
    loop {
        let mut newfound = false;
        let mut overflow = false;
        for_each_num(task_fd, |tid| {
            if tid == me || sig_list[..ns].contains(&tid) {
                return;
            }
            if ns >= MAX_THREADS - 1 {
                overflow = true;
                return;
            }
            if sys::tgkill(tid, sig) == 0 {
                sig_list[ns] = tid;
                ns += 1;
                newfound = true;
            }
        });
        if overflow {
            return Err("too many threads");
        }
        loop {
            let parked = PARKED.load(SeqCst) as usize;
            if parked >= ns {
                break;
            }
            // Threads that exited after being signalled will never park.
            let alive = sig_list[..ns]
                .iter()
                .filter(|&&t| sys::tgkill(t, 0) == 0)
                .count();
            let gone = ns - alive;
            if parked + gone >= ns && SLOT.load(SeqCst) == parked + 1 {
                break;
            }
            if sys::now_ns() - t0 > STOP_TIMEOUT_NS {
                return Err(
                    "a thread did not stop within 10 s (it may block the checkpoint signal)",
                );
            }
            sys::futex_wait(&PARKED, parked as u32, 5_000_000);
        }
        if !newfound {
            break;
        }
    }
    if SLOT.load(SeqCst) > MAX_THREADS {
        return Err("too many threads");
    }
    Ok(())
}

fn release() {
    RELEASE.store(park::GEN.load(SeqCst), SeqCst);
    sys::futex_wake(&RELEASE, i32::MAX);
}

/// Pauses here with all other threads parked: saves the manager's own context, then
/// forks the writer. Returns the writer's pid and pidfd, or `None` in a restored process.
/// Nothing after the `ctx_save` may depend on locals: in a restored process execution
/// continues from it with the stack as the writer child captured it.
#[inline(never)]
fn pause_point(slot: usize) -> Option<(i64, i32)> {
    let r = THREADS.slot(slot);
    // SAFETY: the manager owns `slot`.
    if park::ctx_save(unsafe { std::ptr::addr_of_mut!((*r).ctx) }) != 0 {
        return None;
    }
    let mut pidfd: i32 = -1;
    // SAFETY: a fork-like clone (no CLONE_VM, stack 0 = copy of ours). Exit signal 0, so
    // the program's wait(-1) never reaps our writer; CLONE_PIDFD gives us a handle.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PIDFD as u64,
            0u64,
            &mut pidfd as *mut i32,
            0u64,
            0u64,
        )
    };
    if pid == 0 {
        child_main();
    }
    Some((pid, pidfd))
}

/// In a restored process: wait for every thread to be back, drop the restorer, release.
fn finish_restore(nthreads: usize) {
    loop {
        let r = RESUMED.load(SeqCst);
        if r as usize + 1 >= nthreads {
            break;
        }
        sys::futex_wait(&RESUMED, r, 100_000_000);
    }
    // SAFETY: the restorer filled this before cloning threads; every thread has left its
    // code (they all reported RESUMED from inside the agent), so unmapping it is safe.
    unsafe {
        let ri = &mut *TORPOR_RESTORE_INFO.0.get();
        for [s, e] in ri.unmap {
            if e > s {
                libc::munmap(s as *mut libc::c_void, (e - s) as usize);
            }
        }
        IN_PIDNS.store(ri.same_pids as u32, SeqCst);
        // The write tracking of the original process is gone: the first checkpoint after
        // a restore is full.
        dirty::reset();
        parent::forget();
        // The image may have been taken on SIGTERM; this run has not been asked to stop.
        TERMINATING.store(false, SeqCst);
        if ri.attempt_plus1 > 0 {
            ATTEMPT.store((ri.attempt_plus1 - 1) as u32, SeqCst);
        }
        ri.restored = 0;
    }
    RESUMED.store(0, SeqCst);
    // With new pids, this process's pid changed.
    tree::OWN_PID.store(sys::getpid(), SeqCst);
    // Thread names are not restored; the tree root finds agents by this one's name.
    // SAFETY: PR_SET_NAME with a NUL-terminated name, for the calling thread.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"torpor-agent".as_ptr()) };
    release();
}

/// One checkpoint round.
pub fn checkpoint(cfg: &Config) -> Outcome {
    if let Some(why) = unsupported_state() {
        return Outcome::Failed(why);
    }
    if EXITING.load(SeqCst) {
        return Outcome::Failed("the program is exiting".into());
    }
    BUSY.store(true, SeqCst);
    let store = Store::new(&cfg.dir);
    let mut tries = 0;
    let out = loop {
        let out = match store.begin(ATTEMPT.load(SeqCst)) {
            Err(e) => Outcome::Failed(e.to_string()),
            Ok(pending) => match tree::RootRound::prepare(cfg, &pending) {
                Err(e) => {
                    pending.abort();
                    tree::forget_round_fds();
                    Outcome::Failed(e)
                }
                Ok(None) => {
                    let out = checkpoint_round(cfg, &store, pending, Role::Single);
                    tree::forget_round_fds();
                    out
                }
                Ok(Some(mut round)) => {
                    let mut out = checkpoint_round(cfg, &store, pending, Role::Root(&mut round));
                    if let Outcome::Failed(e) = &mut out {
                        if e.as_str() == tree::ABANDONED {
                            if let Some(why) = tree::member_failure(&cfg.dir) {
                                *e = format!("{e}: {why}");
                            }
                        } else {
                            *e = round.explain(e);
                        }
                    }
                    if !matches!(out, Outcome::Restored) {
                        round.close();
                    }
                    tree::forget_round_fds();
                    out
                }
            },
        };
        // A member was killed while stopped, or a new child shares memory the round
        // did not list: take the tree again a little later. (Processes that exit, exec
        // or fork during a round do not fail it: see `tree::RootRound`.)
        match &out {
            Outcome::Failed(e) if tries < 5 && tree::transient(e) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100 * tries));
            }
            _ => break out,
        }
    };
    BUSY.store(false, SeqCst);
    out
}

/// A member's part of the tree round `id` whose pending generation is `tmp`.
pub fn member_checkpoint(cfg: &Config, id: i32, tmp: &std::path::Path) -> Outcome {
    BUSY.store(true, SeqCst);
    let out = match tree::MemberRound::prepare(id, &cfg.dir, tmp, ATTEMPT.load(SeqCst)) {
        Err(e) => Outcome::Failed(e),
        Ok((mut round, pending)) => {
            let store = Store::new(tmp);
            let out = checkpoint_round(cfg, &store, pending, Role::Member(&mut round));
            if !matches!(out, Outcome::Restored) {
                round.finish(&out);
            }
            tree::forget_round_fds();
            out
        }
    };
    BUSY.store(false, SeqCst);
    out
}

/// Which part this process plays in a round.
pub enum Role<'a> {
    /// No descendants: the writer commits, as before trees.
    Single,
    Root(&'a mut tree::RootRound),
    Member(&'a mut tree::MemberRound),
}

impl Role<'_> {
    /// The round's own fds, never part of the image.
    fn extra_fds(&self) -> [i32; 3] {
        match self {
            Role::Single => [-1, -1, -1],
            Role::Root(r) => [r.marks.dir, r.pipes_fd, r.proc_fd],
            Role::Member(m) => [m.marks.dir, m.pipes_fd, -1],
        }
    }

    fn pipes_fd(&self) -> i32 {
        self.extra_fds()[1]
    }

    /// Before the pause: wait until every process of the tree is ready to stop.
    fn before_pause(&mut self) -> Result<(), &'static str> {
        match self {
            Role::Single => Ok(()),
            Role::Root(r) => r.before_pause(),
            Role::Member(m) => m.before_pause(),
        }
    }

    /// With this process stopped: wait until the whole tree is.
    fn after_stop(&mut self) -> Result<(), &'static str> {
        match self {
            Role::Single => Ok(()),
            Role::Root(r) => r.after_stop(),
            Role::Member(m) => m.after_stop(),
        }
    }

    /// With this process's writer forked: wait until every process's is.
    fn after_fork(&mut self) -> Result<(), &'static str> {
        match self {
            Role::Single => Ok(()),
            Role::Root(r) => r.after_fork(),
            Role::Member(m) => m.after_fork(),
        }
    }

    fn abort(&self) {
        match self {
            Role::Single => {}
            Role::Root(r) => r.abort(),
            Role::Member(m) => m.abort(),
        }
    }
}

/// The calling thread's stack (the manager's), as the thread library knows it; the
/// pages around the current stack pointer if it cannot tell.
fn own_stack() -> (u64, u64) {
    let probe = 0u8;
    let here = std::hint::black_box(&probe) as *const u8 as u64;
    let fallback = ((here & !0xf_ffff) - (8 << 20), (here | 0xf_ffff) + 1);
    // SAFETY: pthread_attr_t is plain data; getattr_np fills it for our own thread, and
    // it is destroyed after use. Called outside the pause.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return fallback;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        let (a, b) = (
            addr as u64 & !0xfff,
            (addr as u64 + size as u64 + 0xfff) & !0xfff,
        );
        if r != 0 || !(a <= here && here < b) {
            return fallback;
        }
        // The guard page below is not part of the stack but is harmless to avoid.
        (a.saturating_sub(0x1000), b)
    }
}

fn checkpoint_round(cfg: &Config, store: &Store, pending: Pending, mut role: Role) -> Outcome {
    // Write tracking for incremental generations (ADR 0009): every round scans (and so
    // starts a new interval); only a single process's image may be incremental.
    let track = cfg.full_every > 1 && dirty::prepare();
    let parent = if track && matches!(role, Role::Single) {
        parent::incremental_parent(cfg, store)
    } else {
        None
    };
    let files_dir = pending.path().join("files");
    if let Err(e) = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&files_dir)
    {
        pending.abort();
        return Outcome::Failed(format!("{}: {e}", files_dir.display()));
    }
    let files_c = CString::new(files_dir.as_os_str().as_bytes()).unwrap_or_default();
    let files_fd = sys_open(
        files_c.as_bytes_with_nul(),
        libc::O_RDONLY | libc::O_DIRECTORY,
    );
    let task_fd = sys_open(b"/proc/self/task\0", libc::O_RDONLY | libc::O_DIRECTORY);
    let fd_dir = sys_open(b"/proc/self/fd\0", libc::O_RDONLY | libc::O_DIRECTORY);
    let mut pipe = [-1i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
    let mut gate = [-1i32; 2];
    if !matches!(role, Role::Single) {
        // SAFETY: pipe2 writes two fds into the array.
        unsafe { libc::pipe2(gate.as_mut_ptr(), libc::O_CLOEXEC) };
    }
    let (ws, we) = (WSEG_START.load(SeqCst), WSEG_END.load(SeqCst));
    let mut patch = vec![0u8; (we - ws) as usize];
    // Never tracked: the agent's own memory, written after the scan or freed after the
    // round (a buffer mapped again at the same place next round would make its range
    // unclean every time).
    let avoid = {
        let [d, m] = dirty::own_ranges();
        let p = patch.as_ptr() as u64;
        let patch_pages = (p & !0xfff, (p + patch.len() as u64 + 0xfff) & !0xfff);
        [(ws, we), own_stack(), d, m, patch_pages]
    };
    if track {
        dirty::protect_new(&avoid);
    }
    let mut timers = scan_timers();
    let shared_maps = scan_shared_maps();
    let mut args = ChildArgs {
        pending: &pending,
        nthreads: 0,
        nfds: 0,
        timers: std::ptr::null(),
        ntimers: 0,
        nlocks: 0,
        itimers: [(0, 0); 3],
        patch: if patch.is_empty() {
            std::ptr::null_mut()
        } else {
            patch.as_mut_ptr()
        },
        patch_len: patch.len(),
        pid: sys::getpid(),
        // SAFETY: getppid has no preconditions.
        ppid: unsafe { libc::getppid() },
        time_unix: 0.0,
        attempt: ATTEMPT.load(SeqCst),
        err_fd: pipe[1],
        capture_limit: cfg.capture_limit,
        commit: matches!(role, Role::Single),
        gate,
        incr: parent
            .as_ref()
            .map_or(std::ptr::null(), |p| p as *const Parent),
    };
    let [extra0, extra1, extra2] = role.extra_fds();
    tree::note_round_fds(&[
        files_fd, task_fd, fd_dir, pipe[0], pipe[1], gate[0], gate[1], extra0, extra1, extra2,
    ]);
    let [uffd, pagemap] = dirty::fds();
    let agent_fds = [
        files_fd, task_fd, fd_dir, pipe[0], pipe[1], gate[0], gate[1], extra0, extra1, extra2,
        uffd, pagemap,
    ];
    let cleanup = |pending: Pending| {
        for fd in &agent_fds[..7] {
            close(*fd);
        }
        pending.abort();
    };
    if files_fd < 0 || task_fd < 0 || fd_dir < 0 || pipe[0] < 0 {
        cleanup(pending);
        return Outcome::Failed("cannot open /proc/self or the generation directory".into());
    }

    if let Err(why) = role.before_pause() {
        role.abort();
        cleanup(pending);
        return Outcome::Failed(why.into());
    }

    // ---- pause ----
    let t0 = sys::now_ns();
    if let Role::Root(r) = &mut role {
        r.pause_begins();
    }
    PARKED.store(0, SeqCst);
    RESUMED.store(0, SeqCst);
    SLOT.store(0, SeqCst);
    park::GEN.fetch_add(1, SeqCst);
    let my_slot = SLOT.fetch_add(1, SeqCst);
    if let Err(why) = stop_all(task_fd, cfg.park_sig) {
        role.abort();
        release();
        cleanup(pending);
        return Outcome::Failed(why.into());
    }
    // Pause breakdown for TORPOR_DEBUG_TIMING: threads stopped, fds and pipes
    // snapshotted, locks/shared maps/timers snapshotted, forked, released.
    let mut marks = [0u64; 5];
    marks[0] = sys::now_ns();
    // SAFETY: my_slot is the manager's own slot.
    unsafe { park::fill_thread(THREADS.slot(my_slot)) };
    args.nthreads = SLOT.load(SeqCst).min(MAX_THREADS);
    args.nfds = snapshot_fds(fd_dir, &agent_fds, files_fd, cfg.capture_limit);
    if args.nfds > crate::fds::MAX_FDS {
        role.abort();
        release();
        cleanup(pending);
        return Outcome::Failed(format!(
            "more than {} open files: not supported yet",
            crate::fds::MAX_FDS
        ));
    }
    if matches!(role, Role::Single) {
        // SAFETY: filled just above; manager-only.
        tree::probe_no_writers(unsafe { &mut (&mut *FDS.0.get())[..args.nfds] });
    }
    // SAFETY: filled just above; manager-only.
    let snapped = unsafe { &(&*FDS.0.get())[..args.nfds] };
    if matches!(role, Role::Single) {
        if let Err(fd) = tree::pipes_self_contained(snapped) {
            release();
            cleanup(pending);
            return Outcome::Failed(format!(
                "fd {fd} is a pipe whose other end is outside the process (and it has no checkpointed children); such pipes are not supported"
            ));
        }
    }
    let pipes_ok = tree::tcp_flushed(snapped).and_then(|()| role.after_stop().map_err(|e| (-1, e)));
    let pipes_ok = pipes_ok.and_then(|()| {
        if !matches!(role, Role::Single) {
            // With the whole tree stopped.
            // SAFETY: manager-only table; no reference into it is used across this call.
            tree::probe_no_writers(unsafe { &mut (&mut *FDS.0.get())[..args.nfds] });
            // SAFETY: as above.
            tree::probe_hangup(unsafe { &mut (&mut *FDS.0.get())[..args.nfds] });
        }
        // SAFETY: manager-only table, read again after the probe above.
        let snapped = unsafe { &(&*FDS.0.get())[..args.nfds] };
        if matches!(role, Role::Single) {
            // Pipes with both ends here: save their data next to the image.
            tree::save_own_pipes(snapped, files_fd)
        } else {
            tree::save_pipes(snapped, role.pipes_fd())
        }
    });
    if let Err(why) = pipes_ok {
        role.abort();
        release();
        cleanup(pending);
        return Outcome::Failed(tree::fd_error_text(why));
    }
    marks[1] = sys::now_ns();
    // SAFETY: filled just above; manager-only.
    for f in unsafe { &(&*FDS.0.get())[..args.nfds] } {
        if f.fd > 2 && f.mode & libc::S_IFMT == libc::S_IFREG {
            args.nlocks = snapshot_locks(f.fd, args.nlocks);
        }
    }
    for (path, name) in &shared_maps {
        copy_path(path, files_fd, name, None);
    }
    args.itimers = snapshot_timers(&mut timers);
    args.timers = timers.as_ptr();
    args.ntimers = timers.len();
    args.time_unix = sys::unix_time();
    if track {
        // Last before the fork: nothing of the program's memory may change after it.
        dirty::scan_and_register(&avoid);
    }
    CHILD_ARGS.store(&mut args, SeqCst);
    marks[2] = sys::now_ns();
    let forked = pause_point(my_slot);
    marks[3] = sys::now_ns();
    let Some((pid, pidfd)) = forked else {
        // Restored process: the fds above belong to the dead original; forget them.
        let n = SLOT.load(SeqCst).min(MAX_THREADS);
        std::mem::forget(pending);
        std::mem::forget(patch);
        std::mem::forget(timers);
        std::mem::forget(shared_maps);
        std::mem::forget(parent);
        crate::fds::refresh_launch();
        tree::forget_round_fds();
        finish_restore(n);
        return Outcome::Restored;
    };
    if let Role::Member(m) = &role {
        m.writer_forked(pid);
    }
    let barrier = role.after_fork();
    if barrier.is_err() {
        role.abort();
        if pid > 0 {
            // SAFETY: pidfd_send_signal to our own writer: the round is abandoned.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    libc::SIGKILL,
                    0usize,
                    0u32,
                )
            };
        }
    }
    release();
    let pause_ns = sys::now_ns() - t0;
    marks[4] = t0 + pause_ns;
    WRITER_PIDFD.store(pidfd, SeqCst);
    // ---- running again ----
    close(gate[0]);
    close(gate[1]); // the writer starts
    close(pipe[1]);
    let mut durable_ns = None;
    let result = if pid < 0 {
        Err(format!("fork of the writer failed: errno {}", sys::errno()))
    } else {
        // The writer sends DURABLE or an error message, then exits; the read returns at
        // the first of those (or at its exit).
        let mut msg = [0u8; 1024];
        let n = loop {
            // SAFETY: reads into our local buffer.
            let n =
                unsafe { libc::read(pipe[0], msg.as_mut_ptr() as *mut libc::c_void, msg.len()) };
            if n >= 0 || sys::errno() != libc::EINTR {
                break n;
            }
        };
        if n == 1 && msg[0] == DURABLE {
            durable_ns = Some(sys::now_ns() - t0);
        }
        let mut info: libc::siginfo_t =
            // SAFETY: plain C struct, zero is a valid bit pattern.
            unsafe { std::mem::zeroed() };
        // SAFETY: waits on our own child through its pidfd.
        unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL,
            )
        };
        WRITER_PIDFD.store(-1, SeqCst);
        close(pidfd);
        // SAFETY: filled by waitid for an exited child.
        let status = unsafe { info.si_status() };
        if info.si_code == libc::CLD_EXITED && status == 0 {
            Ok(())
        } else if n > 0 {
            Err(String::from_utf8_lossy(&msg[..n as usize]).into_owned())
        } else {
            Err(format!(
                "the writer died (code {}, status {status})",
                info.si_code
            ))
        }
    };
    CHILD_ARGS.store(std::ptr::null_mut(), SeqCst);
    if std::env::var_os("TORPOR_DEBUG_TIMING").is_some() {
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
        eprintln!(
            "torpor: round timing (ms): pause {:.1} = stop threads {:.1} + fds/pipes {:.1} + \
             locks/timers {:.1} + fork {:.1} + resume {:.1}; image durable at {}, writer exited at {:.1}",
            ms(t0, marks[4]),
            ms(t0, marks[0]),
            ms(marks[0], marks[1]),
            ms(marks[1], marks[2]),
            ms(marks[2], marks[3]),
            ms(marks[3], marks[4]),
            durable_ns.map_or("-".into(), |d| format!("{:.1}", d as f64 / 1e6)),
            ms(t0, sys::now_ns()),
        );
    }
    for fd in [files_fd, task_fd, fd_dir, pipe[0]] {
        close(fd);
    }
    let generation = pending.generation();
    let result = match barrier {
        Err(why) => Err(why.to_string()),
        Ok(()) => match (result, &mut role) {
            (Ok(()), Role::Root(r)) => r.commit(&pending),
            (other, _) => other,
        },
    };
    match result {
        Ok(()) if matches!(role, Role::Member(_)) => {
            parent::forget();
            Outcome::Committed {
                generation,
                path: pending.path().to_path_buf(),
                pause_ns,
                total_ns: sys::now_ns() - t0,
            }
        }
        Err(e) if matches!(role, Role::Member(_)) => {
            parent::forget();
            Outcome::Failed(e)
        }
        Ok(()) => {
            if track && matches!(role, Role::Single) {
                // The next image builds on this one.
                parent::committed(store, generation);
            } else {
                parent::forget();
            }
            // A single process's writer committed the generation itself: it was durable
            // when the writer said so (a tree's root commits here, just now).
            let total_ns = match (&role, durable_ns) {
                (Role::Single, Some(d)) => d,
                _ => sys::now_ns() - t0,
            };
            let _ = store.prune(cfg.keep);
            Outcome::Committed {
                generation,
                path: store.gen_dir(generation),
                pause_ns,
                total_ns,
            }
        }
        Err(e) => {
            parent::forget();
            role.abort();
            pending.abort();
            Outcome::Failed(e)
        }
    }
}
