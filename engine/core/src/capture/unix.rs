//! Capture, Unix sockets: what the kernel's sock_diag interface says about one socket
//! (type, state, name, peer), so that a socket pair between processes of a tree can
//! be recreated and anything else refused.

/// One Unix socket as sock_diag reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixInfo {
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub kind: u8,
    /// TCP_ESTABLISHED (1) for connected sockets, TCP_LISTEN (10) for listeners.
    pub state: u8,
    /// Bound to a name (path or abstract).
    pub named: bool,
    /// Inode of the peer, 0 if none.
    pub peer: u64,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;

/// Asks sock_diag about the Unix socket with inode `ino`.
pub fn unix_info(ino: u64) -> Option<UnixInfo> {
    // SAFETY: a netlink socket of our own, closed below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    let r = query(fd, ino);
    // SAFETY: closes our netlink socket.
    unsafe { libc::close(fd) };
    r
}

fn query(fd: i32, ino: u64) -> Option<UnixInfo> {
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req[24..28].copy_from_slice(&(ino as u32).to_ne_bytes());
    req[28..32].copy_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]); // no cookie
                                             // SAFETY: sends our request buffer to the kernel (netlink address: pid 0).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd,
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent != req.len() as isize {
        return None;
    }
    let mut buf = [0u8; 8192];
    // SAFETY: receives into our buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n < 32 {
        return None;
    }
    let b = &buf[..n as usize];
    let msg_len = u32::from_ne_bytes(b[0..4].try_into().ok()?) as usize;
    let msg_type = u16::from_ne_bytes(b[4..6].try_into().ok()?);
    if msg_type != SOCK_DIAG_BY_FAMILY || msg_len > b.len() {
        return None; // NLMSG_ERROR: not a Unix socket, or unknown
    }
    // unix_diag_msg: family, type, state, pad, ino, cookie[2].
    let mut info = UnixInfo {
        kind: b[17],
        state: b[18],
        ..UnixInfo::default()
    };
    let mut off = 32;
    while off + 4 <= msg_len {
        let len = u16::from_ne_bytes(b[off..off + 2].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(b[off + 2..off + 4].try_into().ok()?) & 0x3fff;
        if len < 4 || off + len > msg_len {
            break;
        }
        match ty {
            UNIX_DIAG_NAME => info.named = len > 4,
            UNIX_DIAG_PEER if len >= 8 => {
                info.peer = u32::from_ne_bytes(b[off + 4..off + 8].try_into().ok()?) as u64;
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(info)
}
