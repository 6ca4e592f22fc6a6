//! Process trees (ADR 0006): which processes belong to the root's tree, the round file
//! that tells members where to write, the marker-file barriers of one tree round, the
//! pause-time copy of data buffered in pipes, and the checks that refuse what a tree
//! restore cannot bring back.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::sync::OnceLock;

use torpor_engine::records::FdSnap;
use torpor_image::meta::FdKind;
use torpor_image::store::{Manifest, ManifestProcess, SharedMemory};
use torpor_image::ImageReader;

use crate::manager::{close, sys_open, Config};
use crate::sys;

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

/// Failures that a new round a moment later may not meet (processes come and go).
pub fn transient(msg: &str) -> bool {
    msg == CHANGED || msg == EXITED || msg.contains(NO_AGENT)
}

/// Pid of the tree's root (0: not part of a tree yet).
pub static ROOT_PID: AtomicI32 = AtomicI32::new(0);
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

/// Whether `pid` runs a torpor manager thread.
pub fn has_agent(pid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    rd.flatten()
        .any(|t| std::fs::read(t.path().join("comm")).is_ok_and(|c| c.starts_with(b"torpor-agent")))
}

/// Shared memory mapped by several processes of the tree (or twice by one): one
/// object, recreated once at restore and mapped by each member.
#[derive(Debug, Clone)]
pub struct ShmGroup {
    pub offset: u64,
    pub len: u64,
    pub members: Vec<(i32, u64)>,
}

/// Groups the shared memory objects mapped more than once in the tree. Refuses
/// objects mapped with different offsets or lengths.
pub fn shared_memory_groups(pids: &[i32]) -> Result<Vec<ShmGroup>, String> {
    let mut seen: HashMap<(u32, u32, u64), ShmGroup> = HashMap::new();
    let mut order: Vec<(u32, u32, u64)> = Vec::new();
    for &pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        for v in torpor_engine::procmaps::parse(&text) {
            let n = v.name.as_str();
            let anon_like = n.is_empty()
                || n.starts_with("/dev/zero")
                || n.starts_with("/SYSV")
                || n.starts_with("/memfd:")
                || n.starts_with("[anon_shmem")
                || n.ends_with(" (deleted)");
            if !v.shared || !anon_like || v.inode == 0 {
                continue;
            }
            let key = (v.dev_major, v.dev_minor, v.inode);
            match seen.get_mut(&key) {
                Some(g) => {
                    if g.offset != v.offset || g.len != v.len() {
                        return Err(format!(
                            "shared memory {n:?} is mapped differently by processes {} and {pid} (offset or length); not supported yet",
                            g.members[0].0
                        ));
                    }
                    g.members.push((pid, v.start));
                }
                None => {
                    order.push(key);
                    seen.insert(
                        key,
                        ShmGroup {
                            offset: v.offset,
                            len: v.len(),
                            members: vec![(pid, v.start)],
                        },
                    );
                }
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| seen.remove(&k))
        .filter(|g| g.members.len() > 1)
        .collect())
}

/// A copy this process makes during the pause: `len` bytes at `start` into `path`.
pub struct ShmCopy {
    pub start: u64,
    pub len: u64,
    pub path: CString,
}

/// Copies shared memory into the generation while the whole tree is stopped (the
/// writers run after the release, when the other processes may already change it).
/// Pause-safe.
pub fn copy_shared(copies: &[ShmCopy]) -> Result<(), &'static str> {
    for c in copies {
        // SAFETY: open with a NUL-terminated path and a mode for the new file.
        let fd = unsafe {
            libc::open(
                c.path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err("cannot create a shared memory file in the generation");
        }
        let mut done = 0u64;
        while done < c.len {
            // SAFETY: writes from our own mapping, readable for its whole length.
            let n = unsafe {
                libc::write(
                    fd,
                    (c.start + done) as *const libc::c_void,
                    (c.len - done) as usize,
                )
            };
            if n <= 0 {
                close(fd);
                return Err("copying shared memory failed (is it readable?)");
            }
            done += n as u64;
        }
        close(fd);
    }
    Ok(())
}

