//! Pause-time work on files, without allocation: listing /proc directories, the fd
//! snapshot (offsets and sizes must be taken while the program is stopped), and copies
//! of written files into the generation (reflink where possible).

use std::cell::UnsafeCell;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use torpor_engine::records::{FdSnap, LockSnap, SIDECARS};

use crate::manager::{close, sys_open, Cell, SLURM};
use crate::sys;

/// Most fds captured.
pub const MAX_FDS: usize = 1024;

/// Identity (device, inode) of the launch's stdio, fds 0-2 as the tree's root got them
/// (what a restore replaces by the new launch's). Recorded by the root at start and
/// after a restore; members get it from the root at each round (`tree::read_launch`).
pub(crate) static LAUNCH: [AtomicU64; 6] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];
pub(crate) static LAUNCH_SET: AtomicBool = AtomicBool::new(false);
/// fds in the last snapshot (the restored process reads its own snapshot back).
static LAST_NFDS: AtomicUsize = AtomicUsize::new(0);

/// Records fds 0-2 as the launch's stdio (the root, at start).
pub(crate) fn record_launch() {
    for k in 0..3 {
        // SAFETY: fstat into a local.
        let (dev, ino) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(k as i32, &mut st) == 0 {
                (st.st_dev, st.st_ino)
            } else {
                (0, 0)
            }
        };
        LAUNCH[2 * k].store(dev, SeqCst);
        LAUNCH[2 * k + 1].store(ino, SeqCst);
    }
    LAUNCH_SET.store(true, SeqCst);
}

/// In a restored process: the fds that were copies of the launch's stdio at the
/// checkpoint are now copies of the new launch's; records their identity.
pub(crate) fn refresh_launch() {
    // SAFETY: the snapshot restored with the process; manager-only.
    let fds = unsafe { &(&*FDS.0.get())[..LAST_NFDS.load(SeqCst).min(MAX_FDS)] };
    for s in fds.iter().filter(|s| s.launch != 0) {
        let k = (s.launch - 1) as usize;
        // SAFETY: fstat into a local.
        let (dev, ino) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(s.fd, &mut st) != 0 {
                continue;
            }
            (st.st_dev, st.st_ino)
        };
        LAUNCH[2 * k].store(dev, SeqCst);
        LAUNCH[2 * k + 1].store(ino, SeqCst);
    }
}

/// Whether (dev, ino) is one of the launch's stdio files.
pub(crate) fn is_launch(dev: u64, ino: u64) -> bool {
    LAUNCH_SET.load(SeqCst)
        && ino != 0
        && (0..3)
            .any(|k| LAUNCH[2 * k].load(SeqCst) == dev && LAUNCH[2 * k + 1].load(SeqCst) == ino)
}

/// Which launch stdio fd (0-2) `fd` is a copy of, plus one; 0 for none. Pipes, sockets
/// and regular files are matched at any fd (a shell keeps its stdout at fd 10 while
/// a compound command is redirected); devices only at their own number.
fn launch_of(fd: i32, st: &libc::stat) -> u32 {
    if !LAUNCH_SET.load(SeqCst) || st.st_ino == 0 {
        return 0;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let any = matches!(fmt, libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFREG);
    let is = |k: usize| {
        LAUNCH[2 * k].load(SeqCst) == st.st_dev && LAUNCH[2 * k + 1].load(SeqCst) == st.st_ino
    };
    if (0..=2).contains(&fd) && is(fd as usize) {
        return fd as u32 + 1;
    }
    if !any {
        return 0;
    }
    (0..3).find(|&k| is(k)).map(|k| k as u32 + 1).unwrap_or(0)
}
/// Most POSIX record locks captured.
pub const MAX_LOCKS: usize = 256;

pub(crate) static LOCKS: Cell<[LockSnap; MAX_LOCKS]> = Cell(UnsafeCell::new(
    [LockSnap {
        fd: 0,
        write: 0,
        start: 0,
        end: 0,
    }; MAX_LOCKS],
));

fn parse_i64(b: &[u8]) -> Option<i64> {
    let mut v: i64 = 0;
    if b.is_empty() {
        return None;
    }
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as i64)?;
    }
    Some(v)
}

