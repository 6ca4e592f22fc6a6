//! The job's output files across a requeue, for output written by processes torpor does
//! not checkpoint (srun copies its tasks' output into the batch step's files).
//!
//! Slurm truncates the job's output file when a requeued job starts again. The batch
//! shell's agent (the top process of the batch step) therefore snapshots the batch step's
//! stdout/stderr files into `<root>/<job>/output/` when it is stopped by SIGTERM (after
//! its children took their final checkpoints), and puts them back when the job starts
//! again, before the script runs. A restored program that writes the file itself puts
//! its own copy back on top (engine restore), which is consistent with this one.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::OnceLock;

static DIR: OnceLock<CString> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process is the batch step's top process (its parent is slurmstepd).
pub fn is_batch_top(step: &str) -> bool {
    (step == "4294967291" || step == "batch") && crate::identity::parent_is_stepd()
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

fn fd_meta(fd: i32) -> Option<fs::Metadata> {
    fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .filter(|m| m.file_type().is_file())
}

/// Puts a saved output file back into `fd` (contents, length, offset at the end).
fn put_back(fd: i32, saved: &Path) -> std::io::Result<()> {
    let mut data = Vec::new();
    fs::File::open(saved)?.read_to_end(&mut data)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))?;
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&data)?;
    out.set_len(data.len() as u64)?;
    // SAFETY: moves our inherited descriptor's offset to the end of the output.
    unsafe { libc::lseek(fd, data.len() as i64, libc::SEEK_SET) };
    Ok(())
}

/// Called in the batch shell's agent at start.
pub fn init(root: &Path, job: &str, attempt: u32) {
    let dir = root.join(job).join("output");
    if torpor_image::safedir::ensure_private_dir(&dir).is_err() {
        return;
    }
    if attempt > 0 {
        let out = fd_meta(1);
        for fd in [1, 2] {
            let Some(m) = fd_meta(fd) else { continue };
            if fd == 2 && out.as_ref().is_some_and(|o| same_file(o, &m)) {
                // SAFETY: stderr shares the output file: just follow it to its end.
                unsafe { libc::lseek(2, 0, libc::SEEK_END) };
                continue;
            }
            let saved = dir.join(format!("fd-{fd}"));
            if saved.exists() {
                if let Err(e) = put_back(fd, &saved) {
                    eprintln!("torpor: could not put back the job's output ({e})");
                }
            }
        }
    }
    if let Ok(c) = CString::new(dir.as_os_str().as_bytes()) {
        let _ = DIR.set(c);
        ENABLED.store(true, SeqCst);
    }
}

fn join(dir: &[u8], name: &[u8], out: &mut [u8; 4200]) -> bool {
    if dir.len() + name.len() + 2 > out.len() {
        return false;
    }
    out[..dir.len()].copy_from_slice(dir);
    out[dir.len()] = b'/';
    out[dir.len() + 1..dir.len() + 1 + name.len()].copy_from_slice(name);
    out[dir.len() + 1 + name.len()] = 0;
    true
}

/// Snapshots the batch step's output files. Signal-safe (raw system calls, stack
/// buffers): runs in the SIGTERM keeper.
pub fn snapshot() {
    if !ENABLED.load(SeqCst) {
        return;
    }
    let Some(dir) = DIR.get() else { return };
    let dir = dir.as_bytes();
    let mut st1: libc::stat = unsafe_zeroed();
    // SAFETY: fstat into a local.
    let has1 =
        unsafe { libc::fstat(1, &mut st1) } == 0 && st1.st_mode & libc::S_IFMT == libc::S_IFREG;
    for fd in [1, 2] {
        let mut st: libc::stat = unsafe_zeroed();
        // SAFETY: fstat into a local.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        if fd == 2 && has1 && st.st_dev == st1.st_dev && st.st_ino == st1.st_ino {
            continue;
        }
        let (mut tmp, mut fin) = ([0u8; 4200], [0u8; 4200]);
        let (tname, fname): (&[u8], &[u8]) = if fd == 1 {
            (b".fd-1.tmp", b"fd-1")
        } else {
            (b".fd-2.tmp", b"fd-2")
        };
        if !join(dir, tname, &mut tmp) || !join(dir, fname, &mut fin) {
            continue;
        }
        let src_path: &[u8] = if fd == 1 {
            b"/proc/self/fd/1\0"
        } else {
            b"/proc/self/fd/2\0"
        };
        // SAFETY: raw open/copy/fsync/rename/close with NUL-terminated paths and local fds.
        unsafe {
            let src = libc::open(
                src_path.as_ptr() as *const libc::c_char,
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if src < 0 {
                continue;
            }
            let dst = libc::open(
                tmp.as_ptr() as *const libc::c_char,
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o600,
            );
            if dst >= 0 {
                let mut off: i64 = 0;
                let size = st.st_size;
                let mut ok = true;
                while off < size {
                    let r = libc::copy_file_range(
                        src,
                        &mut off,
                        dst,
                        std::ptr::null_mut(),
                        (size - off) as usize,
                        0,
                    );
                    if r <= 0 {
                        ok = r == 0;
                        break;
                    }
                }
                ok = ok && libc::fsync(dst) == 0;
                libc::close(dst);
                if ok {
                    libc::rename(
                        tmp.as_ptr() as *const libc::c_char,
                        fin.as_ptr() as *const libc::c_char,
                    );
                }
            }
            libc::close(src);
        }
    }
}

fn unsafe_zeroed() -> libc::stat {
    // SAFETY: struct stat is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