fn fd_flags(pid: i32, fd: i32) -> i32 {
    let t = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    t.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0)
}

/// A regular file whose open file description (and so its offset) is shared by two
/// processes of the tree (inherited fds): each would get its own at restore.
pub fn shared_file_conflict(pids: &[i32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<(i32, i32, u64, u64)> = Vec::new();
    for &pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if fd <= 2 {
                continue;
            }
            let Ok(md) = std::fs::metadata(e.path()) else {
                continue;
            };
            if md.is_file() && fd_flags(pid, fd) & libc::O_APPEND == 0 {
                files.push((pid, fd, md.dev(), md.ino()));
            }
        }
    }
    for (i, a) in files.iter().enumerate() {
        for b in &files[i + 1..] {
            if a.0 == b.0 || (a.2, a.3) != (b.2, b.3) {
                continue;
            }
            // SAFETY: kcmp(KCMP_FILE = 0) compares two fds of processes we own.
            if unsafe { libc::syscall(libc::SYS_kcmp, a.0, b.0, 0, a.1, b.1) } == 0 {
                let path =
                    std::fs::read_link(format!("/proc/{}/fd/{}", a.0, a.1)).unwrap_or_default();
                return Some(format!(
                    "{} is open in processes {} (fd {}) and {} (fd {}) with one shared offset; \
                     files shared between processes are not supported yet (except O_APPEND)",
                    path.display(),
                    a.0,
                    a.1,
                    b.0,
                    b.1
                ));
            }
        }
    }
    None
}

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

    pub fn touch(&self, name: &CString) -> bool {
        // SAFETY: openat with a NUL-terminated name in a directory we opened.
        let fd = unsafe {
            libc::openat(
                self.dir,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            )
        };
        close(fd);
        fd >= 0
    }

    pub fn has(&self, name: &CString) -> bool {
        // SAFETY: faccessat with a NUL-terminated name.
        unsafe { libc::faccessat(self.dir, name.as_ptr(), libc::F_OK, 0) == 0 }
    }

    /// Waits until every `names[i]` exists. Fails when `abort` appears, when the
    /// process `pids[i]` of a missing name is gone, or after the timeout.
    pub fn wait_all(
        &self,
        names: &[CString],
        pids: &[i32],
        abort: &CString,
    ) -> Result<(), &'static str> {
        let t0 = sys::now_ns();
        let mut step = 20_000i64;
        loop {
            let mut missing = false;
            for (i, n) in names.iter().enumerate() {
                if self.has(n) {
                    continue;
                }
                missing = true;
                if let Some(&p) = pids.get(i) {
                    // SAFETY: kill with signal 0 only checks existence.
                    if unsafe { libc::kill(p, 0) } != 0 || proc_state(p) == Some(b'Z') {
                        return Err(EXITED);
                    }
                }
                break;
            }
            if !missing {
                return Ok(());
            }
            if self.has(abort) {
                return Err(ABANDONED);
            }
            if sys::now_ns() - t0 > BARRIER_TIMEOUT_NS {
                return Err("a process of the tree did not answer within 20 s");
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: step,
            };
            // SAFETY: nanosleep with a valid timespec.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
            step = (step * 2).min(1_000_000);
        }
    }
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

static SCAN: crate::manager::Cell<[(i32, i32); 4096]> =
    crate::manager::Cell(std::cell::UnsafeCell::new([(0, 0); 4096]));