/// Appends the POSIX locks this process holds on `fd`'s file (lines of
/// /proc/self/fdinfo/<fd> such as `lock: 1: POSIX ADVISORY WRITE <pid> <dev:ino> 5 14`).
/// No allocation. Returns the new count.
pub(crate) fn snapshot_locks(fd: i32, mut n: usize) -> usize {
    let path = proc_self_fd_path(b"fdinfo/", fd);
    let f = sys_open(&path, libc::O_RDONLY);
    if f < 0 {
        return n;
    }
    let mut buf = [0u8; 4096];
    // SAFETY: reads into our stack buffer.
    let len = unsafe { libc::read(f, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    close(f);
    let mut pb = [0u8; 24];
    let me = sys::itoa(sys::getpid() as u64, &mut pb);
    // SAFETY: manager-only table.
    let locks = unsafe { &mut *LOCKS.0.get() };
    for line in buf[..len.max(0) as usize].split(|&b| b == b'\n') {
        if !line.starts_with(b"lock:") {
            continue;
        }
        let mut w = line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|x| !x.is_empty());
        // lock: N: POSIX ADVISORY WRITE pid dev:ino start end
        let (_, _, kind, _, rw, pid, _, start, end) = (
            w.next(),
            w.next(),
            w.next(),
            w.next(),
            w.next(),
            w.next(),
            w.next(),
            w.next(),
            w.next(),
        );
        if kind != Some(b"POSIX".as_slice()) || pid != Some(me) || n >= MAX_LOCKS {
            continue;
        }
        let (Some(start), Some(end)) = (start, end) else {
            continue;
        };
        let Some(start) = parse_i64(start) else {
            continue;
        };
        let end = if end == b"EOF" {
            -1
        } else {
            parse_i64(end).unwrap_or(-1)
        };
        locks[n] = LockSnap {
            fd,
            write: (rw == Some(b"WRITE".as_slice())) as i32,
            start,
            end,
        };
        n += 1;
    }
    n
}

pub(crate) static FDS: Cell<[FdSnap; MAX_FDS]> = Cell(UnsafeCell::new(
    [FdSnap {
        fd: 0,
        flags: 0,
        fdflags: 0,
        mode: 0,
        offset: 0,
        size: 0,
        dev: 0,
        ino: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        captured: 0,
        sidecars: 0,
        no_writers: 0,
        internal: 0,
        launch: 0,
    }; MAX_FDS],
));

static DIRBUF: Cell<[u8; 16384]> = Cell(UnsafeCell::new([0; 16384]));

/// Calls `f` with each numeric entry of an open /proc directory. No allocation.
pub(crate) fn for_each_num(dirfd: i32, mut f: impl FnMut(i32)) {
    // SAFETY: dirfd is a directory the manager opened; the buffer is manager-only.
    unsafe {
        libc::lseek(dirfd, 0, libc::SEEK_SET);
        let buf = &mut *DIRBUF.0.get();
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dirfd, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut off = 0usize;
            while off < n as usize {
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                let name = &buf[off + 19..off + reclen];
                let mut v: i64 = 0;
                let mut ok = false;
                for &c in name {
                    if c == 0 {
                        break;
                    }
                    if !c.is_ascii_digit() {
                        ok = false;
                        break;
                    }
                    v = v * 10 + (c - b'0') as i64;
                    ok = true;
                }
                if ok {
                    f(v as i32);
                }
                off += reclen;
            }
        }
    }
}

