//! Opening (and creating) an image directory without trusting anything another user
//! could have planted on the way: every component is opened relative to its parent's
//! held fd with `O_NOFOLLOW`, checked with `fstat` on that fd, and created with
//! `mkdirat` (0700) when missing.
//!
//! The rules, applied to every directory on the path, from `/` down:
//! - it must be owned by root or by the caller;
//! - if it is writable by group or others it must be sticky (like `/tmp` or a site's
//!   1777 image root), so that nobody else can rename or replace what the caller owns in it;
//! - a symlink is followed only when root or the caller owns it (an admin's
//!   `/scratch -> /lustre/scratch`), never one planted by another user;
//! - the directory itself (the last component) must be owned by the caller; it is made
//!   0700 if it was more open.
//!
//! Root (tests, an admin inspecting a user's store) may use directories of any owner, but
//! still follows no symlink of another user and no non-sticky world-writable directory.
//!
//! Once the whole chain passes, nobody but root and the caller can change what the path
//! names, so later path-based work inside it (the store's renames) cannot be redirected.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Why a directory is refused.
#[derive(Debug, Error)]
pub enum SafeDirError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}; refusing to keep checkpoint images there")]
    Unsafe { path: PathBuf, why: String },
}

fn last_err(path: &Path, op: &'static str) -> SafeDirError {
    SafeDirError::Io {
        path: path.to_path_buf(),
        op,
        source: std::io::Error::last_os_error(),
    }
}

fn uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn fstat(fd: &OwnedFd, path: &Path) -> Result<libc::stat, SafeDirError> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd we own into a local buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(last_err(path, "fstat"));
    }
    Ok(st)
}