/// With the whole tree stopped: whether the descendants of `root` are exactly `known`
/// (no process was forked, and none exited, since the round began). Pause-safe.
pub fn same_tree(proc_fd: i32, root: i32, known: &[i32]) -> bool {
    // SAFETY: used by the root's manager only.
    let all = unsafe { &mut *SCAN.0.get() };
    let mut n = 0usize;
    crate::fds::for_each_num(proc_fd, |pid| {
        if n < all.len() {
            if let Some((ppid, state)) = stat_raw(pid) {
                if state != b'X' {
                    all[n] = (pid, ppid);
                    n += 1;
                }
            }
        }
    });
    // Walk down from the root, counting descendants and checking each is known.
    let mut tree = [0i32; MAX_TREE];
    let mut t = 0usize;
    let mut i = 0usize;
    let mut parent = root;
    loop {
        for &(pid, ppid) in &all[..n] {
            if ppid == parent && pid != parent {
                if t >= MAX_TREE || !known.contains(&pid) {
                    // A writer of the root itself does not exist yet; anything else is new.
                    return false;
                }
                tree[t] = pid;
                t += 1;
            }
        }
        if i >= t {
            break;
        }
        parent = tree[i];
        i += 1;
    }
    t == known.len()
}

/// Copies the data buffered in every pipe this process can read into
/// `pipes/<inode>` (first process wins), without consuming it: `tee` into a scratch
/// pipe, then `splice` into the file. Runs with the whole tree stopped. Pause-safe.
pub fn save_pipes(fds: &[FdSnap], pipes_fd: i32) -> Result<(), &'static str> {
    let mut peek_buf: (*mut u8, usize) = (std::ptr::null_mut(), 0);
    let mut res = Ok(());
    for s in fds {
        let fmt = s.mode & libc::S_IFMT;
        let sock = fmt == libc::S_IFSOCK && is_unix_stream(s.fd);
        if !(sock || fmt == libc::S_IFIFO && s.flags & libc::O_ACCMODE != libc::O_WRONLY) {
            continue;
        }
        let mut nb = [0u8; 24];
        let digits = sys::itoa(s.ino, &mut nb);
        let mut name = [0u8; 32];
        name[..digits.len()].copy_from_slice(digits);
        // SAFETY: openat with a NUL-terminated name in the pipes directory.
        let out = unsafe {
            libc::openat(
                pipes_fd,
                name.as_ptr() as *const libc::c_char,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            )
        };
        if out < 0 {
            if sys::errno() == libc::EEXIST {
                continue; // another process of the tree saved it
            }
            res = Err("cannot create a pipe data file");
            break;
        }
        let r = if sock {
            peek_into(s.fd, out, &mut peek_buf)
        } else {
            tee_into(s.fd, out)
        };
        close(out);
        if r.is_err() {
            res = r;
            break;
        }
    }
    if !peek_buf.0.is_null() {
        // SAFETY: unmaps the buffer mapped by peek_into.
        unsafe { libc::munmap(peek_buf.0 as *mut libc::c_void, peek_buf.1) };
    }
    res
}

fn is_unix_stream(fd: i32) -> bool {
    let (mut dom, mut ty) = (0i32, 0i32);
    let mut l = 4u32;
    // SAFETY: getsockopt into locals of the right size.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            &mut dom as *mut i32 as *mut libc::c_void,
            &mut l,
        );
        l = 4;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut i32 as *mut libc::c_void,
            &mut l,
        );
    }
    dom == libc::AF_UNIX && ty == libc::SOCK_STREAM
}

/// Most data queued on one socket that a checkpoint saves.
const PEEK_MAX: usize = 8 << 20;

