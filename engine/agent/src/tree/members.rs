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

/// `/proc/<d>/stat` (`d`: the pid's digits) read into `buf`, no allocation
/// (pause-safe and signal-safe): the bytes read.
fn read_stat<'a>(d: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
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
    // SAFETY: reads into the caller's buffer, at most its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    close(fd);
    Some(&buf[..n.max(0) as usize])
}

/// (ppid, state) of the process whose pid is written in `d`, with stack buffers only
/// (pause-safe and signal-safe).
pub(crate) fn stat_of(d: &[u8]) -> Option<(i32, u8)> {
    let mut buf = [0u8; 512];
    let s = read_stat(d, &mut buf)?;
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

/// Every pid in /proc now, sorted: the processes that cannot be new children of the
/// tree when a round looks for them.
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

/// One process as `/proc/PID/stat` shows it, read with stack buffers only (pause-safe).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawStat {
    pub state: u8,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Wait status of an exited (zombie) process.
    pub exit_code: i32,
    /// A writer child of torpor (never part of the tree).
    pub writer: bool,
}

/// [`RawStat`] of `pid`. Pause-safe.
pub fn stat_full(pid: i32) -> Option<RawStat> {
    let mut nb = [0u8; 24];
    let mut buf = [0u8; 1024];
    let s = read_stat(sys::itoa(pid as u64, &mut nb), &mut buf)?;
    let open = s.iter().position(|&b| b == b'(')?;
    let i = s.windows(2).rposition(|w| w == b") ")?;
    let comm = s.get(open + 1..i)?;
    let mut out = RawStat {
        state: *s.get(i + 2)?,
        writer: comm == b"torpor-writer",
        ..RawStat::default()
    };
    // Field 3 (state) starts at i + 2; field N is the (N - 3)th token after it.
    for (no, tok) in s[i + 2..].split(|&c| c == b' ').enumerate() {
        let field = no + 3;
        if !matches!(field, 4 | 5 | 6 | 52) {
            continue;
        }
        let mut v: i64 = 0;
        let mut neg = false;
        for &c in tok {
            match c {
                b'-' => neg = true,
                b'0'..=b'9' => v = v * 10 + (c - b'0') as i64,
                _ => break,
            }
        }
        let v = if neg { -v } else { v } as i32;
        match field {
            4 => out.ppid = v,
            5 => out.pgid = v,
            6 => out.sid = v,
            _ => out.exit_code = v,
        }
    }
    Some(out)
}

/// Builds `/proc/<pid><rest>` NUL-terminated in `path`; false if it does not fit.
fn proc_path(path: &mut [u8; 64], pid: i32, rest: &[u8]) -> bool {
    let mut nb = [0u8; 24];
    let d = sys::itoa(pid as u64, &mut nb);
    let mut k = 0;
    for part in [b"/proc/".as_slice(), d, rest, b"\0".as_slice()] {
        if k + part.len() > path.len() {
            return false;
        }
        path[k..k + part.len()].copy_from_slice(part);
        k += part.len();
    }
    true
}

/// Whether `pid` catches signal `sig`, from `SigCgt` in `/proc/PID/status`, with stack
/// buffers only (pause-safe).
pub fn catches_raw(pid: i32, sig: i32) -> bool {
    let mut path = [0u8; 64];
    proc_path(&mut path, pid, b"/status")
        && status_mask(&path, b"SigCgt:") & (1u64 << (sig - 1)) != 0
}

/// Whether signal `sig` is pending for thread `tid` of `pid` (`SigPnd`) or for the
/// process (`ShdPnd`). Pause-safe.
fn pending_at(pid: i32, tid: i32, sig: i32) -> bool {
    let mut nb = [0u8; 24];
    let d = sys::itoa(tid as u64, &mut nb);
    let mut rest = [0u8; 40];
    rest[..6].copy_from_slice(b"/task/");
    rest[6..6 + d.len()].copy_from_slice(d);
    rest[6 + d.len()..6 + d.len() + 7].copy_from_slice(b"/status");
    let mut path = [0u8; 64];
    if !proc_path(&mut path, pid, &rest[..6 + d.len() + 7]) {
        return false;
    }
    let bit = 1u64 << (sig - 1);
    status_mask(&path, b"SigPnd:") & bit != 0 || status_mask(&path, b"ShdPnd:") & bit != 0
}

