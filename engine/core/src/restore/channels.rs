//! Restore stage 1, kernel objects between processes besides anonymous pipes: named
//! FIFOs (refilled once through a keeper fd), Unix sockets (stream and datagram pairs,
//! listeners and the connections made through them, with their queued data), loopback
//! TCP connections, and open file descriptions shared by several processes (opened
//! once, handed to every holder).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use torpor_image::meta::{FdKind, FdMeta, ProcessMeta};
use torpor_image::store::SharedFile;

use super::{files::reopen, ioe, last_os, RestoreError};

fn changed(path: &str, why: &'static str) -> RestoreError {
    RestoreError::FileChanged {
        path: path.to_string(),
        why,
    }
}

fn other(what: String, msg: String) -> RestoreError {
    RestoreError::Io {
        what,
        source: std::io::Error::other(msg),
    }
}

fn owned(fd: i32, what: &str) -> Result<OwnedFd, RestoreError> {
    if fd < 0 {
        return Err(last_os(what));
    }
    // SAFETY: a fresh fd returned by the kernel, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Named FIFOs: each FIFO of the generation is opened once read-write (a keeper: the
/// holders' own opens then never block) and refilled with its buffered data. The
/// keepers live until the processes have their fds (they are closed before stage 2).
pub(super) fn fifo_keepers(
    metas: &[&ProcessMeta],
    gen_dir: &Path,
) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
    let mut out = HashMap::new();
    for f in metas.iter().flat_map(|m| &m.fds) {
        if f.kind != FdKind::Fifo || out.contains_key(&f.pipe_ino) {
            continue;
        }
        match std::fs::symlink_metadata(&f.path) {
            Ok(md) if md.file_type().is_fifo() => {}
            Ok(_) => return Err(changed(&f.path, "is no longer a named FIFO")),
            Err(_) => {
                // Removed since: a new FIFO in its place.
                let c = CString::new(f.path.as_str())
                    .map_err(|_| changed(&f.path, "path contains NUL"))?;
                // SAFETY: mkfifo with a NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(last_os(&f.path));
                }
            }
        }
        let c = CString::new(f.path.as_str()).map_err(|_| changed(&f.path, "path contains NUL"))?;
        // SAFETY: open with a NUL-terminated path; O_RDWR on a FIFO never blocks.
        let keeper = owned(
            unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) },
            &f.path,
        )?;
        refill_stream(&keeper, &gen_dir.join("pipes").join(f.pipe_ino.to_string()))?;
        out.insert(f.pipe_ino, keeper);
    }
    Ok(out)
}

/// Writes the saved data `path` (if any) into a pipe, FIFO or stream socket.
fn refill_stream(fd: &OwnedFd, path: &Path) -> Result<(), RestoreError> {
    let Ok(data) = std::fs::read(path) else {
        return Ok(());
    };
    // SAFETY: F_GETFL/F_GETPIPE_SZ/F_SETPIPE_SZ on our own fd (EBADF/EINVAL on sockets).
    unsafe {
        let size = libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ);
        if size > 0 && (size as usize) < data.len() {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, data.len() as i32);
        }
    }
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writes from our buffer to our own fd (non-blocking for sockets).
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                data[done..].as_ptr() as *const libc::c_void,
                data.len() - done,
            )
        };
        if n <= 0 {
            return Err(last_os(&format!("refilling {}", path.display())));
        }
        done += n as usize;
    }
    Ok(())
}