/// Copies the data queued for reading on a Unix stream socket without consuming it
/// (MSG_PEEK). The buffer is mapped on first use (mmap is a plain system call).
fn peek_into(fd: i32, out: i32, buf: &mut (*mut u8, usize)) -> Result<(), &'static str> {
    if buf.0.is_null() {
        // SAFETY: a fresh anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PEEK_MAX,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err("cannot map a buffer for socket data");
        }
        *buf = (p as *mut u8, PEEK_MAX);
    }
    let mut iov = libc::iovec {
        iov_base: buf.0 as *mut libc::c_void,
        iov_len: buf.1,
    };
    let mut cbuf = [0u64; 64];
    // SAFETY: a zeroed msghdr is valid; we point it at our iovec and control buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: peeks into our buffers.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return if sys::errno() == libc::EAGAIN {
            Ok(())
        } else {
            Err("peeking at a socket's queued data failed")
        };
    }
    let mut passed_fds = false;
    if msg.msg_controllen > 0 {
        // fds in flight (SCM_RIGHTS): the peek gave us copies; close them and refuse.
        // SAFETY: walks the control messages the kernel wrote into cbuf.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const i32;
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        close(*data.add(i));
                    }
                    passed_fds = true;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    if passed_fds || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(
            "file descriptors in flight on a socket pair (SCM_RIGHTS) are not supported yet",
        );
    }
    if n as usize >= buf.1 {
        return Err("more than 8 MiB queued on a socket");
    }
    let mut done = 0usize;
    while done < n as usize {
        // SAFETY: writes from our buffer.
        let w = unsafe {
            libc::write(
                out,
                buf.0.add(done) as *const libc::c_void,
                n as usize - done,
            )
        };
        if w <= 0 {
            return Err("writing socket data failed");
        }
        done += w as usize;
    }
    Ok(())
}

fn tee_into(src: i32, out: i32) -> Result<(), &'static str> {
    let mut p = [-1i32; 2];
    // SAFETY: pipe2 writes two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err("cannot create a scratch pipe");
    }
    let res = (|| {
        // SAFETY: fcntl on pipes we hold.
        unsafe {
            let size = libc::fcntl(src, libc::F_GETPIPE_SZ);
            if size > 0 && libc::fcntl(p[1], libc::F_SETPIPE_SZ, size) < size {
                return Err("cannot size a scratch pipe like the program's pipe");
            }
        }
        // SAFETY: tee between two pipes; never consumes the source.
        let n = unsafe { libc::tee(src, p[1], usize::MAX >> 1, libc::SPLICE_F_NONBLOCK) };
        if n < 0 {
            return if sys::errno() == libc::EAGAIN {
                Ok(()) // empty
            } else {
                Err("tee of a pipe failed")
            };
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: splice from our scratch pipe into the data file.
            let m = unsafe {
                libc::splice(
                    p[0],
                    std::ptr::null_mut(),
                    out,
                    std::ptr::null_mut(),
                    left,
                    0,
                )
            };
            if m <= 0 {
                return Err("writing pipe data failed");
            }
            left -= m as usize;
        }
        Ok(())
    })();
    close(p[0]);
    close(p[1]);
    res
}

/// Marks the pipe read ends that are empty with no writer left anywhere (a parent that
/// keeps reading a pipe whose writer exec'd or exited, as perl's `system` does): they
/// are recreated without a write end. `tee` never consumes: it returns 0 only for an
/// empty pipe without writers. Runs with the whole tree stopped. Pause-safe.
pub fn probe_no_writers(fds: &mut [FdSnap]) {
    for s in fds.iter_mut() {
        if s.mode & libc::S_IFMT != libc::S_IFIFO || s.flags & libc::O_ACCMODE == libc::O_WRONLY {
            continue;
        }
        let mut p = [-1i32; 2];
        // SAFETY: pipe2 writes two fds.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            continue;
        }
        // SAFETY: tee of at most one byte between pipes; the source is not consumed.
        let n = unsafe { libc::tee(s.fd, p[1], 1, libc::SPLICE_F_NONBLOCK) };
        s.no_writers = (n == 0) as u32;
        close(p[0]);
        close(p[1]);
    }
}

