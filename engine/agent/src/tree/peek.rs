//! Pause-time copies of the data buffered in pipes, FIFOs and sockets, without
//! consuming it; writer-less pipes; the single-process pipe checks.

use super::*;

/// Copies the data buffered in every pipe this process can read into
/// `pipes/<inode>` (first process wins), without consuming it: `tee` into a scratch
/// pipe, then `splice` into the file. Runs with the whole tree stopped. Pause-safe.
pub fn save_pipes(fds: &[FdSnap], pipes_fd: i32) -> Result<(), FdError> {
    let mut peek_buf: (*mut u8, usize) = (std::ptr::null_mut(), 0);
    let mut res = Ok(());
    for s in fds {
        let fmt = s.mode & libc::S_IFMT;
        let sock = if fmt == libc::S_IFSOCK {
            socket_kind(s.fd)
        } else {
            Sock::Other
        };
        let write_only = s.flags & libc::O_ACCMODE == libc::O_WRONLY;
        // A named FIFO held only for writing is read through a new read end.
        let fifo_writer = fmt == libc::S_IFIFO && write_only && !crate::fds::is_anon_pipe(s.fd);
        let pipe = fmt == libc::S_IFIFO && (!write_only || fifo_writer);
        if sock == Sock::Other && !pipe {
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
            res = Err((s.fd, "cannot create a pipe data file"));
            break;
        }
        let r = match sock {
            Sock::Stream => peek_into(s.fd, out, &mut peek_buf),
            Sock::Records => peek_dgrams(s.fd, out, None, &mut peek_buf),
            Sock::Dgram => {
                // The senders' names go to `<inode>.from`, one per datagram.
                name[digits.len()..digits.len() + 6].copy_from_slice(b".from\0");
                // SAFETY: openat with a NUL-terminated name in the pipes directory.
                let from = unsafe {
                    libc::openat(
                        pipes_fd,
                        name.as_ptr() as *const libc::c_char,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if from < 0 {
                    Err("cannot create a datagram sender file")
                } else {
                    let r = peek_dgrams(s.fd, out, Some(from), &mut peek_buf);
                    close(from);
                    r
                }
            }
            Sock::Other if fifo_writer => {
                let mut link = [0u8; 48];
                let pre = b"/proc/self/fd/";
                let d = sys::itoa(s.fd as u64, &mut nb);
                link[..pre.len()].copy_from_slice(pre);
                link[pre.len()..pre.len() + d.len()].copy_from_slice(d);
                let rd = sys_open(&link, libc::O_RDONLY | libc::O_NONBLOCK);
                if rd < 0 {
                    Err("cannot open a named FIFO for reading its data")
                } else {
                    let r = tee_into(rd, out);
                    close(rd);
                    r
                }
            }
            Sock::Other => tee_into(s.fd, out),
        };
        close(out);
        if let Err(why) = r {
            res = Err((s.fd, why));
            break;
        }
    }
    if !peek_buf.0.is_null() {
        // SAFETY: unmaps the buffer mapped by peek_buffer.
        unsafe { libc::munmap(peek_buf.0 as *mut libc::c_void, peek_buf.1) };
    }
    res
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Sock {
    /// Connected byte stream: Unix stream or TCP.
    Stream,
    /// Unix datagram socket (one datagram and its sender's name per peek).
    Dgram,
    /// Unix seqpacket socket (one record per peek).
    Records,
    /// Listening, unconnected, or of another kind: nothing to save.
    Other,
}

fn socket_kind(fd: i32) -> Sock {
    let dom = sockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let ty = sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE);
    if sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == 1 {
        return Sock::Other;
    }
    match (dom, ty) {
        (libc::AF_UNIX | libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) => Sock::Stream,
        (libc::AF_UNIX, libc::SOCK_DGRAM) => Sock::Dgram,
        (libc::AF_UNIX, libc::SOCK_SEQPACKET) => Sock::Records,
        _ => Sock::Other,
    }
}

/// Most data queued on one socket that a checkpoint saves.
const PEEK_MAX: usize = 8 << 20;

/// Maps the peek buffer on first use (mmap is a plain system call).
fn peek_buffer(buf: &mut (*mut u8, usize)) -> Result<(), &'static str> {
    if buf.0.is_null() {
        let p = crate::alloc::map(PEEK_MAX);
        if p.is_null() {
            return Err("cannot map a buffer for socket data");
        }
        *buf = (p, PEEK_MAX);
    }
    Ok(())
}

/// Peeks at what is queued on `fd` into `buf` (MSG_PEEK: nothing consumed): the whole
/// stream, or the next datagram (and its sender's address into `from`, with its
/// length: 0 for an unbound sender). `Ok(None)`: nothing queued (or not connected:
/// refused when the image is classified). Refuses file descriptors in flight
/// (SCM_RIGHTS).
fn peek_msg(
    fd: i32,
    buf: (*mut u8, usize),
    from: Option<&mut (libc::sockaddr_un, u32)>,
) -> Result<Option<usize>, &'static str> {
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
    let mut from = from;
    if let Some(f) = from.as_deref_mut() {
        msg.msg_name = &mut f.0 as *mut libc::sockaddr_un as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
    }
    // SAFETY: peeks into our buffers.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return match sys::errno() {
            libc::EAGAIN | libc::ENOTCONN | libc::EINVAL => Ok(None),
            _ => Err("peeking at a socket's queued data failed"),
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
            "file descriptors in flight on a socket (SCM_RIGHTS: sent, not yet received) cannot be checkpointed; the next checkpoint retries",
        );
    }
    if n as usize >= buf.1 || msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err("more than 8 MiB queued on a socket");
    }
    if let Some(f) = from {
        f.1 = msg.msg_namelen;
    }
    Ok(Some(n as usize))
}