/// Sends again the datagrams saved in `path` (each a 4-byte little-endian length and
/// its bytes) from `from`.
fn refill_dgrams(from: &OwnedFd, path: &Path) -> Result<(), RestoreError> {
    let Ok(data) = std::fs::read(path) else {
        return Ok(());
    };
    let mut at = 0usize;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        at += 4;
        let Some(d) = data.get(at..at + len) else {
            return Err(RestoreError::NotCaptured {
                path: path.display().to_string(),
            });
        };
        // SAFETY: sends one datagram from our buffer on our own socket.
        let n = unsafe {
            libc::send(
                from.as_raw_fd(),
                d.as_ptr() as *const libc::c_void,
                d.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n != d.len() as isize {
            return Err(last_os("refilling a datagram socket pair"));
        }
        at += len;
    }
    Ok(())
}

fn pair(ty: i32) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let mut sv = [-1i32; 2];
    // SAFETY: socketpair writes two fds.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0
    {
        return Err(last_os("socketpair"));
    }
    Ok((owned(sv[0], "socketpair")?, owned(sv[1], "socketpair")?))
}

/// A Unix socket address for `name` (a path, or `@name` for an abstract one).
fn unix_addr(name: &str) -> Result<(libc::sockaddr_un, libc::socklen_t), RestoreError> {
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, lead) = match name.strip_prefix('@') {
        Some(abs) => (abs.as_bytes(), 1usize),
        None => (name.as_bytes(), 0usize),
    };
    if lead + bytes.len() >= a.sun_path.len() {
        return Err(changed(name, "is too long for a Unix socket name"));
    }
    for (i, &b) in bytes.iter().enumerate() {
        a.sun_path[lead + i] = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>()
        + lead
        + bytes.len()
        + if lead == 0 { 1 } else { 0 };
    Ok((a, len as libc::socklen_t))
}

