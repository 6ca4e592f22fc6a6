//! Checks on the tree's sockets: every peer, listener and waiting client inside the
//! tree, and TCP data out of the senders' queues before the peek; pause-time failures.

use super::*;
use torpor_image::meta::FdMeta;

/// Whether `client` (a connection its server has not accepted yet: `peer_ino` 0) waits
/// in the queue of `listener`.
pub fn waits_on(listener: &FdMeta, client: &FdMeta) -> bool {
    if client.peer_ino != 0 || client.peer_name.is_none() {
        return false;
    }
    match (listener.kind, client.kind) {
        (FdKind::UnixListen, FdKind::UnixStream) => listener.sock_name == client.peer_name,
        (FdKind::TcpListen, FdKind::Tcp) => {
            let split = |s: &str| {
                s.rsplit_once(':')
                    .map(|(a, p)| (a.to_string(), p.to_string()))
            };
            let (Some((la, lp)), Some((ca, cp))) = (
                listener.sock_name.as_deref().and_then(split),
                client.peer_name.as_deref().and_then(split),
            ) else {
                return false;
            };
            lp == cp && (la == ca || la == "0.0.0.0" || la == "[::]")
        }
        _ => false,
    }
}

/// After the writers: every socket above fd 2 must be reachable from the tree: its
/// peer in the tree, the listener it waits on in the tree, every connection a
/// listener holds from a client in the tree, and every bound sender of a queued
/// datagram in the tree.
pub fn check_sockets(socks: &[(i32, FdMeta)]) -> Result<(), String> {
    for (pid, f) in socks.iter().filter(|s| s.1.fd > 2) {
        if f.kind == FdKind::UnixDgramNamed {
            check_dgram(*pid, f, socks)?;
            continue;
        }
        let connected = matches!(
            f.kind,
            FdKind::UnixStream | FdKind::UnixDgram | FdKind::UnixSeqpacket | FdKind::Tcp
        );
        if connected && f.peer_ino != 0 && !socks.iter().any(|(_, o)| o.pipe_ino == f.peer_ino) {
            return Err(format!(
                "process {pid} fd {} is a socket (socket:[{}]) whose peer is outside the checkpointed process tree; such sockets are not supported",
                f.fd, f.pipe_ino
            ));
        }
        if connected && f.peer_ino == 0 && !socks.iter().any(|(_, l)| waits_on(l, f)) {
            return Err(format!(
                "process {pid} fd {} is a connection to {} not yet accepted by its listener, which is outside the checkpointed process tree",
                f.fd,
                f.peer_name.as_deref().unwrap_or("?")
            ));
        }
        if matches!(f.kind, FdKind::UnixListen | FdKind::TcpListen) {
            let mut clients: Vec<u64> = socks
                .iter()
                .filter(|(_, c)| waits_on(f, c))
                .map(|(_, c)| c.pipe_ino)
                .collect();
            clients.sort_unstable();
            clients.dedup();
            if clients.len() < f.queued as usize {
                return Err(format!(
                    "process {pid} fd {} listens on {} with {} connections waiting to be accepted from clients outside the checkpointed process tree",
                    f.fd,
                    f.sock_name.as_deref().unwrap_or("?"),
                    f.queued as usize - clients.len()
                ));
            }
        }
    }
    Ok(())
}

/// A named (or unbound, unpaired) Unix datagram socket: the socket it is connected to
/// is a named socket of the tree, and each bound socket that sent a datagram still
/// queued on it is a socket of the tree (its name is what `recvfrom` reports).
fn check_dgram(pid: i32, f: &FdMeta, socks: &[(i32, FdMeta)]) -> Result<(), String> {
    let me = || {
        format!(
            "process {pid} fd {} (a Unix datagram socket{})",
            f.fd,
            f.sock_name
                .as_deref()
                .map(|n| format!(" bound to {n}"))
                .unwrap_or_default()
        )
    };
    if f.peer_ino != 0 {
        match socks.iter().find(|(_, o)| o.pipe_ino == f.peer_ino) {
            None => {
                return Err(format!(
                    "{} is connected to {} (socket:[{}]), which is outside the checkpointed process tree; such sockets are not supported",
                    me(),
                    f.peer_name.as_deref().unwrap_or("an unnamed socket"),
                    f.peer_ino
                ))
            }
            Some((_, p)) if p.sock_name.is_none() => {
                return Err(format!(
                    "{} is connected to an unnamed socket that is not its socketpair peer; it cannot be connected again",
                    me()
                ))
            }
            Some(_) => {}
        }
    }
    for from in &f.dgram_from {
        let known = socks
            .iter()
            .any(|(_, o)| o.kind == FdKind::UnixDgramNamed && o.sock_name.as_ref() == Some(from));
        if !known {
            return Err(format!(
                "{} holds datagrams sent from {from}, a socket that is closed or outside the checkpointed process tree: their sender address cannot be given back at restore; the next checkpoint retries once they are read",
                me()
            ));
        }
    }
    Ok(())
}

/// A pause-time failure on one fd (-1: not about one fd) and its reason.
pub type FdError = (i32, &'static str);

/// The message for a pause-time failure, once the program runs again.
pub fn fd_error_text((fd, why): FdError) -> String {
    if fd < 0 {
        why.to_string()
    } else {
        format!("fd {fd}: {why}")
    }
}

/// TCP connections of this process: what it sent must have left its send queue before
/// it reports itself stopped, so that the receivers' queues (peeked after every process
/// stopped) hold it. Waits up to 1 ms for acknowledgements (on loopback, data that was
/// sent reaches the receiver's queue within microseconds even when its ACK is delayed),
/// and up to 5 ms for data not sent yet; data still unsent then (the receiver's window
/// is full) refuses the checkpoint.
/// Pause-safe.
pub fn tcp_flushed(fds: &[FdSnap]) -> Result<(), FdError> {
    const SIOCOUTQ: libc::c_ulong = 0x5411;
    const SIOCOUTQNSD: libc::c_ulong = 0x894b;
    for s in fds {
        if s.mode & libc::S_IFMT != libc::S_IFSOCK {
            continue;
        }
        let dom = sockopt(s.fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
        if !(dom == libc::AF_INET || dom == libc::AF_INET6)
            || sockopt(s.fd, libc::SOL_SOCKET, libc::SO_TYPE) != libc::SOCK_STREAM
            || sockopt(s.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == 1
        {
            continue;
        }
        let t0 = sys::now_ns();
        loop {
            let (mut outq, mut unsent) = (0i32, 0i32);
            // SAFETY: ioctls that write one int each.
            unsafe {
                if libc::ioctl(s.fd, SIOCOUTQ, &mut outq) != 0 {
                    outq = 0;
                }
                if libc::ioctl(s.fd, SIOCOUTQNSD, &mut unsent) != 0 {
                    unsent = 0;
                }
            }
            let waited = sys::now_ns() - t0;
            if outq == 0 || unsent == 0 && waited > 1_000_000 {
                break;
            }
            if waited > 5_000_000 {
                return Err((
                    s.fd,
                    "data written to a TCP connection is still waiting in the sender (its reader is not keeping up); the next checkpoint retries",
                ));
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000,
            };
            // SAFETY: nanosleep with a valid timespec.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        }
    }
    Ok(())
}

pub(super) fn sockopt(fd: i32, level: i32, opt: i32) -> i32 {
    let mut v = 0i32;
    let mut l = 4u32;
    // SAFETY: getsockopt into a local of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            &mut v as *mut i32 as *mut libc::c_void,
            &mut l,
        )
    };
    if r == 0 {
        v
    } else {
        -1
    }
}
