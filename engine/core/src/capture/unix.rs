//! Capture, Unix sockets: what the kernel's sock_diag interface says about one socket
//! (type, state, name, peer), so that a socket pair between processes of a tree can
//! be recreated and anything else refused.

/// One Unix socket as sock_diag reports it.
#[derive(Debug, Clone, Default)]
pub struct UnixInfo {
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub kind: u8,
    /// TCP_ESTABLISHED (1) for connected sockets, TCP_LISTEN (10) for listeners.
    pub state: u8,
    /// Bound to a name (path or abstract).
    pub named: bool,
    /// The name: a path, or `@name` for an abstract one.
    pub name: Option<String>,
    /// Inode of the peer, 0 if none.
    pub peer: u64,
    /// Listeners: inodes of the connections waiting to be accepted, in order.
    pub icons: Vec<u64>,
    /// Listeners: (queued connections, backlog); others: (bytes to read, bytes sent
    /// and not yet read by the peer).
    pub rqlen: (u32, u32),
    /// `shutdown` done on this socket (bit 0 reading, bit 1 writing).
    pub shutdown: u8,
    /// Bound to a path: the inode of the socket file the bind created.
    pub vfs_ino: u64,
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 16;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

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

/// A sun_path as text: a path, or `@name` for an abstract name (leading NUL).
pub fn name_text(raw: &[u8]) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    if raw[0] == 0 {
        return Some(format!("@{}", String::from_utf8_lossy(&raw[1..])));
    }
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
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
    req[28..32].copy_from_slice(
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN)
            .to_ne_bytes(),
    );
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
    let mut buf = vec![0u8; 1 << 16];
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
        let data = &b[off + 4..off + len];
        match ty {
            UNIX_DIAG_NAME => {
                info.named = !data.is_empty();
                info.name = name_text(data);
            }
            UNIX_DIAG_VFS if data.len() >= 8 => {
                // unix_diag_vfs: inode, device (the kernel's encoding).
                info.vfs_ino = u32::from_ne_bytes(data[..4].try_into().ok()?) as u64;
            }
            UNIX_DIAG_PEER if len >= 8 => {
                info.peer = u32::from_ne_bytes(data[..4].try_into().ok()?) as u64;
            }
            UNIX_DIAG_ICONS => {
                info.icons = data
                    .chunks_exact(4)
                    .filter_map(|c| c.try_into().ok().map(u32::from_ne_bytes))
                    .map(u64::from)
                    .collect();
            }
            UNIX_DIAG_RQLEN if data.len() >= 8 => {
                info.rqlen = (
                    u32::from_ne_bytes(data[..4].try_into().ok()?),
                    u32::from_ne_bytes(data[4..8].try_into().ok()?),
                );
            }
            UNIX_DIAG_SHUTDOWN if !data.is_empty() => {
                // RCV_SHUTDOWN = 1, SEND_SHUTDOWN = 2.
                info.shutdown = data[0] & 3;
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(info)
}

/// The socket's buffer sizes as `setsockopt` arguments (the kernel reports twice what
/// was set): a refill at restore needs the room the program had.
pub fn buffer_opts(fd: i32) -> Vec<(i32, i32, i32)> {
    [libc::SO_SNDBUF, libc::SO_RCVBUF]
        .iter()
        .filter_map(|&name| {
            let mut v = 0i32;
            let mut l = 4u32;
            // SAFETY: getsockopt into a local of the right size.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    name,
                    &mut v as *mut i32 as *mut libc::c_void,
                    &mut l,
                )
            };
            (r == 0 && v > 0).then_some((libc::SOL_SOCKET, name, v / 2))
        })
        .collect()
}

/// The name of the socket `fd` is connected to (`getpeername`), as text.
pub fn peer_name(fd: i32) -> Option<String> {
    // SAFETY: a zeroed sockaddr_un is valid; getpeername fills it.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getpeername into our local with its size.
    if unsafe {
        libc::getpeername(
            fd,
            &mut a as *mut libc::sockaddr_un as *mut libc::sockaddr,
            &mut len,
        )
    } != 0
    {
        return None;
    }
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let raw: Vec<u8> = a.sun_path[..n.min(a.sun_path.len())]
        .iter()
        .map(|&c| c as u8)
        .collect();
    name_text(&raw)
}
