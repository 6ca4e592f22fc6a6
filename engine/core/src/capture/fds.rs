//! Capture, file descriptors: what each fd is and how a restore brings it back
//! (the pause already took offsets and sizes and copied written files).

use std::fs::File;

use torpor_image::meta::*;
use torpor_image::store::Pending;

use super::{proc_err, read_link, CaptureError, CaptureInput};
use crate::records::{FdSnap, SIDECARS};

/// Describes every fd; fds sharing an open file description are marked as duplicates
/// of the lowest one (`dup_of`), which may be a stdio fd 0-2.
pub(super) fn capture_fds(
    pending: &Pending,
    inp: &CaptureInput,
) -> Result<Vec<FdMeta>, CaptureError> {
    let mut fds = Vec::new();
    // The pause left the tree's socket data in the generation's pipes/ (a tree
    // member writes its image one directory below).
    let pipes = [
        pending.path().join("pipes"),
        pending.path().join("../pipes"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .unwrap_or_default();
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    for (i, s) in inp.fds.iter().enumerate() {
        if (s.fd > 2 || s.internal != 0) && s.launch == 0 {
            // fds sharing one open file description must share it again after restore.
            // A copy of the launch's stdio (a shell saving its stdout at fd 10 around a
            // redirection) becomes a copy of the new launch's.
            let same = inp.fds[..i].iter().find(|o| {
                // SAFETY: kcmp(KCMP_FILE=0) compares two of our own fds.
                let same = unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, o.fd, s.fd) };
                same == 0
            });
            if let Some(o) = same {
                let orig = fds.iter().find(|m: &&FdMeta| m.fd == o.fd).cloned();
                if let Some(mut m) = orig {
                    m.fd = s.fd;
                    m.cloexec = s.fdflags & libc::FD_CLOEXEC != 0;
                    m.dup_of = Some(o.fd);
                    fds.push(m);
                    continue;
                }
            }
        }
        if s.captured == -1 && (s.fd > 2 || s.internal != 0) {
            return Err(CaptureError::NotCaptured {
                fd: s.fd,
                path: read_link(&format!("/proc/self/fd/{}", s.fd)),
                limit: inp.capture_limit,
            });
        }
        let mut m = fd_meta(s, &pipes)?;
        if m.kind == FdKind::Deleted && m.captured.is_none() {
            save_deleted(pending, s.fd)?;
            m.captured = Some(format!("files/fd-{}", s.fd));
        }
        fds.push(m);
    }
    Ok(fds)
}

