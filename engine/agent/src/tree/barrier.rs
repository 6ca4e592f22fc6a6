//! The round file and the marker-file barriers of one tree round.

use super::*;

/// Writes the round file: the id the members get with the request signal and the
/// pending generation directory.
pub fn write_round(dir: &Path, id: i32, tmp: &Path, groups: &[ShmGroup]) -> std::io::Result<()> {
    let t = dir.join(format!(".tree-round-{}", sys::getpid()));
    let mut body = format!("{id}\n").into_bytes();
    body.extend_from_slice(tmp.as_os_str().as_bytes());
    body.push(b'\n');
    // The first member of each shared memory group copies it.
    for (i, g) in groups.iter().enumerate() {
        let (pid, start) = g.members[0];
        body.extend_from_slice(format!("shm {pid} {start} {} {i}\n", g.len).as_bytes());
    }
    std::fs::write(&t, body)?;
    std::fs::rename(&t, dir.join(ROUND_FILE))
}

/// Reads the round file of the root's directory: (id, pending directory).
pub fn read_round(dir: &Path) -> Option<(i32, PathBuf)> {
    let b = std::fs::read(dir.join(ROUND_FILE)).ok()?;
    let mut lines = b.split(|&c| c == b'\n');
    let id = std::str::from_utf8(lines.next()?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let tmp = lines.next()?;
    Some((id, PathBuf::from(std::ffi::OsStr::from_bytes(tmp))))
}

/// Marker files in the pending generation's directory (barriers between processes).
/// Pause-safe: raw system calls, names built before the pause.
pub struct Marks {
    pub dir: i32,
}

/// NUL-terminated marker name `.<what>-<pid>`.
pub fn mark_name(what: &str, pid: i32) -> CString {
    CString::new(format!(".{what}-{pid}")).unwrap_or_default()
}

impl Marks {
    pub fn open(p: &Path) -> Option<Marks> {
        let c = CString::new(p.as_os_str().as_bytes()).ok()?;
        let fd = sys_open(c.as_bytes_with_nul(), libc::O_RDONLY | libc::O_DIRECTORY);
        (fd >= 0).then_some(Marks { dir: fd })
    }

    pub fn touch(&self, name: &CString) -> bool {
        // SAFETY: openat with a NUL-terminated name in a directory we opened.
        let fd = unsafe {
            libc::openat(
                self.dir,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            )
        };
        close(fd);
        fd >= 0
    }

    pub fn has(&self, name: &CString) -> bool {
        // SAFETY: faccessat with a NUL-terminated name.
        unsafe { libc::faccessat(self.dir, name.as_ptr(), libc::F_OK, 0) == 0 }
    }

    /// Waits until every `names[i]` exists. Fails when `abort` appears, when the
    /// process `pids[i]` of a missing name is gone, or after the timeout.
    pub fn wait_all(
        &self,
        names: &[CString],
        pids: &[i32],
        abort: &CString,
    ) -> Result<(), &'static str> {
        let t0 = sys::now_ns();
        let mut step = 20_000i64;
        loop {
            let mut missing = false;
            for (i, n) in names.iter().enumerate() {
                if self.has(n) {
                    continue;
                }
                missing = true;
                if let Some(&p) = pids.get(i) {
                    // SAFETY: kill with signal 0 only checks existence.
                    if unsafe { libc::kill(p, 0) } != 0 || proc_state(p) == Some(b'Z') {
                        return Err(EXITED);
                    }
                }
                break;
            }
            if !missing {
                return Ok(());
            }
            if self.has(abort) {
                return Err(ABANDONED);
            }
            if sys::now_ns() - t0 > BARRIER_TIMEOUT_NS {
                return Err("a process of the tree did not answer within 20 s");
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: step,
            };
            // SAFETY: nanosleep with a valid timespec.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
            step = (step * 2).min(1_000_000);
        }
    }
}

/// The pending directory of a tree round, opened for markers and pipe data.
pub fn open_dirs(tmp: &Path) -> Option<(Marks, i32)> {
    let marks = Marks::open(tmp)?;
    let pipes = tmp.join("pipes");
    let _ = std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&pipes);
    let c = CString::new(pipes.as_os_str().as_bytes()).ok()?;
    let fd = sys_open(c.as_bytes_with_nul(), libc::O_RDONLY | libc::O_DIRECTORY);
    if fd < 0 {
        close(marks.dir);
        return None;
    }
    Some((marks, fd))
}
