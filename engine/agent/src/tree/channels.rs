//! Kernel objects between processes: pipe and socketpair data saved without consuming it, writer-less pipes, and the checks on shared open files.

use super::*;

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
