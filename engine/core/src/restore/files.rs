//! Restore stage 1, files: reopening the program's fds with their contents put back as
//! their dispositions say, and the job's output files in a Slurm task.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use torpor_image::meta::*;

use super::{ioe, last_os, RestoreError};

fn open_flags(flags: u32) -> i32 {
    (flags as i32) & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY)
        | libc::O_CLOEXEC
}

fn raw_open(path: &str, flags: i32) -> Result<OwnedFd, RestoreError> {
    let c = CString::new(path).map_err(|_| RestoreError::FileChanged {
        path: path.into(),
        why: "path contains NUL",
    })?;
    // SAFETY: c is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(last_os(path));
    }
    // SAFETY: fd was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `path` names an SQLite journal or WAL file.
fn torpor_sidecar(path: &str) -> bool {
    path.ends_with("-journal") || path.ends_with("-wal")
}

pub(super) fn copy_into(src: &Path, dst: &mut File) -> Result<(), RestoreError> {
    let mut s = File::open(src).map_err(ioe(src.display().to_string()))?;
    std::io::copy(&mut s, dst).map_err(ioe(src.display().to_string()))?;
    Ok(())
}

/// Reopens one saved fd, putting back its file's contents as the disposition says.
pub(super) fn reopen(f: &FdMeta, gen_dir: &Path) -> Result<Option<OwnedFd>, RestoreError> {
    let fd = match f.kind {
        // Pipes and sockets come from the tree's table (restore::tree::Pipes).
        FdKind::Stdio
        | FdKind::Pipe
        | FdKind::UnixStream
        | FdKind::UnixDgram
        | FdKind::UnixSeqpacket
        | FdKind::UnixDgramNamed
        | FdKind::UnixListen
        | FdKind::Tcp
        | FdKind::TcpListen => return Ok(None),
        // The FIFO's keeper (restore::channels::fifo_keepers) is open read-write, so
        // this open does not wait for a partner.
        FdKind::Fifo => raw_open(&f.path, open_flags(f.flags))?,
        FdKind::Directory => raw_open(
            &f.path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )?,
        FdKind::Device => raw_open(&f.path, open_flags(f.flags))?,
        FdKind::Deleted => {
            let cap = f.captured.as_ref().ok_or(RestoreError::NotCaptured {
                path: f.path.clone(),
            })?;
            // An SQLite journal or WAL open while its name was gone: SQLite unlinks that
            // name when the transaction ends, so it comes back under its name.
            let sidecar = torpor_sidecar(&f.path);
            if sidecar && fs::symlink_metadata(&f.path).is_err() {
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&f.path)
                    .map_err(ioe(f.path.clone()))?;
                copy_into(&gen_dir.join(cap), &mut out)?;
                drop(out);
                let fd = raw_open(&f.path, open_flags(f.flags))?;
                if f.offset >= 0 {
                    // SAFETY: lseek on our own fd.
                    unsafe { libc::lseek(fd.as_raw_fd(), f.offset, libc::SEEK_SET) };
                }
                return Ok(Some(fd));
            }
            let dir = Path::new(&f.path).parent().unwrap_or(Path::new("/tmp"));
            let tmp = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o600)
                .open(dir)
                .or_else(|_| {
                    fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_TMPFILE)
                        .mode(0o600)
                        .open(std::env::temp_dir())
                })
                .map_err(ioe(format!("recreating deleted file {}", f.path)))?;
            let mut tmp = tmp;
            copy_into(&gen_dir.join(cap), &mut tmp)?;
            // The program may have opened it O_NOFOLLOW (SQLite does): that flag must not
            // apply to the /proc magic link we reopen it through.
            let fdn = raw_open(
                &format!("/proc/self/fd/{}", tmp.as_raw_fd()),
                open_flags(f.flags) & !libc::O_NOFOLLOW,
            )?;
            drop(tmp);
            fdn
        }
        FdKind::File => {
            let id = f.file.unwrap_or_default();
            let md = match fs::metadata(&f.path) {
                Ok(md) => Some(md),
                // A captured file comes back from its copy even if it was removed since
                // (an SQLite hot journal deleted when the transaction committed).
                Err(_) if f.disposition == FileDisposition::Captured => None,
                Err(_) => {
                    return Err(RestoreError::FileChanged {
                        path: f.path.clone(),
                        why: "was removed",
                    })
                }
            };
            let size = md.as_ref().map(|m| m.size()).unwrap_or(0);
            let changed = md.as_ref().is_none_or(|m| {
                m.size() != id.size || m.mtime() != id.mtime_sec || m.mtime_nsec() != id.mtime_nsec
            });
            match f.disposition {
                FileDisposition::Verify => {
                    if changed {
                        return Err(RestoreError::FileChanged {
                            path: f.path.clone(),
                            why: "file opened read-only changed",
                        });
                    }
                }
                FileDisposition::Truncate => {
                    if size < id.size {
                        return Err(RestoreError::FileChanged {
                            path: f.path.clone(),
                            why: "file shrank",
                        });
                    }
                }
                FileDisposition::Captured => {
                    let cap = f.captured.as_ref().ok_or(RestoreError::NotCaptured {
                        path: f.path.clone(),
                    })?;
                    let mut out = fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&f.path)
                        .map_err(ioe(f.path.clone()))?;
                    copy_into(&gen_dir.join(cap), &mut out)?;
                    out.sync_all().map_err(ioe(f.path.clone()))?;
                    for suffix in &f.absent_sidecars {
                        let side = format!("{}{suffix}", f.path);
                        if fs::symlink_metadata(&side).is_ok() {
                            fs::remove_file(&side).map_err(ioe(side.clone()))?;
                        }
                    }
                }
                FileDisposition::None => {}
            }
            let fd = raw_open(&f.path, open_flags(f.flags))?;
            if f.disposition == FileDisposition::Truncate {
                // SAFETY: ftruncate on our own fd.
                if unsafe { libc::ftruncate(fd.as_raw_fd(), id.size as i64) } != 0 {
                    return Err(last_os(&f.path));
                }
            }
            fd
        }
    };
    if matches!(f.kind, FdKind::File | FdKind::Deleted) && f.offset >= 0 {
        // SAFETY: lseek on our own fd.
        unsafe { libc::lseek(fd.as_raw_fd(), f.offset, libc::SEEK_SET) };
    }
    Ok(Some(fd))
}