fn openat(dir: &OwnedFd, name: &CString, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: openat relative to an fd we own, NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The uid unmapped owners show as, when this process runs in a user namespace that does
/// not map everyone (a restored program in its own user+pid namespace sees root's
/// directories as owned by the overflow uid); `None` in the initial namespace.
fn unmapped_uid() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let full = map.lines().any(|l| {
        let v: Vec<&str> = l.split_whitespace().collect();
        v == ["0", "0", "4294967295"]
    });
    if full {
        return None;
    }
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn check(st: &libc::stat, path: &Path, me: u32, unmapped: Option<u32>) -> Result<(), SafeDirError> {
    let unsafe_dir = |why: String| SafeDirError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(unsafe_dir("not a directory".into()));
    }
    // In a restored program's user namespace the owner of the directories above its own
    // cannot be told apart; those were checked in the initial namespace when the program
    // first ran, and the directories it owns (the last ones) are still checked.
    if me != 0 && st.st_uid != 0 && st.st_uid != me && Some(st.st_uid) != unmapped {
        return Err(unsafe_dir(format!(
            "owned by uid {} (only root or you, uid {me}, may own the directories on the way)",
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & libc::S_ISVTX == 0 {
        return Err(unsafe_dir(format!(
            "writable by other users and not sticky (mode {:o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Opens directory `path`, creating missing components (0700), under the rules in the
/// module header. Returns an `O_PATH` fd of the directory.
pub fn ensure_private_dir(path: &Path) -> Result<OwnedFd, SafeDirError> {
    open_dir(path, true)
}

/// Like [`ensure_private_dir`] without creating anything.
pub fn open_private_dir(path: &Path) -> Result<OwnedFd, SafeDirError> {
    open_dir(path, false)
}

fn open_dir(path: &Path, create: bool) -> Result<OwnedFd, SafeDirError> {
    let me = uid();
    let unmapped = unmapped_uid();
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| SafeDirError::Io {
                path: path.into(),
                op: "current directory",
                source,
            })?
            .join(path)
    };
    let root = CString::new("/").unwrap_or_default();
    // SAFETY: open of a constant path.
    let fd = unsafe {
        libc::open(
            root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err(Path::new("/"), "open"));
    }
    // SAFETY: just opened.
    let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut at = PathBuf::from("/");
    let comps: Vec<Component> = path.components().collect();
    let nlast = comps
        .iter()
        .rposition(|c| matches!(c, Component::Normal(_)))
        .unwrap_or(0);
    for (i, c) in comps.iter().enumerate() {
        let name = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Prefix(_) => continue,
            Component::ParentDir => {
                return Err(SafeDirError::Unsafe {
                    path: path.clone(),
                    why: "contains `..`".into(),
                })
            }
            Component::Normal(n) => *n,
        };
        at.push(name);
        let cname = CString::new(name.as_bytes()).map_err(|_| SafeDirError::Unsafe {
            path: path.clone(),
            why: "contains a NUL byte".into(),
        })?;
        let mut created = false;
        let nofollow = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let next = match openat(&cur, &cname, nofollow) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                // SAFETY: mkdirat relative to a held fd with a NUL-terminated name.
                let r = unsafe { libc::mkdirat(cur.as_raw_fd(), cname.as_ptr(), 0o700) };
                if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return Err(last_err(&at, "create directory"));
                }
                created = r == 0;
                openat(&cur, &cname, nofollow).map_err(|source| SafeDirError::Io {
                    path: at.clone(),
                    op: "open",
                    source,
                })?
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                // A symlink (or not a directory): follow only a link root or we own.
                // SAFETY: a zeroed stat is a valid out-buffer.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: fstatat relative to a held fd, not following the link.
                let r = unsafe {
                    libc::fstatat(
                        cur.as_raw_fd(),
                        cname.as_ptr(),
                        &mut st,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r != 0 {
                    return Err(last_err(&at, "lstat"));
                }
                if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                    return Err(SafeDirError::Unsafe {
                        path: at,
                        why: "not a directory".into(),
                    });
                }
                if st.st_uid != 0 && st.st_uid != me && Some(st.st_uid) != unmapped {
                    return Err(SafeDirError::Unsafe {
                        path: at,
                        why: format!(
                            "a symlink owned by uid {} (only links of root or yours are followed)",
                            st.st_uid
                        ),
                    });
                }
                openat(&cur, &cname, libc::O_PATH | libc::O_DIRECTORY).map_err(|source| {
                    SafeDirError::Io {
                        path: at.clone(),
                        op: "open",
                        source,
                    }
                })?
            }
            Err(source) => {
                return Err(SafeDirError::Io {
                    path: at,
                    op: "open",
                    source,
                })
            }
        };
        let st = fstat(&next, &at)?;
        check(&st, &at, me, unmapped)?;
        if (i == nlast || created) && st.st_uid != me && me != 0 {
            return Err(SafeDirError::Unsafe {
                path: at,
                why: format!("owned by uid {}, not by you (uid {me})", st.st_uid),
            });
        }
        if i == nlast && st.st_mode & 0o077 != 0 {
            // Our own image directory: private. chmod through /proc (an O_PATH fd cannot
            // be fchmod'ed); the fd pins the very directory we checked.
            let proc =
                CString::new(format!("/proc/self/fd/{}", next.as_raw_fd())).unwrap_or_default();
            // SAFETY: chmod of the magic link of our own fd.
            if unsafe { libc::chmod(proc.as_ptr(), 0o700) } != 0 {
                return Err(last_err(&at, "chmod 0700"));
            }
        }
        cur = next;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("torpor-safedir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn creates_private_chain() {
        let d = tmp("create");
        let p = d.join("a/b/c");
        ensure_private_dir(&p).unwrap();
        for q in [d.join("a"), d.join("a/b"), p.clone()] {
            let m = std::fs::metadata(&q).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", q.display());
        }
        // Idempotent.
        ensure_private_dir(&p).unwrap();
    }

    #[test]
    fn last_component_is_made_private() {
        let d = tmp("chmod");
        let p = d.join("open");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn world_writable_without_sticky_is_refused() {
        let d = tmp("ww");
        let w = d.join("ww");
        std::fs::create_dir(&w).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            ensure_private_dir(&w.join("x")),
            Err(SafeDirError::Unsafe { .. })
        ));
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&w.join("x")).unwrap();
    }

    #[test]
    fn own_symlink_is_followed_and_file_is_refused() {
        let d = tmp("link");
        std::fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        ensure_private_dir(&d.join("link/x")).unwrap();
        assert!(d.join("real/x").is_dir());
        std::fs::write(d.join("file"), b"").unwrap();
        assert!(ensure_private_dir(&d.join("file/x")).is_err());
        assert!(ensure_private_dir(&d.join("x/../y")).is_err());
    }
}