/// Records every open fd except the agent's own; copies written files into the
/// generation. Runs while the program is paused: no allocation.
pub(crate) fn snapshot_fds(fd_dir: i32, exclude: &[i32], files_fd: i32, limit: u64) -> usize {
    // SAFETY: manager-only table.
    let fds = unsafe { &mut *FDS.0.get() };
    let mut n = 0usize;
    for_each_num(fd_dir, |fd| {
        if exclude.contains(&fd) {
            return;
        }
        if n >= MAX_FDS {
            n = MAX_FDS + 1; // reported by the caller: never drop fds silently
            return;
        }
        let s = &mut fds[n];
        *s = FdSnap {
            fd,
            ..FdSnap::default()
        };
        // SAFETY: fcntl/fstat/lseek on an fd number; st is a local out-parameter.
        unsafe {
            s.flags = libc::fcntl(fd, libc::F_GETFL);
            if s.flags < 0 {
                return; // closed meanwhile
            }
            s.fdflags = libc::fcntl(fd, libc::F_GETFD);
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == 0 {
                s.launch = launch_of(fd, &st);
                s.mode = st.st_mode;
                s.size = st.st_size;
                s.dev = st.st_dev;
                s.ino = st.st_ino;
                s.mtime_sec = st.st_mtime;
                s.mtime_nsec = st.st_mtime_nsec;
            }
            s.offset = libc::lseek(fd, 0, libc::SEEK_CUR);
        }
        s.internal = (s.launch == 0 && stdio_internal(fd, s.mode)) as u32;
        let acc = s.flags & libc::O_ACCMODE;
        let is_reg = s.mode & libc::S_IFMT == libc::S_IFREG;
        let needs_copy = is_reg
            && (fd > 2 || s.internal != 0)
            && acc != libc::O_RDONLY
            && s.flags & libc::O_APPEND == 0
            && !(acc == libc::O_WRONLY && s.offset == s.size);
        // In a Slurm task the job's output files are put back on restart (Slurm truncates
        // them when the job runs again), so their contents go with the generation.
        let stdio_copy =
            is_reg && fd <= 2 && s.internal == 0 && acc != libc::O_RDONLY && SLURM.load(SeqCst);
        if stdio_copy {
            s.captured = if (s.size as u64) <= limit && copy_file(fd, files_fd, s.size as u64) {
                1
            } else {
                -1
            };
        }
        if needs_copy {
            s.captured = if (s.size as u64) <= limit && copy_file(fd, files_fd, s.size as u64) {
                1
            } else {
                -1
            };
            s.sidecars = sidecars_present(fd);
        }
        n += 1;
    });
    LAST_NFDS.store(n, SeqCst);
    n
}

/// fd 0-2 of a tree member on a regular file or named FIFO that is not one of the
/// root's fds 0-2 (`kcmp`): a redirection made inside the tree (`cmd > log`), which a
/// restore must reopen, unlike the launch's stdio that every process inherits.
fn stdio_internal(fd: i32, mode: u32) -> bool {
    let fmt = mode & libc::S_IFMT;
    if fd > 2
        || !(fmt == libc::S_IFREG
            || fmt == libc::S_IFIFO && !is_anon_pipe(fd)
            || fmt == libc::S_IFCHR && is_plain_device(fd))
    {
        return false;
    }
    if LAUNCH_SET.load(SeqCst) {
        return true; // not a copy of the launch's stdio (checked by the caller)
    }
    if !crate::tree::MEMBER.load(SeqCst) {
        return false;
    }
    let root = crate::tree::ROOT_PID.load(SeqCst);
    let me = sys::getpid();
    if root <= 0 || root == me {
        return false;
    }
    // SAFETY: kcmp(KCMP_FILE = 0) compares our fd with the root's stdio fds.
    !(0..3).any(|r| unsafe { libc::syscall(libc::SYS_kcmp, me, root, 0, fd, r) } == 0)
}

/// Whether `fd` is one of the devices a restore reopens by path (`/dev/null`, `zero`,
/// `full`, `random`, `urandom`), as `capture::fd_meta` decides. No allocation.
fn is_plain_device(fd: i32) -> bool {
    let mut t = [0u8; 32];
    let n = fd_link(fd, &mut t);
    matches!(
        &t[..n],
        b"/dev/null" | b"/dev/zero" | b"/dev/full" | b"/dev/random" | b"/dev/urandom"
    )
}

/// readlink of /proc/self/fd/`fd` into `out`; the length read (0 on failure).
fn fd_link(fd: i32, out: &mut [u8]) -> usize {
    let link = proc_self_fd_path(b"fd/", fd);
    // SAFETY: readlink into the caller's buffer.
    let n = unsafe {
        libc::readlink(
            link.as_ptr() as *const libc::c_char,
            out.as_mut_ptr() as *mut libc::c_char,
            out.len(),
        )
    };
    n.max(0) as usize
}