/// Runs `f` with `dir` as the working directory when `name` is a relative path (it was
/// bound relative to the program's directory), then goes back.
fn in_dir<T>(
    dir: &str,
    name: &str,
    f: impl FnOnce() -> Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    if name.starts_with('/') || name.starts_with('@') {
        return f();
    }
    // SAFETY: open with a NUL-terminated path; O_PATH needs no read permission.
    let here = owned(
        unsafe {
            libc::open(
                c".".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        },
        "working directory",
    )?;
    std::env::set_current_dir(dir).map_err(ioe(format!("cwd {dir}")))?;
    let r = f();
    // SAFETY: fchdir to the directory we held open.
    unsafe { libc::fchdir(here.as_raw_fd()) };
    r
}

/// A new Unix socket of type `ty` bound to `name`. A socket file left at a path name
/// is removed first, only if it is a socket owned by the restoring user.
fn unix_bound(name: &str, ty: i32) -> Result<OwnedFd, RestoreError> {
    if !name.starts_with('@') {
        if let Ok(md) = std::fs::symlink_metadata(name) {
            // SAFETY: getuid cannot fail.
            let me = unsafe { libc::getuid() };
            if !md.file_type().is_socket() || md.uid() != me {
                return Err(changed(
                    name,
                    "exists and is not a socket file of the restoring user (the socket cannot be bound there again)",
                ));
            }
            std::fs::remove_file(name).map_err(ioe(format!("stale socket {name}")))?;
        }
    }
    // SAFETY: a new socket.
    let fd = owned(
        unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    let (a, len) = unix_addr(name)?;
    // SAFETY: bind our socket to a valid address.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &a as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    } != 0
    {
        return Err(last_os(&format!("binding {name}")));
    }
    Ok(fd)
}

/// A listening Unix socket bound to `name` again (see [`unix_bound`]).
fn unix_listener(name: &str, backlog: u32) -> Result<OwnedFd, RestoreError> {
    let fd = unix_bound(name, libc::SOCK_STREAM)?;
    // SAFETY: listen on our bound socket.
    unsafe {
        if libc::listen(fd.as_raw_fd(), backlog.max(1) as i32) != 0 {
            return Err(last_os(&format!("listen on {name}")));
        }
    }
    Ok(fd)
}

/// A new client socket connected to the listener bound to `name`.
fn unix_connect(name: &str) -> Result<OwnedFd, RestoreError> {
    // SAFETY: a new socket.
    let fd = owned(
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    connect_to(&fd, name)?;
    Ok(fd)
}

/// Connects `fd` to the socket bound to `name`.
fn connect_to(fd: &OwnedFd, name: &str) -> Result<(), RestoreError> {
    let (a, len) = unix_addr(name)?;
    // SAFETY: connect our socket to a valid address.
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &a as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    } != 0
    {
        return Err(last_os(&format!("connecting to {name}")));
    }
    Ok(())
}

fn accept(listener: &OwnedFd, what: &str) -> Result<OwnedFd, RestoreError> {
    // SAFETY: accept4 on our listener; the new connection is already queued.
    owned(
        unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        },
        what,
    )
}

/// Every Unix socket of the generation, by inode: listeners bound again; connected
/// stream pairs through their listener (connect, accept) when it is in the tree, else
/// with `socketpair`; datagram pairs with `socketpair`; connections still waiting to
/// be accepted connected again (in inode order); then the data queued for each end
/// sent from the other, and `shutdown` applied again.
pub(super) fn unix_sockets<'a>(
    metas: &[&'a ProcessMeta],
    gen_dir: &Path,
) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
    let mut ends: BTreeMap<u64, (&'a FdMeta, &'a str)> = BTreeMap::new();
    for m in metas {
        for f in &m.fds {
            if matches!(
                f.kind,
                FdKind::UnixStream
                    | FdKind::UnixDgram
                    | FdKind::UnixSeqpacket
                    | FdKind::UnixDgramNamed
                    | FdKind::UnixListen
            ) && f.dup_of.is_none()
            {
                ends.entry(f.pipe_ino)
                    .or_insert((f, m.process.cwd.as_str()));
            }
        }
    }
    let mut out: HashMap<u64, OwnedFd> = HashMap::new();
    // Buffer sizes as the program had them, before any data is sent again.
    let bufs = |fd: &OwnedFd, f: &FdMeta| {
        for &(l, n, v) in &f.sockopts {
            setopt(fd, l, n, v);
        }
    };
    // Listeners, by name (with the directory relative names are bound in).
    let mut listeners: HashMap<&'a str, (u64, &'a str)> = HashMap::new();
    for (&ino, &(f, cwd)) in ends.iter().filter(|e| e.1 .0.kind == FdKind::UnixListen) {
        let Some(name) = f.sock_name.as_deref() else {
            continue;
        };
        let fd = in_dir(cwd, name, || unix_listener(name, f.backlog))?;
        listeners.insert(name, (ino, cwd));
        out.insert(ino, fd);
    }
    named_dgrams(&ends, gen_dir, &mut out)?;
    let data = |ino: u64| gen_dir.join("pipes").join(ino.to_string());
    for (&a, &(fa, _)) in &ends {
        let records = matches!(fa.kind, FdKind::UnixDgram | FdKind::UnixSeqpacket);
        if !(records || fa.kind == FdKind::UnixStream) || fa.peer_ino == 0 {
            continue;
        }
        let b = fa.peer_ino;
        let Some(&(fb, _)) = ends.get(&b) else {
            continue; // peer outside the checkpoint: stdio (0-2), or refused by end_for
        };
        if a > b || fb.peer_ino != a || fb.kind != fa.kind {
            continue; // each pair once, from its lower inode
        }
        let via = |f: &'a FdMeta| {
            f.sock_name
                .as_deref()
                .and_then(|n| listeners.get(n).map(|l| (n, *l)))
        };
        let (sa, sb) = if fa.kind == FdKind::UnixDgram {
            pair(libc::SOCK_DGRAM)?
        } else if fa.kind == FdKind::UnixSeqpacket {
            pair(libc::SOCK_SEQPACKET)?
        } else {
            match (via(fa), via(fb)) {
                (Some((name, (l, cwd))), _) => {
                    let client = in_dir(cwd, name, || unix_connect(name))?;
                    (accept(&out[&l], name)?, client)
                }
                (None, Some((name, (l, cwd)))) => {
                    let client = in_dir(cwd, name, || unix_connect(name))?;
                    let server = accept(&out[&l], name)?;
                    (client, server)
                }
                (None, None) => pair(libc::SOCK_STREAM)?,
            }
        };
        bufs(&sa, fa);
        bufs(&sb, fb);
        if records {
            refill_dgrams(&sb, &data(a))?;
            refill_dgrams(&sa, &data(b))?;
        } else {
            // SAFETY: non-blocking sends (the data fitted the original buffers).
            unsafe {
                libc::fcntl(sb.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
                libc::fcntl(sa.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            }
            refill_stream(&sb, &data(a))?;
            refill_stream(&sa, &data(b))?;
        }
        out.insert(a, sa);
        out.insert(b, sb);
    }
    // Connections that were waiting in a listener's queue.
    for (&ino, &(f, _)) in &ends {
        if f.kind != FdKind::UnixStream || f.peer_ino != 0 {
            continue;
        }
        let Some(name) = f.peer_name.as_deref() else {
            continue;
        };
        let Some(&(_, cwd)) = listeners.get(name) else {
            return Err(other(
                format!("socket:[{ino}]"),
                format!("waits to be accepted by {name}, which is not in the checkpoint"),
            ));
        };
        let fd = in_dir(cwd, name, || unix_connect(name))?;
        bufs(&fd, f);
        out.insert(ino, fd);
    }
    for (ino, (f, _)) in &ends {
        if f.shutdown == 0 {
            continue;
        }
        if let Some(fd) = out.get(ino) {
            let how = match f.shutdown & 3 {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                _ => libc::SHUT_RDWR,
            };
            // SAFETY: shutdown on our own socket.
            unsafe { libc::shutdown(fd.as_raw_fd(), how) };
        }
    }
    Ok(out)
}