fn fd_meta(s: &FdSnap, pipes: &std::path::Path) -> Result<FdMeta, CaptureError> {
    let target = read_link(&format!("/proc/self/fd/{}", s.fd));
    let acc = s.flags & libc::O_ACCMODE;
    let mut m = FdMeta {
        fd: s.fd,
        kind: FdKind::File,
        path: target.clone(),
        flags: s.flags as u32,
        cloexec: s.fdflags & libc::FD_CLOEXEC != 0,
        offset: s.offset,
        disposition: FileDisposition::None,
        file: Some(FileId {
            dev: s.dev,
            ino: s.ino,
            size: s.size as u64,
            mtime_sec: s.mtime_sec,
            mtime_nsec: s.mtime_nsec,
        }),
        captured: None,
        dup_of: None,
        absent_sidecars: Vec::new(),
        pipe_ino: 0,
        peer_ino: 0,
        pipe_no_writers: false,
        sock_name: None,
        peer_name: None,
        backlog: 0,
        queued: 0,
        launch: None,
        sockopts: Vec::new(),
        shutdown: 0,
        dgram_from: Vec::new(),
        name_unlinked: false,
    };
    let fmt = s.mode & libc::S_IFMT;
    // The launch's stdio, at its own number or kept at another (a shell's fd 10).
    if s.launch != 0 {
        m.kind = FdKind::Stdio;
        if s.fd as u32 + 1 != s.launch {
            m.launch = Some(s.launch as i32 - 1);
            m.file = None;
            return Ok(m);
        }
        if s.captured == 1 {
            m.captured = Some(format!("files/fd-{}", s.fd));
        } else {
            m.file = None;
        }
        return Ok(m);
    }
    // Anonymous pipes (also at 0-2: a pipe inside the tree is recreated; one to the
    // outside is taken as stdio at restore).
    if fmt == libc::S_IFIFO && target.starts_with("pipe:") {
        m.kind = FdKind::Pipe;
        m.file = None;
        m.pipe_ino = s.ino;
        m.pipe_no_writers = s.no_writers != 0;
        return Ok(m);
    }
    let inside = s.fd > 2 || s.internal != 0;
    // A named FIFO: reopened by path; its buffered data is saved by inode.
    if fmt == libc::S_IFIFO && inside {
        m.kind = FdKind::Fifo;
        m.file = None;
        m.pipe_ino = s.ino;
        return Ok(m);
    }
    if fmt == libc::S_IFSOCK {
        if let Some(k) = socket_meta(s, &mut m, pipes)? {
            m.kind = k;
            m.file = None;
            return Ok(m);
        }
    }
    if !inside {
        m.kind = FdKind::Stdio;
        if s.captured == 1 {
            m.captured = Some(format!("files/fd-{}", s.fd));
        } else {
            m.file = None;
        }
        return Ok(m);
    }
    if fmt == libc::S_IFREG {
        if let Some(p) = target.strip_suffix(" (deleted)") {
            m.kind = FdKind::Deleted;
            m.path = p.to_string();
            m.disposition = FileDisposition::Captured;
            if s.captured == 1 {
                m.captured = Some(format!("files/fd-{}", s.fd));
            }
        } else if acc == libc::O_RDONLY {
            m.disposition = FileDisposition::Verify;
        } else if s.flags & libc::O_APPEND != 0 || (acc == libc::O_WRONLY && s.offset == s.size) {
            m.disposition = FileDisposition::Truncate;
        } else {
            m.disposition = FileDisposition::Captured;
            if s.captured == 1 {
                m.captured = Some(format!("files/fd-{}", s.fd));
            }
            m.absent_sidecars = SIDECARS
                .iter()
                .enumerate()
                .filter(|(i, _)| s.sidecars & (1 << i) == 0)
                .map(|(_, n)| n.to_string())
                .collect();
        }
    } else if fmt == libc::S_IFDIR {
        m.kind = FdKind::Directory;
        m.file = None;
    } else if fmt == libc::S_IFCHR
        && matches!(
            target.as_str(),
            "/dev/null" | "/dev/zero" | "/dev/full" | "/dev/random" | "/dev/urandom"
        )
    {
        m.kind = FdKind::Device;
        m.file = None;
    } else {
        let why = match fmt {
            libc::S_IFSOCK => {
                "only Unix stream, datagram and seqpacket socket pairs, named Unix datagram sockets, listening Unix stream sockets and their connections, and loopback TCP inside the tree are supported"
            }
            libc::S_IFCHR => "character devices other than null/zero/full/random/urandom",
            _ => "unsupported file kind",
        };
        return Err(CaptureError::UnsupportedFd {
            fd: s.fd,
            target,
            why,
        });
    }
    Ok(m)
}