fn write_all(out: i32, p: *const u8, len: usize) -> Result<(), &'static str> {
    let mut done = 0usize;
    while done < len {
        // SAFETY: writes from a buffer of at least `len` bytes.
        let w = unsafe { libc::write(out, p.add(done) as *const libc::c_void, len - done) };
        if w <= 0 {
            return Err("writing socket data failed");
        }
        done += w as usize;
    }
    Ok(())
}

/// Copies the data queued for reading on a stream socket without consuming it.
fn peek_into(fd: i32, out: i32, buf: &mut (*mut u8, usize)) -> Result<(), &'static str> {
    peek_buffer(buf)?;
    match peek_msg(fd, *buf, None)? {
        None => Ok(()),
        Some(n) => write_all(out, buf.0, n),
    }
}

/// Copies the datagrams queued on a Unix datagram socket without consuming them
/// (`SO_PEEK_OFF` moves each peek past the previous datagram; the program's own peek
/// offset is put back), each as a 4-byte little-endian length and its bytes; with
/// `from`, the sender's name of each (a 2-byte little-endian length and the raw
/// `sun_path` bytes, empty for an unbound sender) into that file.
fn peek_dgrams(
    fd: i32,
    out: i32,
    from: Option<i32>,
    buf: &mut (*mut u8, usize),
) -> Result<(), &'static str> {
    peek_buffer(buf)?;
    let old = sockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF);
    let set = |v: i32| {
        // SAFETY: setsockopt with a local int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                &v as *const i32 as *const libc::c_void,
                4,
            )
        }
    };
    if set(0) != 0 {
        return Err("cannot set a peek offset on a datagram socket");
    }
    let mut total = 0usize;
    let mut res = Ok(());
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: (libc::sockaddr_un, u32) = (unsafe { std::mem::zeroed() }, 0);
    loop {
        addr.1 = 0;
        match peek_msg(fd, *buf, from.map(|_| &mut addr)) {
            Ok(None) => break,
            Err(e) => {
                res = Err(e);
                break;
            }
            Ok(Some(0)) => {
                res = Err(
                    "a zero-length datagram or record is queued on a socket pair (not supported)",
                );
                break;
            }
            Ok(Some(n)) => {
                total += n + 4;
                if total > PEEK_MAX {
                    res = Err("more than 8 MiB queued on a socket");
                    break;
                }
                let len = (n as u32).to_le_bytes();
                if let Err(e) =
                    write_all(out, len.as_ptr(), 4).and_then(|()| write_all(out, buf.0, n))
                {
                    res = Err(e);
                    break;
                }
                if let Some(from) = from {
                    // The address: the family, then the name (abstract: leading NUL).
                    let fam = std::mem::size_of::<libc::sa_family_t>();
                    let len = (addr.1 as usize).saturating_sub(fam).min(108);
                    let p = addr.0.sun_path.as_ptr() as *const u8;
                    let l = (len as u16).to_le_bytes();
                    if let Err(e) =
                        write_all(from, l.as_ptr(), 2).and_then(|()| write_all(from, p, len))
                    {
                        res = Err(e);
                        break;
                    }
                }
            }
        }
    }
    set(old);
    res
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
        if s.fd <= 2 || s.mode & libc::S_IFMT != libc::S_IFIFO || !crate::fds::is_anon_pipe(s.fd) {
            continue;
        }
        if s.launch != 0 {
            continue; // a copy of the launch's stdio: restored as a copy of the new one
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
pub fn save_own_pipes(fds: &[FdSnap], files_fd: i32) -> Result<(), FdError> {
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
        return Err((-1, "cannot create the pipes directory of the generation"));
    }
    let r = save_pipes(fds, fd);
    close(fd);
    r
}