/// Sends the datagram `d` from `from` to the address `to`.
fn send_dgram(from: &OwnedFd, d: &[u8], to: &(libc::sockaddr_un, libc::socklen_t)) -> isize {
    // SAFETY: sends one datagram from our buffer on our own socket to a valid address.
    unsafe {
        libc::sendto(
            from.as_raw_fd(),
            d.as_ptr() as *const libc::c_void,
            d.len(),
            libc::MSG_DONTWAIT,
            &to.0 as *const libc::sockaddr_un as *const libc::sockaddr,
            to.1,
        )
    }
}

fn dgram_socket() -> Result<OwnedFd, RestoreError> {
    // SAFETY: a new socket.
    owned(
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )
}

/// Named (and unpaired unbound) Unix datagram sockets: each bound to its name again;
/// the datagrams queued on each sent to it again in order, each from the socket of the
/// tree bound to its sender's name, so that `recvfrom` reports the same address (from
/// a temporary unbound socket for an unbound sender), before any socket is connected
/// (a connected socket takes datagrams only from its peer); then each connected to
/// its peer again (first those whose peer is connected elsewhere: the peer must not
/// be connected yet), and a path name the program had removed removed again.
fn named_dgrams(
    ends: &BTreeMap<u64, (&FdMeta, &str)>,
    gen_dir: &Path,
    out: &mut HashMap<u64, OwnedFd>,
) -> Result<(), RestoreError> {
    let dgrams: Vec<(u64, &FdMeta, &str)> = ends
        .iter()
        .filter(|e| e.1 .0.kind == FdKind::UnixDgramNamed)
        .map(|(&ino, &(f, cwd))| (ino, f, cwd))
        .collect();
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    for &(ino, f, cwd) in &dgrams {
        let fd = match f.sock_name.as_deref() {
            Some(name) => {
                if f.name_unlinked
                    && in_dir(cwd, name, || Ok(std::fs::symlink_metadata(name).is_ok()))?
                {
                    return Err(changed(
                        name,
                        "was removed by the program after binding a datagram socket there, and exists again",
                    ));
                }
                by_name.insert(name, ino);
                in_dir(cwd, name, || unix_bound(name, libc::SOCK_DGRAM))?
            }
            None => dgram_socket()?,
        };
        for &(l, n, v) in &f.sockopts {
            setopt(&fd, l, n, v);
        }
        out.insert(ino, fd);
    }
    let mut temp: Option<OwnedFd> = None;
    for &(ino, f, cwd) in &dgrams {
        let data = std::fs::read(gen_dir.join("pipes").join(ino.to_string())).unwrap_or_default();
        if data.is_empty() {
            continue;
        }
        let from =
            std::fs::read(gen_dir.join("pipes").join(format!("{ino}.from"))).unwrap_or_default();
        let Some(name) = f.sock_name.as_deref() else {
            return Err(other(
                format!("socket:[{ino}]"),
                "datagrams are queued on an unbound datagram socket that is not a socketpair end"
                    .into(),
            ));
        };
        let to = unix_addr(name)?;
        let bad = || RestoreError::NotCaptured {
            path: format!("pipes/{ino}"),
        };
        in_dir(cwd, name, || {
            let (mut at, mut fa) = (0usize, 0usize);
            while at + 4 <= data.len() {
                let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
                    as usize;
                let d = data.get(at + 4..at + 4 + len).ok_or_else(bad)?;
                at += 4 + len;
                let l = from
                    .get(fa..fa + 2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                    .ok_or_else(bad)?;
                let raw = from.get(fa + 2..fa + 2 + l).ok_or_else(bad)?;
                fa += 2 + l;
                let n = match crate::capture::unix::name_text(raw) {
                    Some(sender) => {
                        let Some(src) = by_name.get(sender.as_str()).and_then(|i| out.get(i))
                        else {
                            return Err(other(
                                format!("socket:[{ino}]"),
                                format!("a datagram queued on {name} was sent from {sender}, which is not in the checkpoint"),
                            ));
                        };
                        send_dgram(src, d, &to)
                    }
                    None => {
                        if temp.is_none() {
                            temp = Some(dgram_socket()?);
                        }
                        let mut n = temp.as_ref().map_or(-1, |t| send_dgram(t, d, &to));
                        if n < 0
                            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
                        {
                            // The temporary sender's buffer is full: another one.
                            let t = dgram_socket()?;
                            n = send_dgram(&t, d, &to);
                            temp = Some(t);
                        }
                        n
                    }
                };
                if n != d.len() as isize {
                    return Err(last_os(&format!("refilling the datagram socket {name}")));
                }
            }
            Ok(())
        })?;
    }
    let elsewhere = |f: &FdMeta| {
        ends.get(&f.peer_ino)
            .is_some_and(|p| p.0.peer_ino != 0 && p.0.peer_ino != f.pipe_ino)
    };
    for first in [true, false] {
        for &(ino, f, _) in &dgrams {
            if f.peer_ino == 0 || elsewhere(f) != first {
                continue;
            }
            let peer = ends
                .get(&f.peer_ino)
                .and_then(|&(p, pcwd)| p.sock_name.as_deref().map(|n| (n, pcwd)));
            let Some((pname, pcwd)) = peer else {
                return Err(other(
                    format!("socket:[{ino}]"),
                    "a datagram socket connected to a socket that is not in the checkpoint".into(),
                ));
            };
            let Some(fd) = out.get(&ino) else {
                continue;
            };
            in_dir(pcwd, pname, || connect_to(fd, pname))?;
        }
    }
    for &(_, f, cwd) in &dgrams {
        if let (true, Some(name)) = (f.name_unlinked, f.sock_name.as_deref()) {
            in_dir(cwd, name, || {
                std::fs::remove_file(name).map_err(ioe(format!("removing {name} again")))
            })?;
        }
    }
    Ok(())
}

/// Open file descriptions shared by several processes: each is opened once (from its
/// first holder's record) and every holder gets a duplicate. Returns the fds and, for
/// each (pid, fd) holder, the index of its fd.
#[allow(clippy::type_complexity)]
pub(super) fn shared_files(
    groups: &[SharedFile],
    procs: &[(i32, &ProcessMeta, &Path)],
) -> Result<(Vec<OwnedFd>, HashMap<(i32, i32), usize>), RestoreError> {
    let mut fds = Vec::new();
    let mut by = HashMap::new();
    for g in groups {
        let holders: Vec<(i32, &FdMeta, &Path)> = g
            .members
            .iter()
            .filter_map(|&(pid, fd)| {
                let (_, meta, dir) = procs.iter().find(|p| p.0 == pid)?;
                let f = meta.fds.iter().find(|f| f.fd == fd)?;
                let own = matches!(f.kind, FdKind::File | FdKind::Deleted | FdKind::Fifo);
                (own && f.dup_of.is_none()).then_some((pid, f, *dir))
            })
            .collect();
        if holders.len() < 2 {
            continue;
        }
        let (_, first, dir) = holders[0];
        let Some(fd) = reopen(first, dir)? else {
            continue;
        };
        for (pid, f, _) in &holders {
            by.insert((*pid, f.fd), fds.len());
        }
        fds.push(fd);
    }
    Ok((fds, by))
}

/// A raw socket address for `a`.
fn inet_addr(a: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        std::net::SocketAddr::V4(v) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v.ip().octets(),
                },
                sin6_scope_id: v.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn sock_addr(name: Option<&str>, what: u64) -> Result<std::net::SocketAddr, RestoreError> {
    name.and_then(|n| n.parse().ok()).ok_or_else(|| {
        other(
            format!("socket:[{what}]"),
            "a TCP socket without a valid address".into(),
        )
    })
}

fn setopt(fd: &OwnedFd, level: i32, name: i32, v: i32) {
    // SAFETY: setsockopt with a local int on our own socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &v as *const i32 as *const libc::c_void,
            4,
        )
    };
}

