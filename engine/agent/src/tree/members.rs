//! Which processes belong to the root's tree: /proc/PID/stat, descendants, whether a process carries the agent, and the pause-safe same-tree check.

use super::*;

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub state: u8,
    /// Wait status of an exited (zombie) process.
    pub exit_code: i32,
    pub comm: String,
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: i32) -> Option<ProcInfo> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let open = s.iter().position(|&b| b == b'(')?;
    let close = s.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(&s[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(s.get(close + 2..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    Some(ProcInfo {
        pid,
        ppid: num(4)? as i32,
        pgid: num(5)? as i32,
        sid: num(6)? as i32,
        state: f.first()?.bytes().next()?,
        exit_code: num(52).unwrap_or(0) as i32,
        comm,
    })
}

/// Every descendant of `root` (parents before children), except torpor's writers.
pub fn descendants(root: i32) -> Vec<ProcInfo> {
    let mut all: Vec<ProcInfo> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if let Some(p) = stat(pid) {
                    all.push(p);
                }
            }
        }
    }
    let mut out: Vec<ProcInfo> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        let mut kids: Vec<&ProcInfo> = all
            .iter()
            .filter(|c| c.ppid == p && c.pid != p && c.comm != "torpor-writer")
            .collect();
        kids.sort_by_key(|c| c.pid);
        for c in kids {
            frontier.push(c.pid);
            out.push(c.clone());
        }
    }
    out
}

/// Whether `pid` catches signal `sig` (its agent's handler is installed: not between
/// exec and the agent's constructor, where the request signal would kill it).
pub fn catches(pid: i32, sig: i32) -> bool {
    let t = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    t.lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|m| m & (1u64 << (sig - 1)) != 0)
}

/// Whether `pid` carries a live agent: it catches the park signal (a member whose
/// manager has not started yet, see [`lazy`], counts: the round's request starts it).
pub fn has_agent(pid: i32) -> bool {
    catches(pid, crate::PARK_SIGNAL)
}

/// State letter of `pid` from /proc with stack buffers only (pause-safe).
pub fn proc_state(pid: i32) -> Option<u8> {
    let (ppid, state) = stat_raw(pid)?;
    let _ = ppid;
    Some(state)
}

/// (ppid, state) from /proc/PID/stat with stack buffers only (pause-safe).
fn stat_raw(pid: i32) -> Option<(i32, u8)> {
    let mut nb = [0u8; 24];
    stat_of(sys::itoa(pid as u64, &mut nb))
}

/// (ppid, state) of the process whose pid is written in `d`, with stack buffers only
/// (pause-safe and signal-safe).
pub(crate) fn stat_of(d: &[u8]) -> Option<(i32, u8)> {
    if d.len() > 20 {
        return None;
    }
    let mut path = [0u8; 40];
    let mut k = 0;
    for part in [b"/proc/".as_slice(), d, b"/stat\0".as_slice()] {
        path[k..k + part.len()].copy_from_slice(part);
        k += part.len();
    }
    let fd = sys_open(&path, libc::O_RDONLY);
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 512];
    // SAFETY: reads into our stack buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    close(fd);
    let s = &buf[..n.max(0) as usize];
    let i = s.windows(2).rposition(|w| w == b") ")?;
    let state = *s.get(i + 2)?;
    let mut ppid: i32 = 0;
    for &c in s.get(i + 4..)? {
        if !c.is_ascii_digit() {
            break;
        }
        ppid = ppid * 10 + (c - b'0') as i32;
    }
    Some((ppid, state))
}

/// Every pid in /proc now, sorted: the processes that cannot be new at
/// [`same_tree`] time.
pub fn all_pids() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// With the whole tree stopped: whether the descendants of `root` are still exactly
/// `known` (no process was forked, and none exited, since the round began). Only pids
/// that did not exist when the round began (`before`, sorted, listed before `known`)
/// are read from /proc, so the cost does not grow with the node's process count: a new
/// process whose parent is the root or a known process is a change, and so is a known
/// process that is gone. Pause-safe.
pub fn same_tree(proc_fd: i32, root: i32, known: &[i32], before: &[i32]) -> bool {
    let mut found = 0usize;
    let mut new_child = false;
    crate::fds::for_each_num(proc_fd, |pid| {
        if new_child {
            return;
        }
        if known.contains(&pid) {
            if stat_raw(pid).is_some_and(|(_, state)| state != b'X') {
                found += 1;
            }
            return;
        }
        if pid == root || before.binary_search(&pid).is_ok() {
            return;
        }
        if let Some((ppid, state)) = stat_raw(pid) {
            if state != b'X' && (ppid == root || known.contains(&ppid)) {
                new_child = true;
            }
        }
    });
    !new_child && found == known.len()
}

/// Makes the root a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process of its tree
/// whose parent exits (a double-forked daemon) is reparented to the root instead of
/// leaving the tree. The root program's `wait(-1)` may then reap such an orphan (what a
/// subreaper implies). Set at start and again after a restore (the attribute belongs to
/// the process, which a restore recreates).
pub fn become_subreaper() {
    // SAFETY: prctl on ourselves with a plain flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
}

/// After a restore with new pids, the root's new pid, as seen from a member: the
/// topmost of the unbroken line of ancestors that run an agent (catch the park
/// signal; the processes above the root do not). `None` when the parent has no agent.
pub fn root_after_restore(park_sig: i32) -> Option<i32> {
    // SAFETY: getppid has no preconditions.
    let mut cur = unsafe { libc::getppid() };
    if cur <= 1 || !catches(cur, park_sig) {
        return None;
    }
    for _ in 0..MAX_TREE {
        let up = stat(cur)?.ppid;
        if up <= 1 || !catches(up, park_sig) {
            break;
        }
        cur = up;
    }
    Some(cur)
}