/// The hexadecimal mask after `key` in the status file at NUL-terminated `path`
/// (0 if unreadable). Pause-safe.
fn status_mask(path: &[u8], key: &[u8]) -> u64 {
    let fd = sys_open(path, libc::O_RDONLY);
    if fd < 0 {
        return 0;
    }
    let mut buf = [0u8; 4096];
    let mut len = 0usize;
    while len < buf.len() {
        // SAFETY: reads into the rest of our stack buffer.
        let n = unsafe {
            libc::read(
                fd,
                buf[len..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - len,
            )
        };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    close(fd);
    let s = &buf[..len];
    let Some(at) = s.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    let mut m: u64 = 0;
    for &c in s[at + key.len()..]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
    {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => break,
        };
        m = (m << 4) | v as u64;
    }
    m
}

/// The tid of `pid`'s manager thread (named `torpor-agent`), if it has one. Pause-safe.
pub fn manager_tid(pid: i32) -> Option<i32> {
    let mut path = [0u8; 64];
    if !proc_path(&mut path, pid, b"/task") {
        return None;
    }
    let dir = sys_open(&path, libc::O_RDONLY | libc::O_DIRECTORY);
    if dir < 0 {
        return None;
    }
    let mut found = None;
    crate::fds::for_each_num(dir, |tid| {
        if found.is_some() || tid == pid {
            return;
        }
        let mut nb = [0u8; 24];
        let d = sys::itoa(tid as u64, &mut nb);
        let mut name = [0u8; 40];
        name[..d.len()].copy_from_slice(d);
        name[d.len()..d.len() + 6].copy_from_slice(b"/comm\0");
        // SAFETY: openat with a NUL-terminated name in the directory we opened.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr() as *const libc::c_char,
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 32];
        // SAFETY: reads into our stack buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        close(fd);
        if n > 0 && buf[..n as usize].starts_with(b"torpor-agent") {
            found = Some(tid);
        }
    });
    close(dir);
    found
}

/// Asks member `pid` to join round `id`: through its manager thread when it has one (a
/// thread-directed signal dies with that thread if the process execs meanwhile, where a
/// process-directed one would find the default action, which kills); otherwise, with
/// lazy managers, through the process once it catches the signal (the handler starts
/// the manager). A process without either (forked a moment ago, in the middle of exec)
/// is asked again later. Pause-safe.
pub fn notify(pid: i32, sig: i32, id: i32) {
    if let Some(tid) = manager_tid(pid) {
        if pending_at(pid, tid, sig) {
            // Asked already and not taken yet: asking again would only queue more.
            return;
        }
        #[repr(C)]
        struct SigInfo {
            signo: i32,
            errno: i32,
            code: i32,
            pad: i32,
            pid: i32,
            uid: u32,
            value: usize,
            rest: [u64; 12],
        }
        let info = SigInfo {
            signo: sig,
            errno: 0,
            code: libc::SI_QUEUE,
            pad: 0,
            pid: sys::getpid(),
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            value: id as u32 as usize,
            rest: [0; 12],
        };
        // SAFETY: rt_tgsigqueueinfo to one thread of a member of our tree, with a
        // siginfo laid out as the kernel's (128 bytes).
        unsafe {
            libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                pid,
                tid,
                sig,
                &info as *const SigInfo,
            )
        };
        return;
    }
    if !super::lazy::requested() {
        return;
    }
    let mut path = [0u8; 64];
    let asked = proc_path(&mut path, pid, b"/status")
        && status_mask(&path, b"ShdPnd:") & (1u64 << (sig - 1)) != 0;
    if !asked && catches_raw(pid, sig) && catches_raw(pid, crate::PARK_SIGNAL) {
        let val = libc::sigval {
            sival_ptr: id as u32 as usize as *mut libc::c_void,
        };
        // SAFETY: sigqueue to a member of our tree with a plain value.
        unsafe { libc::sigqueue(pid, sig, val) };
    }
}