fn tcp_socket(a: &std::net::SocketAddr) -> Result<OwnedFd, RestoreError> {
    let fam = if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a new socket.
    owned(
        unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )
}

/// A TCP listener on `a` (SO_REUSEADDR: connections of the killed run may linger in
/// TIME_WAIT on that port).
fn tcp_listener(a: &std::net::SocketAddr, backlog: u32) -> Result<OwnedFd, RestoreError> {
    let fd = tcp_socket(a)?;
    setopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    if a.is_ipv6() && a.ip().is_unspecified() {
        // Keep the kernel default (dual stack) explicit.
        setopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
    }
    let (ss, len) = inet_addr(a);
    // SAFETY: bind/listen on our socket with a valid address.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            &ss as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        ) != 0
        {
            return Err(last_os(&format!(
                "binding TCP {a} again (is the port taken by another program?)"
            )));
        }
        if libc::listen(fd.as_raw_fd(), backlog.max(1) as i32) != 0 {
            return Err(last_os(&format!("listen on TCP {a}")));
        }
    }
    Ok(fd)
}

fn tcp_connect(to: &std::net::SocketAddr) -> Result<OwnedFd, RestoreError> {
    let fd = tcp_socket(to)?;
    let (ss, len) = inet_addr(to);
    // SAFETY: connect our socket to a valid address (loopback: completes at once).
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &ss as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    } != 0
    {
        return Err(last_os(&format!("connecting to TCP {to}")));
    }
    Ok(fd)
}

