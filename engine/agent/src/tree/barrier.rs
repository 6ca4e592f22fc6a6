//! The round file, the futex barriers of one tree round (a shared page in the pending
//! generation), and the marker files that report each writer's end.

use super::*;

/// Writes the round file: the id the members get with the request signal and the
/// pending generation directory.
pub fn write_round(dir: &Path, id: i32, tmp: &Path, groups: &[ShmGroup]) -> std::io::Result<()> {
    let t = dir.join(format!(".tree-round-{}", sys::getpid()));
    let mut body = format!("{id}\n").into_bytes();
    body.extend_from_slice(tmp.as_os_str().as_bytes());
    body.push(b'\n');
    // The first member of each shared memory group copies it.
    for (i, g) in groups.iter().enumerate() {
        let (pid, start) = g.members[0];
        body.extend_from_slice(format!("shm {pid} {start} {} {i}\n", g.len).as_bytes());
    }
    std::fs::write(&t, body)?;
    std::fs::rename(&t, dir.join(ROUND_FILE))
}

/// Reads the round file of the root's directory: (id, pending directory).
pub fn read_round(dir: &Path) -> Option<(i32, PathBuf)> {
    let b = std::fs::read(dir.join(ROUND_FILE)).ok()?;
    let mut lines = b.split(|&c| c == b'\n');
    let id = std::str::from_utf8(lines.next()?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let tmp = lines.next()?;
    Some((id, PathBuf::from(std::ffi::OsStr::from_bytes(tmp))))
}

/// Marker files in the pending generation's directory (barriers between processes).
/// Pause-safe: raw system calls, names built before the pause.
pub struct Marks {
    pub dir: i32,
}

/// NUL-terminated marker name `.<what>-<pid>`.
pub fn mark_name(what: &str, pid: i32) -> CString {
    CString::new(format!(".{what}-{pid}")).unwrap_or_default()
}

impl Marks {
    pub fn open(p: &Path) -> Option<Marks> {
        let c = CString::new(p.as_os_str().as_bytes()).ok()?;
        let fd = sys_open(c.as_bytes_with_nul(), libc::O_RDONLY | libc::O_DIRECTORY);
        (fd >= 0).then_some(Marks { dir: fd })
    }

    pub fn has(&self, name: &CString) -> bool {
        // SAFETY: faccessat with a NUL-terminated name.
        unsafe { libc::faccessat(self.dir, name.as_ptr(), libc::F_OK, 0) == 0 }
    }
}

/// Name of the barrier page in the pending generation directory.
const BARRIER_FILE: &str = ".barrier";

/// Phases the root publishes in [`Shared::phase`].
pub const PH_STOP: u32 = 1;
pub const PH_GO: u32 = 2;
pub const PH_RELEASE: u32 = 3;

/// How far a member got ([`Shared::state`] of its slot).
pub const ST_READY: u32 = 1;
pub const ST_STOPPED: u32 = 2;
pub const ST_FORKED: u32 = 3;

/// The words of one round's barrier page.
#[repr(C)]
pub struct Shared {
    /// What the root allows: 0 (prepare), [`PH_STOP`], [`PH_GO`], [`PH_RELEASE`].
    pub phase: AtomicU32,
    /// Set by any process that abandons the round.
    pub abort: AtomicU32,
    /// Bumped (and woken) by a member at each step: the root waits on it.
    pub progress: AtomicU32,
    /// Slots in use: every process of the tree the root listed, in the order found
    /// (members that joined during the round last).
    pub count: AtomicU32,
    /// The pid of each slot.
    pub pids: [AtomicI32; MAX_TREE],
    /// How far each slot's member got ([`ST_READY`], [`ST_STOPPED`], [`ST_FORKED`]).
    pub state: [AtomicU32; MAX_TREE],
    /// The pid of each member's writer once forked (it outlives a member that exits
    /// after the release and reports for it).
    pub writer: [AtomicI32; MAX_TREE],
}

const _: () = assert!(std::mem::size_of::<Shared>() <= 4096);

/// The barriers of one tree round: a page of the file `<pending>/.barrier` mapped
/// `MAP_SHARED` by every process of the tree, with futexes on its words. The mapping is
/// `MADV_DONTFORK`: neither the writers nor the program's fork children inherit it, so
/// it never appears in an image. Waits time out (a process that died or stopped
/// answering fails the round, never hangs it). Pause-safe after [`Barrier::create`] /
/// [`Barrier::open`]: atomics and raw system calls only.
pub struct Barrier {
    page: *const Shared,
}

impl Barrier {
    fn map(tmp: &Path, create: bool) -> Option<Barrier> {
        let c = CString::new(tmp.join(BARRIER_FILE).as_os_str().as_bytes()).ok()?;
        let flags = if create {
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW
        } else {
            libc::O_RDWR | libc::O_NOFOLLOW
        };
        // SAFETY: open with a NUL-terminated path and a mode for a new file.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
        if fd < 0 {
            return None;
        }
        // SAFETY: ftruncate of the file we just created (zero-filled page).
        if create && unsafe { libc::ftruncate(fd, 4096) } != 0 {
            close(fd);
            return None;
        }
        // SAFETY: a fresh shared mapping of one page of our file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        close(fd);
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: our own mapping; keeps it out of every fork child (writers included).
        unsafe { libc::madvise(p, 4096, libc::MADV_DONTFORK) };
        Some(Barrier {
            page: p as *const Shared,
        })
    }

    /// The root: creates the page (zeroed) in the pending directory.
    pub fn create(tmp: &Path) -> Option<Barrier> {
        Barrier::map(tmp, true)
    }

    /// A member: maps the root's page.
    pub fn open(tmp: &Path) -> Option<Barrier> {
        Barrier::map(tmp, false)
    }

    pub fn words(&self) -> &Shared {
        // SAFETY: the page stays mapped until `unmap`, which consumes the barrier.
        unsafe { &*self.page }
    }

    /// The root: lists `pid` in a new slot; `None` when the page is full.
    pub fn add(&self, pid: i32) -> Option<usize> {
        let w = self.words();
        let i = w.count.load(SeqCst) as usize;
        if i >= MAX_TREE {
            return None;
        }
        w.pids[i].store(pid, SeqCst);
        w.state[i].store(0, SeqCst);
        w.writer[i].store(0, SeqCst);
        w.count.store(i as u32 + 1, SeqCst);
        Some(i)
    }

    /// A member: the slot the root gave `pid`.
    pub fn slot_of(&self, pid: i32) -> Option<usize> {
        let w = self.words();
        let n = (w.count.load(SeqCst) as usize).min(MAX_TREE);
        (0..n).find(|&i| w.pids[i].load(SeqCst) == pid)
    }

    /// Publishes `phase` and wakes every waiter.
    pub fn set_phase(&self, phase: u32) {
        let w = self.words();
        w.phase.store(phase, SeqCst);
        sys::futex_wake_shared(&w.phase);
    }

    /// A member: slot `slot` reached `state`; wakes the root.
    pub fn arrive(&self, slot: usize, state: u32) {
        let w = self.words();
        w.state[slot].fetch_max(state, SeqCst);
        w.progress.fetch_add(1, SeqCst);
        sys::futex_wake_shared(&w.progress);
    }

    /// Abandons the round: every waiter wakes and fails.
    pub fn abort(&self) {
        let w = self.words();
        w.abort.store(1, SeqCst);
        for x in [&w.phase, &w.progress] {
            sys::futex_wake_shared(x);
        }
    }

    /// Waits until `word >= want`. Fails when the round is abandoned, when one of the
    /// processes `watch` is gone, when `failed_file` (NUL-terminated, may be empty)
    /// appears, or after the timeout.
    pub fn wait(
        &self,
        word: &AtomicU32,
        want: u32,
        watch: &[i32],
        failed_file: &[u8],
    ) -> Result<(), &'static str> {
        let t0 = sys::now_ns();
        let abort = &self.words().abort;
        loop {
            if abort.load(SeqCst) != 0 {
                return Err(ABANDONED);
            }
            let v = word.load(SeqCst);
            if v >= want {
                return Ok(());
            }
            if sys::now_ns() - t0 > BARRIER_TIMEOUT_NS {
                return Err("a process of the tree did not answer within 20 s");
            }
            sys::futex_wait_shared(word, v, SLICE_NS);
            if word.load(SeqCst) != v || abort.load(SeqCst) != 0 {
                continue;
            }
            // Nothing moved for a while: is everybody still there?
            for &p in watch {
                // SAFETY: kill with signal 0 only checks existence.
                if unsafe { libc::kill(p, 0) } != 0 || proc_state(p) == Some(b'Z') {
                    return Err(EXITED);
                }
            }
            if failed_file.len() > 1 && exists(failed_file) {
                return Err(ABANDONED);
            }
        }
    }

    /// Unmaps the page (not in a restored process: the page was never in the image).
    pub fn unmap(self) {
        // SAFETY: our own mapping, not used after this.
        unsafe { libc::munmap(self.page as *mut libc::c_void, 4096) };
    }
}

/// Whether the NUL-terminated `path` exists (pause-safe).
pub(super) fn exists(path: &[u8]) -> bool {
    // SAFETY: faccessat with a NUL-terminated path.
    unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr() as *const libc::c_char,
            libc::F_OK,
            0,
        ) == 0
    }
}

/// How long a barrier waits before it checks that the processes it waits for live.
pub(super) const SLICE_NS: u64 = 10_000_000;

/// The pending directory of a tree round, opened for markers and pipe data.
pub fn open_dirs(tmp: &Path) -> Option<(Marks, i32)> {
    let marks = Marks::open(tmp)?;
    let pipes = tmp.join("pipes");
    let _ = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&pipes);
    let c = CString::new(pipes.as_os_str().as_bytes()).ok()?;
    let fd = sys_open(c.as_bytes_with_nul(), libc::O_RDONLY | libc::O_DIRECTORY);
    if fd < 0 {
        close(marks.dir);
        return None;
    }
    Some((marks, fd))
}