/// Whether `fd` is an anonymous pipe (`pipe:[N]`) rather than a named FIFO. No allocation.
pub(crate) fn is_anon_pipe(fd: i32) -> bool {
    let mut t = [0u8; 16];
    fd_link(fd, &mut t) >= 5 && &t[..5] == b"pipe:"
}

/// Which SQLite sidecars exist next to the file open at `fd`. No allocation.
fn sidecars_present(fd: i32) -> u32 {
    let link = proc_self_fd_path(b"fd/", fd);
    let mut path = [0u8; 4200];
    // SAFETY: readlink into our buffer, leaving room for a suffix and a NUL.
    let n = unsafe {
        libc::readlink(
            link.as_ptr() as *const libc::c_char,
            path.as_mut_ptr() as *mut libc::c_char,
            4096,
        )
    };
    if n <= 0 {
        return 0;
    }
    let n = n as usize;
    let mut bits = 0;
    for (i, suffix) in SIDECARS.iter().enumerate() {
        let sb = suffix.as_bytes();
        path[n..n + sb.len()].copy_from_slice(sb);
        path[n + sb.len()] = 0;
        // SAFETY: path is NUL-terminated; st is a local out-parameter.
        let exists = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::stat(path.as_ptr() as *const libc::c_char, &mut st) == 0
        };
        if exists {
            bits |= 1 << i;
        }
    }
    bits
}

/// Copies the first `size` bytes of `fd` to `files/fd-<fd>` (reflink when possible).
fn copy_file(fd: i32, files_fd: i32, size: u64) -> bool {
    let mut name = [0u8; 40];
    let mut nb = [0u8; 24];
    let digits = sys::itoa(fd as u64, &mut nb);
    name[..3].copy_from_slice(b"fd-");
    name[3..3 + digits.len()].copy_from_slice(digits);
    copy_path(&proc_self_fd_path(b"fd/", fd), files_fd, &name, Some(size))
}

/// `/proc/self/<kind><fd>`, NUL-terminated, for `kind` `fd/` or `fdinfo/`. No allocation.
fn proc_self_fd_path(kind: &[u8], fd: i32) -> [u8; 48] {
    let mut path = [0u8; 48];
    let mut nb = [0u8; 24];
    let digits = sys::itoa(fd as u64, &mut nb);
    let pre = b"/proc/self/";
    let k = pre.len() + kind.len();
    path[..pre.len()].copy_from_slice(pre);
    path[pre.len()..k].copy_from_slice(kind);
    path[k..k + digits.len()].copy_from_slice(digits);
    path
}

/// Copies `src` (NUL-terminated path) into `files_fd/name` (NUL-terminated): a reflink
/// where the file system can, a kernel copy otherwise. No allocation.
pub(crate) fn copy_path(src: &[u8], files_fd: i32, name: &[u8], size: Option<u64>) -> bool {
    let src = sys_open(src, libc::O_RDONLY);
    if src < 0 {
        return false;
    }
    let size = size.unwrap_or_else(|| {
        // SAFETY: fstat into a local.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(src, &mut st);
            st.st_size as u64
        }
    });
    // SAFETY: name is NUL-terminated; files_fd is a directory we opened.
    let dst = unsafe {
        libc::openat(
            files_fd,
            name.as_ptr() as *const libc::c_char,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        )
    };
    let mut ok = dst >= 0;
    if ok {
        const FICLONE: u64 = 0x4004_9409;
        // SAFETY: ioctl FICLONE takes the source fd as its argument.
        let cloned = unsafe { libc::ioctl(dst, FICLONE, src) } == 0;
        if !cloned {
            let mut off: i64 = 0;
            while (off as u64) < size {
                // SAFETY: both fds are open; `off` is our local offset.
                let r = unsafe {
                    libc::copy_file_range(
                        src,
                        &mut off,
                        dst,
                        std::ptr::null_mut(),
                        (size - off as u64) as usize,
                        0,
                    )
                };
                if r <= 0 {
                    ok = r == 0 && off as u64 == size;
                    break;
                }
            }
        }
    }
    close(src);
    close(dst);
    ok
}
