//! Fixed-size records filled while the program is paused (no allocation possible then).

/// Callee-saved registers, stack pointer and return address saved inside the checkpoint
/// signal handler. Jumping back here (with eax = 1) resumes the thread in the handler,
/// whose return runs `rt_sigreturn` on the kernel's frame with the full register state.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MiniCtx {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
}

/// One thread's kernel-side state, filled by the thread itself in the handler.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRec {
    pub tid: i32,
    pub is_main: i32,
    pub ctx: MiniCtx,
    pub fs_base: u64,
    pub gs_base: u64,
    pub clear_tid: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq_addr: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub name: [u8; 16],
}

/// One open fd as seen while the program was paused. Offsets and sizes must be taken
/// then: the program goes on writing through the same open file descriptions.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FdSnap {
    pub fd: i32,
    /// `F_GETFL` status flags.
    pub flags: i32,
    /// `F_GETFD` (FD_CLOEXEC).
    pub fdflags: i32,
    /// st_mode of the target.
    pub mode: u32,
    pub offset: i64,
    pub size: i64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// Set when the contents were copied into the generation during the pause
    /// (`files/fd-<fd>`); -1 when the copy was refused (over the site limit or failed).
    pub captured: i32,
    /// For captured files: which SQLite sidecars existed at the pause (bit 0 `-journal`,
    /// bit 1 `-wal`, bit 2 `-shm`).
    pub sidecars: u32,
    /// A pipe read end that was empty with no writer left anywhere (reads give EOF).
    pub no_writers: u32,
    /// fd 0-2 of a tree member opened inside the tree (a shell redirection), not the
    /// launch's stdio it inherited from the root: restored like any other fd.
    pub internal: u32,
    /// A copy of the launch's stdio fd `launch - 1` (0: not one): restored as a copy of
    /// the new launch's.
    pub launch: u32,
}

/// Names of the sidecar files checked next to a captured file (SQLite's).
pub const SIDECARS: [&str; 3] = ["-journal", "-wal", "-shm"];

/// Filled by the restorer inside the restored process's agent: what to unmap once
/// every thread has left the restorer's code.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreInfo {
    /// Non-zero after a restore, until the agent has cleaned up.
    pub restored: u64,
    /// Address ranges of the restorer to unmap: (start, end) pairs.
    pub unmap: [[u64; 2]; 4],
    /// 1 when original pids were restored (inside a user+pid namespace).
    pub same_pids: u64,
    /// The job attempt of the restoring run, plus one (0 = unknown).
    pub attempt_plus1: u64,
}

/// A POSIX timer as seen in the pause (ids from /proc/self/timers, times from
/// timer_gettime).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TimerSnap {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    pub notify: i32,
    pub tid: i32,
    pub value: u64,
    pub interval_ns: u64,
    pub value_ns: u64,
}

/// A POSIX record lock the process held at the pause (from /proc/self/fdinfo).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LockSnap {
    pub fd: i32,
    /// 1 for a write lock, 0 for a read lock.
    pub write: i32,
    pub start: i64,
    /// Last byte, or -1 for "to end of file".
    pub end: i64,
}
