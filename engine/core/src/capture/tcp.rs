//! Capture, TCP sockets: listening sockets and established loopback connections
//! between processes of a tree, found in `/proc/net/tcp{,6}` by inode (state,
//! addresses, queues, and the inode of the other end).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use torpor_image::meta::{FdKind, FdMeta};

use super::CaptureError;
use crate::records::FdSnap;

const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0a;

/// One line of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, Copy)]
struct Entry {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    tx_queue: u32,
    rx_queue: u32,
    ino: u64,
}

fn addr(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote)) = (addr(w[1]), addr(w[2])) else {
                continue;
            };
            let Some((tx, rx)) = w[4].split_once(':') else {
                continue;
            };
            out.push(Entry {
                local,
                remote,
                state: u8::from_str_radix(w[3], 16).unwrap_or(0),
                tx_queue: u32::from_str_radix(tx, 16).unwrap_or(0),
                rx_queue: u32::from_str_radix(rx, 16).unwrap_or(0),
                ino: w[9].parse().unwrap_or(0),
            });
        }
    }
    out
}

fn loopback(a: &SocketAddr) -> bool {
    match a.ip() {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback() || v.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

fn sockopt(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut v = 0i32;
    let mut l = 4u32;
    // SAFETY: getsockopt into a local of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut i32 as *mut libc::c_void,
            &mut l,
        )
    };
    (r == 0).then_some(v)
}

/// Socket options a restore sets again.
const OPTS: [(i32, i32); 4] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
];

/// A TCP socket the tree restore can recreate (a listener, or an established loopback
/// connection); `None` for a socket that is not TCP. Other TCP states are refused here.
pub(super) fn tcp_meta(s: &FdSnap, m: &mut FdMeta) -> Result<Option<FdKind>, CaptureError> {
    let all = entries();
    let Some(me) = all.iter().find(|e| e.ino == s.ino && s.ino != 0) else {
        return Ok(None);
    };
    let refuse = |why: &'static str| CaptureError::UnsupportedFd {
        fd: s.fd,
        target: format!("socket:[{}] TCP {} -> {}", s.ino, me.local, me.remote),
        why,
    };
    m.pipe_ino = s.ino;
    m.sock_name = Some(me.local.to_string());
    m.sockopts = OPTS
        .iter()
        .filter_map(|&(l, n)| sockopt(s.fd, l, n).map(|v| (l, n, v)))
        .filter(|o| o.2 != 0 || me.state == LISTEN && o.1 == libc::SO_REUSEADDR)
        .collect();
    // The restore binds the listening port again, possibly while connections of the
    // killed run linger in TIME_WAIT on it; those block the bind unless they had
    // SO_REUSEADDR, which they inherit from the socket they were. Set it on the live
    // socket (shared with the program; it only matters for binding); the restore puts
    // the recorded value back on the listener.
    let one = 1i32;
    // SAFETY: setsockopt with a local int on the socket this fd refers to.
    unsafe {
        libc::setsockopt(
            s.fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const i32 as *const libc::c_void,
            4,
        )
    };
    if me.state == LISTEN {
        m.queued = me.rx_queue;
        m.backlog = me.tx_queue;
        return Ok(Some(FdKind::TcpListen));
    }
    if me.state != ESTABLISHED {
        return Err(refuse(
            "only listening TCP sockets and established connections can be checkpointed (this one is connecting, half closed or closing)",
        ));
    }
    if !loopback(&me.local) || !loopback(&me.remote) {
        return Err(refuse(
            "a TCP connection to another host cannot be checkpointed (only loopback connections between processes of the tree)",
        ));
    }
    let Some(peer) = all
        .iter()
        .find(|e| e.local == me.remote && e.remote == me.local && e.state == ESTABLISHED)
    else {
        return Err(refuse(
            "the other end of this loopback TCP connection was not found (closing?)",
        ));
    };
    if peer.ino == 0 && peer.rx_queue > 0 {
        return Err(refuse(
            "data was sent on a connection its server has not accepted yet (it cannot be read back without accepting it); the next checkpoint retries",
        ));
    }
    m.peer_ino = peer.ino;
    m.peer_name = Some(me.remote.to_string());
    Ok(Some(FdKind::Tcp))
}
