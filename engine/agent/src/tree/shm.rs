//! Shared memory of the tree: which mappings are shared between members, and their copy into the pending generation.

use super::*;

/// Shared memory mapped by several processes of the tree (or twice by one): one
/// object, recreated once at restore and mapped by each member.
#[derive(Debug, Clone)]
pub struct ShmGroup {
    pub offset: u64,
    pub len: u64,
    pub members: Vec<(i32, u64)>,
}

/// Groups the shared memory objects mapped more than once in the tree. Refuses
/// objects mapped with different offsets or lengths.
pub fn shared_memory_groups(pids: &[i32]) -> Result<Vec<ShmGroup>, String> {
    let mut seen: HashMap<(u32, u32, u64), ShmGroup> = HashMap::new();
    let mut order: Vec<(u32, u32, u64)> = Vec::new();
    for &pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        for v in torpor_engine::procmaps::parse(&text) {
            let n = v.name.as_str();
            let anon_like = n.is_empty()
                || n.starts_with("/dev/zero")
                || n.starts_with("/SYSV")
                || n.starts_with("/memfd:")
                || n.starts_with("[anon_shmem")
                || n.ends_with(" (deleted)");
            if !v.shared || !anon_like || v.inode == 0 {
                continue;
            }
            let key = (v.dev_major, v.dev_minor, v.inode);
            match seen.get_mut(&key) {
                Some(g) => {
                    if g.offset != v.offset || g.len != v.len() {
                        return Err(format!(
                            "shared memory {n:?} is mapped differently by processes {} and {pid} (offset or length); not supported yet",
                            g.members[0].0
                        ));
                    }
                    g.members.push((pid, v.start));
                }
                None => {
                    order.push(key);
                    seen.insert(
                        key,
                        ShmGroup {
                            offset: v.offset,
                            len: v.len(),
                            members: vec![(pid, v.start)],
                        },
                    );
                }
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| seen.remove(&k))
        .filter(|g| g.members.len() > 1)
        .collect())
}

/// A copy this process makes during the pause: `len` bytes at `start` into `path`.
pub struct ShmCopy {
    pub start: u64,
    pub len: u64,
    pub path: CString,
}

/// Copies shared memory into the generation while the whole tree is stopped (the
/// writers run after the release, when the other processes may already change it).
/// Pause-safe.
pub fn copy_shared(copies: &[ShmCopy]) -> Result<(), &'static str> {
    for c in copies {
        // SAFETY: open with a NUL-terminated path and a mode for the new file.
        let fd = unsafe {
            libc::open(
                c.path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err("cannot create a shared memory file in the generation");
        }
        let mut done = 0u64;
        while done < c.len {
            // SAFETY: writes from our own mapping, readable for its whole length.
            let n = unsafe {
                libc::write(
                    fd,
                    (c.start + done) as *const libc::c_void,
                    (c.len - done) as usize,
                )
            };
            if n <= 0 {
                close(fd);
                return Err("copying shared memory failed (is it readable?)");
            }
            done += n as u64;
        }
        close(fd);
    }
    Ok(())
}

/// The shared memory copies the round file assigns to this process.
pub fn my_copies(dir: &Path, tmp: &Path) -> Vec<ShmCopy> {
    let me = sys::getpid();
    let text = std::fs::read(dir.join(ROUND_FILE)).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("shm ")?.split(' ').collect();
            let pid: i32 = f.first()?.parse().ok()?;
            if pid != me {
                return None;
            }
            let path = tmp.join("shm").join(f.get(3)?);
            Some(ShmCopy {
                start: f.get(1)?.parse().ok()?,
                len: f.get(2)?.parse().ok()?,
                path: CString::new(path.as_os_str().as_bytes()).ok()?,
            })
        })
        .collect()
}