/// Sends `path`'s saved bytes on a TCP socket, waiting while the peer's window is
/// full (loopback: the peer's kernel takes them at once).
fn refill_tcp(fd: &OwnedFd, path: &Path) -> Result<(), RestoreError> {
    let Ok(data) = std::fs::read(path) else {
        return Ok(());
    };
    let t0 = std::time::Instant::now();
    let mut done = 0;
    while done < data.len() {
        // SAFETY: a non-blocking send from our buffer on our own socket.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data[done..].as_ptr() as *const libc::c_void,
                data.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        if t0.elapsed() > std::time::Duration::from_secs(5) {
            return Err(last_os(&format!("refilling {}", path.display())));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// Every TCP socket of the generation, by inode: listeners bound again on their
/// address and port; each established connection recreated through the tree's listener
/// on its server's port (or a temporary listener on one end's address when the tree
/// has none), its data sent again from the other end; connections that were waiting
/// in a listener's queue connected again (in inode order) and left there. The client
/// ends get new ports.
pub(super) fn tcp_sockets(
    metas: &[&ProcessMeta],
    gen_dir: &Path,
) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
    let mut ends: BTreeMap<u64, &FdMeta> = BTreeMap::new();
    for f in metas.iter().flat_map(|m| &m.fds) {
        if matches!(f.kind, FdKind::Tcp | FdKind::TcpListen) && f.dup_of.is_none() {
            ends.entry(f.pipe_ino).or_insert(f);
        }
    }
    let mut out: HashMap<u64, OwnedFd> = HashMap::new();
    let apply = |fd: &OwnedFd, f: &FdMeta| {
        for &(l, n, v) in &f.sockopts {
            setopt(fd, l, n, v);
        }
    };
    let mut listeners: Vec<(u64, std::net::SocketAddr)> = Vec::new();
    for (&ino, f) in ends.iter().filter(|e| e.1.kind == FdKind::TcpListen) {
        let a = sock_addr(f.sock_name.as_deref(), ino)?;
        let fd = tcp_listener(&a, f.backlog)?;
        apply(&fd, f);
        listeners.push((ino, a));
        out.insert(ino, fd);
    }
    // The tree's listener that accepted connections to `local`, if any.
    let listener_for = |local: &std::net::SocketAddr| {
        listeners
            .iter()
            .find(|(_, l)| {
                l.port() == local.port() && (l.ip() == local.ip() || l.ip().is_unspecified())
            })
            .map(|l| l.0)
    };
    let data = |ino: u64| gen_dir.join("pipes").join(ino.to_string());
    for (&a, fa) in &ends {
        if fa.kind != FdKind::Tcp || fa.peer_ino == 0 {
            continue;
        }
        let b = fa.peer_ino;
        let Some(&fb) = ends.get(&b) else {
            continue;
        };
        if a > b || fb.peer_ino != a {
            continue;
        }
        let la = sock_addr(fa.sock_name.as_deref(), a)?;
        let lb = sock_addr(fb.sock_name.as_deref(), b)?;
        let (server_is_a, server_addr) = match (listener_for(&la), listener_for(&lb)) {
            (Some(_), _) => (true, la),
            (None, Some(_)) => (false, lb),
            (None, None) => (true, la),
        };
        let server_ino = if server_is_a { a } else { b };
        let (server, client) = match listener_for(&server_addr) {
            Some(l) => {
                let client = tcp_connect(&server_addr)?;
                (accept(&out[&l], "TCP accept")?, client)
            }
            None => {
                let temp = tcp_listener(&server_addr, 1)?;
                let client = tcp_connect(&server_addr)?;
                (accept(&temp, "TCP accept")?, client)
            }
        };
        let (sa, sb) = if server_ino == a {
            (server, client)
        } else {
            (client, server)
        };
        apply(&sa, fa);
        apply(&sb, fb);
        refill_tcp(&sb, &data(a))?;
        refill_tcp(&sa, &data(b))?;
        out.insert(a, sa);
        out.insert(b, sb);
    }
    for (&ino, f) in &ends {
        if f.kind != FdKind::Tcp || f.peer_ino != 0 {
            continue;
        }
        let to = sock_addr(f.peer_name.as_deref(), ino)?;
        if listener_for(&to).is_none() {
            return Err(other(
                format!("socket:[{ino}]"),
                format!("waits to be accepted by TCP {to}, which is not in the checkpoint"),
            ));
        }
        let fd = tcp_connect(&to)?;
        apply(&fd, f);
        out.insert(ino, fd);
    }
    Ok(out)
}
