//! Process trees (ADR 0006): which processes belong to the root's tree, the round file
//! that tells members where to write, the marker-file barriers of one tree round, the
//! pause-time copy of data buffered in pipes, and the checks that refuse what a tree
//! restore cannot bring back.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;

use torpor_engine::records::FdSnap;
use torpor_image::meta::FdKind;
use torpor_image::store::{Manifest, ManifestProcess, SharedMemory};
use torpor_image::ImageReader;

use crate::manager::{close, sys_open, Config};
use crate::sys;

mod barrier;
mod files;
mod launch;
pub mod lazy;
pub(crate) mod member;
mod members;
mod peek;
mod round;
mod shm;
mod sockets;

pub use barrier::*;
pub use files::*;
pub use launch::*;
pub use members::*;
pub use peek::*;
pub use round::*;
pub use shm::*;
pub use sockets::*;

/// `<root pid>:<root image dir>`, exported by the root for its descendants.
pub const TREE_VAR: &str = "TORPOR_TREE";
/// Name of the round file in the root's image directory.
const ROUND_FILE: &str = ".tree-round";
/// Where a member that failed its part leaves the reason for the root.
const FAILED_FILE: &str = ".tree-failed";

/// The reason a member gave for abandoning the round, if it left one (waits briefly:
/// the member writes it while the root is already resuming).
pub fn member_failure(dir: &Path) -> Option<String> {
    let p = dir.join(FAILED_FILE);
    for _ in 0..20 {
        if let Ok(m) = std::fs::read_to_string(&p) {
            let _ = std::fs::remove_file(&p);
            return Some(m);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}
/// How long a process waits at a barrier.
const BARRIER_TIMEOUT_NS: u64 = 20_000_000_000;
/// Most processes in one tree.
pub const MAX_TREE: usize = 256;

const CHANGED: &str = "the process tree changed during the checkpoint (a process was created or exited); the next checkpoint retries";
const EXITED: &str = "a process of the tree exited during the checkpoint";
/// A member gave up (its reason follows, from [`member_failure`]).
pub const ABANDONED: &str = "the checkpoint of the process tree was abandoned";
const NO_AGENT: &str = "has no torpor agent";

/// Failures that a new round a moment later may not meet.
pub fn transient(msg: &str) -> bool {
    msg == CHANGED || msg == EXITED
}

/// Pid of the tree's root (0: not part of a tree yet).
pub static ROOT_PID: AtomicI32 = AtomicI32::new(0);
/// This process's pid as its agent knows it (set at start, in a fork child and after a
/// restore). A `vfork` child shares its parent's memory, where this is the parent's
/// pid: the agent's handlers do nothing there (they would change the parent's state,
/// or start a thread in the child).
pub static OWN_PID: AtomicI32 = AtomicI32::new(0);

/// Whether this is a `vfork` child running on its parent's memory. Signal-safe.
pub fn in_vfork_child() -> bool {
    let own = OWN_PID.load(SeqCst);
    own != 0 && own != sys::getpid()
}

/// The fds of the round in progress in this process (its directories, `/proc` handles,
/// the writer's pipes), -1 when unused, with the identity (device, inode) of what each
/// was open on. A child forked while a round runs joins that round: it must not carry
/// its parent's round fds as its own (one into the pending directory could not be
/// reopened at restore, a pipe of the writer has its other end outside the tree), so
/// the atfork child handler closes them; only those still open on the same file (the
/// round closes its fds before it forgets them, and the program may get the numbers
/// again meanwhile).
pub static ROUND_FDS: [AtomicI32; 12] = [const { AtomicI32::new(-1) }; 12];
static ROUND_IDS: [(AtomicU64, AtomicU64); 12] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 12];

/// (device, inode) of what `fd` is open on. Signal-safe.
fn fd_identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: fstat into a local struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

/// Notes `fds` as fds of the round in progress (see [`ROUND_FDS`]).
pub fn note_round_fds(fds: &[i32]) {
    for &fd in fds.iter().filter(|&&fd| fd >= 0) {
        if ROUND_FDS.iter().any(|s| s.load(SeqCst) == fd) {
            continue;
        }
        let Some((dev, ino)) = fd_identity(fd) else {
            continue;
        };
        if let Some(i) = ROUND_FDS.iter().position(|s| s.load(SeqCst) < 0) {
            ROUND_IDS[i].0.store(dev, SeqCst);
            ROUND_IDS[i].1.store(ino, SeqCst);
            ROUND_FDS[i].store(fd, SeqCst);
        }
    }
}

/// The round is over (its fds are closed or about to be).
pub fn forget_round_fds() {
    for s in &ROUND_FDS {
        s.store(-1, SeqCst);
    }
}

/// In a fork child: closes the parent's round fds that are still open on what the
/// round opened. Signal-safe.
pub fn close_round_fds() {
    for (i, s) in ROUND_FDS.iter().enumerate() {
        let fd = s.swap(-1, SeqCst);
        if fd >= 0
            && fd_identity(fd) == Some((ROUND_IDS[i].0.load(SeqCst), ROUND_IDS[i].1.load(SeqCst)))
        {
            close(fd);
        }
    }
}

/// This process is a member (not the root) of a tree.
pub static MEMBER: AtomicBool = AtomicBool::new(false);
/// The root's image directory.
pub static ROOT_DIR: OnceLock<PathBuf> = OnceLock::new();
/// This process's configuration, for the manager of a fork child.
pub static CFG: OnceLock<Config> = OnceLock::new();

/// Parses `TORPOR_TREE`.
pub fn parse_var(v: &str) -> Option<(i32, PathBuf)> {
    let (pid, dir) = v.split_once(':')?;
    let pid: i32 = pid.trim().parse().ok()?;
    (pid > 0 && !dir.is_empty()).then(|| (pid, PathBuf::from(dir)))
}

/// The value the root exports.
pub fn var_value(root: i32, dir: &Path) -> std::ffi::OsString {
    let mut v = std::ffi::OsString::from(format!("{root}:"));
    v.push(dir.as_os_str());
    v
}