/// In a batch job, Slurm truncates the output file when the job runs again (unless
/// --open-mode=append, where the dead run's later output remains). Puts a captured
/// stdout/stderr file back to its contents at the checkpoint, so the job's output reads
/// like an uninterrupted run's: what the rerun script printed before reaching the
/// program is in the saved copy too, and what the program prints next follows it.
pub(super) fn put_back_output(
    meta: &ProcessMeta,
    gen_dir: &Path,
    verbose: bool,
) -> Result<(), RestoreError> {
    let mut done: Vec<String> = Vec::new();
    for f in meta.fds.iter().filter(|f| f.kind == FdKind::Stdio) {
        let (Some(cap), Some(id)) = (&f.captured, f.file) else {
            continue;
        };
        let now = fs::read_link(format!("/proc/self/fd/{}", f.fd))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if now != f.path {
            continue; // launched with different output: leave it alone
        }
        if !done.contains(&f.path) {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .open(&f.path)
                .map_err(ioe(f.path.clone()))?;
            copy_into(&gen_dir.join(cap), &mut out)?;
            out.set_len(id.size).map_err(ioe(f.path.clone()))?;
            done.push(f.path.clone());
            if verbose {
                eprintln!(
                    "torpor-restore: output {} put back to {} bytes",
                    f.path, id.size
                );
            }
        }
        // SAFETY: moves the inherited descriptor's offset to the end of the restored output.
        unsafe { libc::lseek(f.fd, id.size as i64, libc::SEEK_SET) };
    }
    Ok(())
}

/// Takes the program's POSIX record locks again, on the fds at their final numbers
/// (POSIX locks belong to the process and survive exec, but closing any fd of a file
/// drops them, so this runs after every fd is in place).
pub(super) fn relock(meta: &ProcessMeta) -> Result<(), RestoreError> {
    for l in &meta.locks {
        // SAFETY: a zeroed flock is valid; filled below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = if l.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = l.start;
        fl.l_len = if l.end < 0 { 0 } else { l.end - l.start + 1 };
        // SAFETY: fcntl F_SETLK on one of the program's fds with a valid flock.
        if unsafe { libc::fcntl(l.fd, libc::F_SETLK, &fl) } != 0 {
            let path = meta
                .fds
                .iter()
                .find(|f| f.fd == l.fd)
                .map(|f| f.path.clone())
                .unwrap_or_default();
            return Err(last_os(&format!(
                "re-acquiring the program's lock on {path} (bytes {}..{})",
                l.start, l.end
            )));
        }
    }
    Ok(())
}