/// Classifies a socket: which kind of socket the tree restore can recreate, with its
/// names and state filled into `m`; `None` for one it cannot (refused by the caller,
/// or stdio at 0-2).
fn socket_meta(
    s: &FdSnap,
    m: &mut FdMeta,
    pipes: &std::path::Path,
) -> Result<Option<FdKind>, CaptureError> {
    let Some(u) = super::unix::unix_info(s.ino) else {
        return super::tcp::tcp_meta(s, m);
    };
    const ESTABLISHED: u8 = 1;
    const LISTEN: u8 = 10;
    m.pipe_ino = s.ino;
    m.shutdown = u.shutdown;
    m.sockopts = super::unix::buffer_opts(s.fd);
    let stream = u.kind == libc::SOCK_STREAM as u8;
    if stream && u.state == LISTEN && u.named {
        m.sock_name = u.name;
        m.queued = u.rqlen.0;
        m.backlog = u.rqlen.1;
        return Ok(Some(FdKind::UnixListen));
    }
    if stream && u.state == ESTABLISHED && u.peer != 0 {
        m.sock_name = u.name;
        m.peer_ino = u.peer;
        return Ok(Some(FdKind::UnixStream));
    }
    if stream && u.state == ESTABLISHED {
        // Connected to a listener that has not accepted it yet (the kernel's embryo
        // socket has no inode): the listener's name is the peer name.
        let Some(peer) = super::unix::peer_name(s.fd) else {
            return Ok(None);
        };
        if u.rqlen.1 > 0 {
            return Err(CaptureError::UnsupportedFd {
                fd: s.fd,
                target: format!("socket:[{}] connected to {peer}", s.ino),
                why: "data was sent on a connection its server has not accepted yet (it cannot be read back without accepting it); the next checkpoint retries",
            });
        }
        m.sock_name = u.name;
        m.peer_name = Some(peer);
        return Ok(Some(FdKind::UnixStream));
    }
    if u.kind == libc::SOCK_DGRAM as u8 {
        // One end of an unnamed pair: neither end bound, each the other's peer.
        let pair = !u.named
            && u.peer != 0
            && super::unix::unix_info(u.peer).is_some_and(|p| !p.named && p.peer == s.ino);
        m.peer_ino = u.peer;
        if pair {
            return Ok(Some(FdKind::UnixDgram));
        }
        if s.fd <= 2 && s.internal == 0 {
            return Ok(None); // the launch's stdio (a socket to a logger outside)
        }
        m.name_unlinked = u.named
            && u.name.as_deref().is_some_and(|n| !n.starts_with('@'))
            && !u.name.as_deref().is_some_and(|n| {
                std::fs::symlink_metadata(n).is_ok_and(|md| {
                    std::os::unix::fs::MetadataExt::ino(&md) & 0xffff_ffff == u.vfs_ino
                })
            });
        m.sock_name = u.name;
        if u.peer != 0 {
            m.peer_name = super::unix::peer_name(s.fd);
        }
        m.dgram_from = dgram_senders(pipes, s.ino);
        return Ok(Some(FdKind::UnixDgramNamed));
    }
    if u.kind == libc::SOCK_SEQPACKET as u8 && u.state == ESTABLISHED && u.peer != 0 && !u.named {
        m.peer_ino = u.peer;
        return Ok(Some(FdKind::UnixSeqpacket));
    }
    Ok(None)
}

/// The names of the bound sockets whose datagrams were queued on socket `ino` at the
/// pause (`pipes/<ino>.from`, written by the agent), each once.
fn dgram_senders(pipes: &std::path::Path, ino: u64) -> Vec<String> {
    let Ok(b) = std::fs::read(pipes.join(format!("{ino}.from"))) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    let mut at = 0usize;
    while at + 2 <= b.len() {
        let len = u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        at += 2;
        let Some(raw) = b.get(at..at + len) else {
            break;
        };
        at += len;
        if let Some(n) = super::unix::name_text(raw) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// Name (inside the generation) of the captured contents of a shared writable mapping.
pub fn shared_map_name(major: u32, minor: u32, ino: u64) -> String {
    format!("files/map-{major:x}-{minor:x}-{ino}")
}

/// Copies the contents of a deleted-but-open file from `/proc/self/fd/N` into the generation.
pub fn save_deleted(pending: &Pending, fd: i32) -> Result<(), CaptureError> {
    let dir = pending.path().join("files");
    let _ = std::fs::create_dir(&dir);
    let (mut out, _) = pending.create_file(&format!("files/fd-{fd}"))?;
    let src = File::open(format!("/proc/self/fd/{fd}")).map_err(proc_err("deleted file"))?;
    let mut src = src;
    std::io::copy(&mut src, &mut out).map_err(proc_err("deleted file copy"))?;
    out.sync_all().map_err(proc_err("deleted file fsync"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dgram_senders;

    #[test]
    fn datagram_senders_are_listed_once_without_unbound_ones() {
        let dir = std::env::temp_dir().join(format!("torpor-dgram-from-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Vec::new();
        for raw in [&b"c3.sock"[..], b"", b"\0abs", b"c3.sock", b""] {
            b.extend_from_slice(&(raw.len() as u16).to_le_bytes());
            b.extend_from_slice(raw);
        }
        // A record cut short (a damaged file) ends the list.
        b.extend_from_slice(&9u16.to_le_bytes());
        b.extend_from_slice(b"cut");
        std::fs::write(dir.join("42.from"), &b).unwrap();
        assert_eq!(dgram_senders(&dir, 42), vec!["c3.sock", "@abs"]);
        assert!(dgram_senders(&dir, 43).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
