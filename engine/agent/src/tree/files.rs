//! Open file descriptions shared between processes of the tree: the regular files and
//! FIFOs open in the tree, grouped by open file description (`kcmp`) during the pause.

use super::*;
use torpor_image::store::SharedFile;

/// One regular-file or FIFO fd of a process of the tree, to find the open file
/// descriptions (offsets) that several processes share.
#[derive(Clone, Copy, Default)]
struct OpenFd {
    pid: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    /// Index of the first entry sharing this one's open file description.
    group: u32,
}

/// The regular files and FIFOs open in the tree, grouped by open file description
/// (`kcmp(KCMP_FILE)`) while the whole tree is stopped. Its room is reserved before the
/// pause: scanning does not allocate.
pub struct FileTable {
    entries: Vec<OpenFd>,
    overflow: bool,
}

impl FileTable {
    /// Room for the fds open in `pids` now, with a margin.
    pub fn for_tree(pids: &[i32]) -> FileTable {
        let now: usize = pids
            .iter()
            .map(|p| {
                std::fs::read_dir(format!("/proc/{p}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0)
            })
            .sum();
        FileTable {
            entries: Vec::with_capacity(now * 2 + 256),
            overflow: false,
        }
    }

    /// Lists the regular files and FIFOs of process `pid`. Pause-safe: no allocation.
    pub fn scan(&mut self, proc_fd: i32, pid: i32) {
        let mut name = [0u8; 40];
        let mut nb = [0u8; 24];
        let d = sys::itoa(pid as u64, &mut nb);
        name[..d.len()].copy_from_slice(d);
        name[d.len()..d.len() + 3].copy_from_slice(b"/fd");
        // SAFETY: openat with a NUL-terminated name under /proc.
        let dir = unsafe {
            libc::openat(
                proc_fd,
                name.as_ptr() as *const libc::c_char,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if dir < 0 {
            return;
        }
        let entries = &mut self.entries;
        let overflow = &mut self.overflow;
        crate::fds::for_each_num(dir, |fd| {
            let mut fb = [0u8; 24];
            let mut n = [0u8; 24];
            let digits = sys::itoa(fd as u64, &mut fb);
            n[..digits.len()].copy_from_slice(digits);
            // SAFETY: fstatat follows the /proc magic link to the open file; st is local.
            let st = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                (libc::fstatat(dir, n.as_ptr() as *const libc::c_char, &mut st, 0) == 0)
                    .then_some(st)
            };
            let Some(st) = st else {
                return;
            };
            let fmt = st.st_mode & libc::S_IFMT;
            if fmt != libc::S_IFREG && fmt != libc::S_IFIFO {
                return;
            }
            // The launch's stdio: each process gets the new launch's.
            if crate::fds::is_launch(st.st_dev, st.st_ino) {
                return;
            }
            if fmt == libc::S_IFIFO {
                // Anonymous pipes are recreated by inode, not by open file description.
                let mut t = [0u8; 8];
                // SAFETY: readlinkat into our buffer.
                let l = unsafe {
                    libc::readlinkat(
                        dir,
                        n.as_ptr() as *const libc::c_char,
                        t.as_mut_ptr() as *mut libc::c_char,
                        t.len(),
                    )
                };
                if l >= 5 && &t[..5] == b"pipe:" {
                    return;
                }
            }
            if entries.len() == entries.capacity() {
                *overflow = true;
                return;
            }
            entries.push(OpenFd {
                pid,
                fd,
                dev: st.st_dev,
                ino: st.st_ino,
                group: 0,
            });
        });
        close(dir);
    }

    /// Groups the entries by open file description. Pause-safe: no allocation.
    pub fn group(&mut self) -> Result<(), &'static str> {
        if self.overflow {
            return Err("too many open files in the process tree to compare their offsets");
        }
        let e = &mut self.entries;
        e.sort_unstable_by_key(|x| (x.dev, x.ino, x.pid, x.fd));
        let mut run = 0usize;
        for i in 0..e.len() {
            if i > 0 && (e[i].dev, e[i].ino) != (e[i - 1].dev, e[i - 1].ino) {
                run = i;
            }
            e[i].group = i as u32;
            for j in run..i {
                if e[j].group != j as u32 {
                    continue;
                }
                // SAFETY: kcmp(KCMP_FILE = 0) compares fds of two processes we own.
                if unsafe { libc::syscall(libc::SYS_kcmp, e[i].pid, e[j].pid, 0, e[i].fd, e[j].fd) }
                    == 0
                {
                    e[i].group = j as u32;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The open file descriptions held by more than one process, for the manifest (the
    /// launch's stdio was left out by `scan`).
    pub fn shared(&self) -> Vec<SharedFile> {
        let mut out: Vec<SharedFile> = Vec::new();
        for (i, head) in self.entries.iter().enumerate() {
            if head.group != i as u32 {
                continue;
            }
            let members: Vec<(i32, i32)> = self
                .entries
                .iter()
                .filter(|x| x.group == i as u32)
                .map(|x| (x.pid, x.fd))
                .collect();
            if members.iter().any(|m| m.0 != head.pid) {
                out.push(SharedFile { members });
            }
        }
        out
    }
}