/// Single process: every pipe above fd 2 must have its other end in this process.
/// Pause-safe.
pub fn pipes_self_contained(fds: &[FdSnap]) -> Result<(), i32> {
    for s in fds {
        if s.fd <= 2 || s.mode & libc::S_IFMT != libc::S_IFIFO {
            continue;
        }
        let acc = |f: &FdSnap| f.flags & libc::O_ACCMODE;
        let reader = fds.iter().any(|o| {
            o.ino == s.ino && o.mode & libc::S_IFMT == libc::S_IFIFO && acc(o) != libc::O_WRONLY
        });
        let writer = fds.iter().any(|o| {
            o.ino == s.ino
                && o.mode & libc::S_IFMT == libc::S_IFIFO
                && (acc(o) != libc::O_RDONLY || o.no_writers != 0)
        });
        if !(reader && writer) {
            return Err(s.fd);
        }
    }
    Ok(())
}

/// After every writer of the tree finished: each pipe above fd 2 must have a reader
/// and a writer inside the tree (a pipe to the outside cannot be reconnected).
pub fn check_images(images: &[(i32, PathBuf)], shm: &[ShmGroup]) -> Result<(), String> {
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    let mut pipes: Vec<(i32, i32, u64)> = Vec::new();
    let mut socks: Vec<(i32, i32, u64, u64)> = Vec::new();
    for (pid, img) in images {
        let r = ImageReader::open(img).map_err(|e| format!("{}: {e}", img.display()))?;
        for g in shm {
            for &(p, start) in g.members.iter().filter(|m| m.0 == *pid) {
                let ok = r.meta().regions.iter().any(|reg| {
                    reg.start == start
                        && reg.end - reg.start == g.len
                        && reg.kind == torpor_image::meta::RegionKind::SharedAnon
                });
                if !ok {
                    let _ = p;
                    return Err(CHANGED.to_string());
                }
            }
        }
        for f in &r.meta().fds {
            if f.kind == FdKind::UnixStream {
                socks.push((*pid, f.fd, f.pipe_ino, f.peer_ino));
                continue;
            }
            if f.kind != FdKind::Pipe {
                continue;
            }
            let acc = f.flags as i32 & libc::O_ACCMODE;
            let e = ends.entry(f.pipe_ino).or_default();
            e.0 |= acc != libc::O_WRONLY;
            // A read end of a pipe without writers stands for the (closed) write end.
            e.1 |= acc != libc::O_RDONLY || f.pipe_no_writers;
            pipes.push((*pid, f.fd, f.pipe_ino));
        }
    }
    for &(pid, fd, ino, peer) in &socks {
        if fd > 2 && !socks.iter().any(|s| s.2 == peer) {
            return Err(format!(
                "process {pid} fd {fd} is a socket (socket:[{ino}]) whose peer is outside the checkpointed process tree; such sockets are not supported"
            ));
        }
    }
    for (pid, fd, ino) in pipes {
        if fd > 2 && ends.get(&ino) != Some(&(true, true)) {
            return Err(format!(
                "process {pid} fd {fd} is a pipe (pipe:[{ino}]) whose other end is outside the checkpointed process tree; such pipes are not supported"
            ));
        }
    }
    Ok(())
}

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

/// Single process: saves the data of its own pipes into `pipes/` next to `files/`
/// (created only when there is a pipe). Pause-safe.
pub fn save_own_pipes(fds: &[FdSnap], files_fd: i32) -> Result<(), &'static str> {
    if !fds.iter().any(|s| {
        let f = s.mode & libc::S_IFMT;
        f == libc::S_IFIFO || f == libc::S_IFSOCK
    }) {
        return Ok(());
    }
    // SAFETY: mkdirat/openat relative to the generation's files/ directory.
    let fd = unsafe {
        libc::mkdirat(files_fd, c"../pipes".as_ptr(), 0o700);
        libc::openat(
            files_fd,
            c"../pipes".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err("cannot create the pipes directory of the generation");
    }
    let r = save_pipes(fds, fd);
    close(fd);
    r
}

static ROUND_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn generation_of(tmp: &Path) -> u64 {
    // .tmp-gen-000007-<pid>
    tmp.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(".tmp-gen-"))
        .and_then(|n| n.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The root's side of a tree round.
pub struct RootRound {
    pub marks: Marks,
    pub pipes_fd: i32,
    pub proc_fd: i32,
    dir: PathBuf,
    me: ProcInfo,
    /// Live members, parents before children.
    live: Vec<ProcInfo>,
    zombies: Vec<ProcInfo>,
    shm: Vec<ShmGroup>,
    copies: Vec<ShmCopy>,
    known: Vec<i32>,
    pids: Vec<i32>,
    stopped: Vec<CString>,
    forked: Vec<CString>,
    done: Vec<CString>,
    failed: Vec<CString>,
    go: CString,
    release: CString,
    abort: CString,
}

fn fixed(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

impl RootRound {
    /// Lists the tree, refuses what cannot be restored, publishes the round and asks
    /// every member to join it. `None` when the process has no descendants.
    pub fn prepare(
        cfg: &Config,
        pending: &torpor_image::store::Pending,
    ) -> Result<Option<RootRound>, String> {
        let me = sys::getpid();
        let desc = descendants(me);
        if desc.is_empty() {
            return Ok(None);
        }
        if desc.len() >= MAX_TREE {
            return Err(format!("more than {} processes in the tree", MAX_TREE - 1));
        }
        let (zombies, live): (Vec<ProcInfo>, Vec<ProcInfo>) =
            desc.into_iter().partition(|p| p.state == b'Z');
        for p in &live {
            if !has_agent(p.pid) {
                return Err(format!(
                    "process {} ({}) in the tree {NO_AGENT} (statically linked, LD_PRELOAD removed, or in the middle of exec); the process tree cannot be checkpointed",
                    p.pid, p.comm
                ));
            }
        }
        let mut all: Vec<i32> = vec![me];
        all.extend(live.iter().map(|p| p.pid));
        let shm = shared_memory_groups(&all)?;
        if let Some(why) = shared_file_conflict(&all) {
            return Err(why);
        }
        let me_info = stat(me).ok_or("cannot read /proc/self/stat")?;
        let (marks, pipes_fd) =
            open_dirs(pending.path()).ok_or("cannot open the pending generation directory")?;
        let proc_fd = sys_open(b"/proc\0", libc::O_RDONLY | libc::O_DIRECTORY);
        let id = 0x5452_0000 | (ROUND_SEQ.fetch_add(1, SeqCst) & 0xffff) as i32;
        let round = RootRound {
            marks,
            pipes_fd,
            proc_fd,
            dir: cfg.dir.clone(),
            me: me_info,
            known: live.iter().chain(&zombies).map(|p| p.pid).collect(),
            pids: live.iter().map(|p| p.pid).collect(),
            stopped: live.iter().map(|p| mark_name("stopped", p.pid)).collect(),
            forked: live.iter().map(|p| mark_name("forked", p.pid)).collect(),
            done: live.iter().map(|p| mark_name("done", p.pid)).collect(),
            failed: live.iter().map(|p| mark_name("failed", p.pid)).collect(),
            go: fixed(".go"),
            release: fixed(".release"),
            abort: fixed(".abort"),
            live,
            zombies,
            shm,
            copies: Vec::new(),
        };
        if proc_fd < 0 {
            round.close();
            return Err("cannot open /proc".into());
        }
        if !round.shm.is_empty() {
            let _ = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(pending.path().join("shm"));
        }
        let _ = std::fs::remove_file(cfg.dir.join(FAILED_FILE));
        if let Err(e) = write_round(&cfg.dir, id, pending.path(), &round.shm) {
            round.close();
            return Err(format!("writing the tree round file: {e}"));
        }
        let mut round = round;
        round.copies = my_copies(&cfg.dir, pending.path());
        for &p in &round.pids {
            if !catches(p, cfg.request_sig) || !has_agent(p) {
                round.abort();
                round.close();
                return Err(format!(
                    "process {p} in the tree {NO_AGENT} right now (in the middle of exec?)"
                ));
            }
            let val = libc::sigval {
                sival_ptr: id as usize as *mut libc::c_void,
            };
            // SAFETY: sigqueue to a member of our tree with a plain value.
            if unsafe { libc::sigqueue(p, cfg.request_sig, val) } != 0 {
                round.abort();
                round.close();
                return Err(format!("cannot signal process {p} of the tree"));
            }
        }
        Ok(Some(round))
    }

    pub fn after_stop(&mut self) -> Result<(), &'static str> {
        self.marks
            .wait_all(&self.stopped, &self.pids, &self.abort)?;
        if !same_tree(self.proc_fd, self.me.pid, &self.known) {
            return Err(CHANGED);
        }
        self.marks.touch(&self.go);
        copy_shared(&self.copies)
    }

    pub fn after_fork(&mut self) -> Result<(), &'static str> {
        self.marks.wait_all(&self.forked, &self.pids, &self.abort)?;
        self.marks.touch(&self.release);
        Ok(())
    }

    pub fn abort(&self) {
        self.marks.touch(&self.abort);
    }

    /// After this process's writer succeeded: waits for every member's writer, checks
    /// the tree's pipes and commits one manifest for the whole tree.
    pub fn commit(&mut self, pending: &torpor_image::store::Pending) -> Result<(), String> {
        let t0 = sys::now_ns();
        loop {
            let mut waiting = false;
            for (i, p) in self.live.iter().enumerate() {
                if self.marks.has(&self.done[i]) {
                    continue;
                }
                if self.marks.has(&self.failed[i]) {
                    let msg = std::fs::read_to_string(
                        pending
                            .path()
                            .join(self.failed[i].to_string_lossy().as_ref()),
                    )
                    .unwrap_or_default();
                    return Err(format!("process {} ({}): {}", p.pid, p.comm, msg.trim()));
                }
                // SAFETY: kill with signal 0 only checks existence.
                if unsafe { libc::kill(p.pid, 0) } != 0 {
                    return Err(format!("process {} exited while being written", p.pid));
                }
                waiting = true;
            }
            if !waiting {
                break;
            }
            if sys::now_ns() - t0 > 600_000_000_000 {
                return Err("a process of the tree was not written within 10 minutes".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let me = self.me.pid;
        let mut images = vec![(me, pending.path().join(format!("proc-{me}.img")))];
        for p in &self.live {
            images.push((
                p.pid,
                pending
                    .path()
                    .join(format!("p{}/proc-{}.img", p.pid, p.pid)),
            ));
        }
        check_images(&images, &self.shm)?;
        if let Ok(rd) = std::fs::read_dir(pending.path()) {
            for e in rd.flatten() {
                if e.file_name().as_bytes().starts_with(b".") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let entry = |p: &ProcInfo, image: String, zombie: Option<i32>| ManifestProcess {
            pid: p.pid,
            image,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            zombie,
        };
        let mut processes = vec![entry(&self.me, format!("proc-{me}.img"), None)];
        for p in &self.live {
            processes.push(entry(p, format!("p{}/proc-{}.img", p.pid, p.pid), None));
        }
        for z in &self.zombies {
            processes.push(entry(z, String::new(), Some(z.exit_code)));
        }
        let bytes = images
            .iter()
            .filter_map(|(_, i)| std::fs::metadata(i).ok())
            .map(|m| m.len())
            .sum();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        pending
            .commit(Manifest {
                generation: 0,
                attempt: pending.attempt(),
                time_unix: sys::unix_time(),
                hostname: host.trim().to_string(),
                processes,
                bytes,
                shared: self
                    .shm
                    .iter()
                    .enumerate()
                    .map(|(i, g)| SharedMemory {
                        file: format!("shm/{i}"),
                        offset: g.offset,
                        len: g.len,
                        members: g.members.clone(),
                    })
                    .collect(),
                ..Default::default()
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn close(&self) {
        let _ = std::fs::remove_file(self.dir.join(FAILED_FILE));
        close(self.marks.dir);
        close(self.pipes_fd);
        close(self.proc_fd);
        let _ = std::fs::remove_file(self.dir.join(ROUND_FILE));
    }
}

/// A member's side of a tree round.
pub struct MemberRound {
    pub marks: Marks,
    pub pipes_fd: i32,
    tmp: PathBuf,
    dir: PathBuf,
    root: [i32; 1],
    stopped: CString,
    forked: CString,
    go: [CString; 1],
    release: [CString; 1],
    abort: CString,
    copies: Vec<ShmCopy>,
}

impl MemberRound {
    /// Joins round `id`: a sub-directory `p<pid>/` of the pending generation `tmp`.
    pub fn prepare(
        id: i32,
        dir: &Path,
        tmp: &Path,
        attempt: u32,
    ) -> Result<(MemberRound, torpor_image::store::Pending), String> {
        let _ = id;
        let me = sys::getpid();
        let sub = tmp.join(format!("p{me}"));
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&sub)
            .map_err(|e| format!("{}: {e}", sub.display()))?;
        let (marks, pipes_fd) =
            open_dirs(tmp).ok_or("cannot open the pending generation directory")?;
        let pending = torpor_image::store::Pending::for_member(sub, generation_of(tmp), attempt);
        Ok((
            MemberRound {
                marks,
                pipes_fd,
                tmp: tmp.to_path_buf(),
                dir: dir.to_path_buf(),
                root: [ROOT_PID.load(SeqCst)],
                stopped: mark_name("stopped", me),
                forked: mark_name("forked", me),
                go: [fixed(".go")],
                release: [fixed(".release")],
                abort: fixed(".abort"),
                copies: my_copies(dir, tmp),
            },
            pending,
        ))
    }

    pub fn after_stop(&mut self) -> Result<(), &'static str> {
        self.marks.touch(&self.stopped);
        self.marks.wait_all(&self.go, &self.root, &self.abort)?;
        copy_shared(&self.copies)
    }

    pub fn after_fork(&mut self) -> Result<(), &'static str> {
        self.marks.touch(&self.forked);
        self.marks.wait_all(&self.release, &self.root, &self.abort)
    }

    pub fn abort(&self) {
        self.marks.touch(&self.abort);
    }

    /// Tells the root how this process's part ended.
    pub fn finish(&mut self, out: &crate::manager::Outcome) {
        let me = sys::getpid();
        match out {
            crate::manager::Outcome::Failed(e) => {
                let _ = std::fs::write(self.tmp.join(format!(".failed-{me}")), e);
                let _ = std::fs::write(self.dir.join(FAILED_FILE), format!("process {me}: {e}"));
                self.abort();
            }
            _ => {
                self.marks.touch(&mark_name("done", me));
            }
        }
        close(self.marks.dir);
        close(self.pipes_fd);
    }
}

/// The shared memory copies the round file assigns to this process.
pub fn my_copies(dir: &Path, tmp: &Path) -> Vec<ShmCopy> {
    let me = sys::getpid();
    let text = std::fs::read(dir.join(ROUND_FILE)).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("shm ")?.split(' ').collect();
            let pid: i32 = f.first()?.parse().ok()?;
            if pid != me {
                return None;
            }
            let path = tmp.join("shm").join(f.get(3)?);
            Some(ShmCopy {
                start: f.get(1)?.parse().ok()?,
                len: f.get(2)?.parse().ok()?,
                path: CString::new(path.as_os_str().as_bytes()).ok()?,
            })
        })
        .collect()
}
