//! Writing a generation: `begin` a temporary directory, then `commit` it under the
//! commit lock, which holds the attempt fence (see the store's module documentation).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::manifest::{file_sums, tree_file_sums};
use super::{
    gen_name, io, sync_dir, Manifest, Store, StoreError, COMMIT_LOCK, FILES, LATEST, MANIFEST,
};

/// How long a commit waits for another writer's commit to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
    /// Starts generation `latest + 1` for job attempt `attempt`.
    pub fn begin(&self, attempt: u32) -> Result<Pending, StoreError> {
        self.create()?;
        self.clean_temporaries();
        let newest = self.generations()?.last().copied().unwrap_or(0);
        let n = newest.max(self.latest().unwrap_or(0)) + 1;
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            gen_name(n),
            std::process::id(),
            start_token()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io(&tmp, "create directory"))?;
        Ok(Pending {
            store: self.clone(),
            n,
            attempt,
            tmp,
        })
    }
}

/// A generation being written in a temporary directory.
#[derive(Debug)]
pub struct Pending {
    store: Store,
    n: u64,
    attempt: u32,
    tmp: PathBuf,
}

impl Pending {
    pub fn generation(&self) -> u64 {
        self.n
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The temporary directory where the generation's files go.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Creates a file (0600, exclusive) inside the temporary directory.
    pub fn create_file(&self, name: &str) -> Result<(File, PathBuf), StoreError> {
        let p = self.tmp.join(name);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_cloexec())
            .open(&p)
            .map_err(io(&p, "create"))?;
        Ok((f, p))
    }

    /// Makes the generation durable and visible: writes the manifest, fsyncs, renames the
    /// directory into place, then points `latest` at it. Refuses to commit when a newer
    /// attempt already committed a generation (fencing): the check, raising the fence and
    /// publishing happen under the commit lock, so once a newer attempt's commit returned,
    /// no commit of an older attempt can publish anything.
    pub fn commit(&self, mut manifest: Manifest) -> Result<PathBuf, StoreError> {
        let dir = self.store.dir().to_path_buf();
        manifest.generation = self.n;
        manifest.attempt = self.attempt;
        manifest.files = file_sums(&self.tmp.join(FILES))?;
        tree_file_sums(&self.tmp, &mut manifest.files)?;
        let body = manifest.to_bytes().map_err(|source| StoreError::Manifest {
            path: self.tmp.join(MANIFEST),
            source,
        })?;
        let (mut f, p) = self.create_file(MANIFEST)?;
        f.write_all(&body).map_err(io(&p, "write"))?;
        f.sync_all().map_err(io(&p, "fsync"))?;
        sync_dir(&self.tmp)?;
        let mut lock = CommitLock::take(&dir)?;
        if let Err(e) = self.check_fence(&mut lock) {
            let _ = fs::remove_dir_all(&self.tmp);
            return Err(e);
        }
        let fin = self.store.gen_dir(self.n);
        fs::rename(&self.tmp, &fin).map_err(io(&fin, "rename into place"))?;
        sync_dir(&dir)?;
        test_pause();
        let link_tmp = dir.join(format!(".latest-{}", std::process::id()));
        let _ = fs::remove_file(&link_tmp);
        std::os::unix::fs::symlink(gen_name(self.n), &link_tmp)
            .map_err(io(&link_tmp, "symlink"))?;
        fs::rename(&link_tmp, dir.join(LATEST)).map_err(io(&dir, "update latest"))?;
        sync_dir(&dir)?;
        drop(lock);
        Ok(fin)
    }

    /// Under the commit lock: refuses when a newer attempt committed (the fence, or for
    /// stores written before the fence existed, the attempt of `latest`), else raises the
    /// fence to this attempt (durably, before anything is published).
    fn check_fence(&self, lock: &mut CommitLock) -> Result<(), StoreError> {
        let fenced = |newer_attempt| StoreError::Fenced {
            dir: self.store.dir().to_path_buf(),
            newer: self.store.latest().unwrap_or(0),
            newer_attempt,
            attempt: self.attempt,
        };
        let fence = lock.fence()?;
        if fence.is_some_and(|f| f > self.attempt) {
            return Err(fenced(fence.unwrap_or(0)));
        }
        if let Some(l) = self.store.latest() {
            if let Ok(m) = self.store.manifest(l) {
                if m.attempt > self.attempt {
                    return Err(fenced(m.attempt));
                }
            }
        }
        if fence != Some(self.attempt) {
            lock.set_fence(self.attempt)?;
        }
        Ok(())
    }

    /// A sub-directory of a pending generation written by another process of the same
    /// tree (ADR 0006): used for its files only, never committed by that process.
    pub fn for_member(tmp: PathBuf, generation: u64, attempt: u32) -> Pending {
        Pending {
            store: Store::new(tmp.parent().unwrap_or(Path::new("/"))),
            n: generation,
            attempt,
            tmp,
        }
    }

    /// Abandons the generation, removing its temporary directory.
    pub fn abort(&self) {
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Tests widen the window between publishing a generation and pointing `latest` at it
/// (a slow `fsync` on a busy or remote filesystem) with `TORPOR_STORE_TEST_PAUSE_MS`.
#[cfg(test)]
fn test_pause() {
    if let Some(ms) = std::env::var("TORPOR_STORE_TEST_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(not(test))]
fn test_pause() {}

/// This process's start time (clock ticks after boot, `/proc/self/stat` field 22): with
/// the pid, it names a temporary, so that two writers with the same pid never write into
/// one directory (a restored program has the pid of the original, which may still run on
/// a node that was given up, writing to the same store; `begin` empties a temporary of its
/// own name).
fn start_token() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The exclusive commit lock of a store, released when dropped (or when the process
/// dies). Its file holds the fence: the highest attempt that committed, in decimal.
struct CommitLock {
    file: File,
    path: PathBuf,
}

impl CommitLock {
    fn take(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(COMMIT_LOCK);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc_o_cloexec() | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path, "open commit lock"))?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { file, path }),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked {
                        path,
                        secs: LOCK_WAIT.as_secs(),
                    })
                }
                // A filesystem without flock (Lustre mounted without `flock`): commits go
                // on as before the lock existed, the fence checked and raised but not
                // atomically with the publication. Refusing would stop checkpointing.
                Err(fs::TryLockError::Error(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL)
                    ) =>
                {
                    return Ok(Self { file, path })
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(&path, "flock")(e)),
            }
        }
    }

    /// The highest attempt that committed, if any did since fences exist.
    fn fence(&mut self) -> Result<Option<u32>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let mut s = String::new();
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_to_string(&mut s))
            .map_err(io(&self.path, "read fence"))?;
        Ok(s.trim().parse().ok())
    }

    fn set_fence(&mut self, attempt: u32) -> Result<(), StoreError> {
        use std::io::{Seek, SeekFrom};
        let text = format!("{attempt}\n");
        self.file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)))
            .and_then(|_| self.file.write_all(text.as_bytes()))
            .and_then(|_| self.file.sync_all())
            .map_err(io(&self.path, "write fence"))
    }
}

impl Drop for CommitLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn libc_o_cloexec() -> i32 {
    0o2000000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{manifest, tmp};

    #[test]
    fn uncommitted_generation_is_invisible() {
        let s = Store::new(tmp("pending"));
        s.begin(0).unwrap().commit(manifest()).unwrap();
        let p = s.begin(0).unwrap();
        let _ = p.create_file("proc-1.img").unwrap();
        assert_eq!(s.generations().unwrap(), vec![1]);
        assert_eq!(s.latest(), Some(1));
    }

    #[test]
    fn older_attempt_is_fenced() {
        let s = Store::new(tmp("fence"));
        s.begin(2).unwrap().commit(manifest()).unwrap();
        let stale = s.begin(1).unwrap();
        assert!(matches!(
            stale.commit(manifest()),
            Err(StoreError::Fenced {
                newer_attempt: 2,
                ..
            })
        ));
        assert_eq!(s.latest(), Some(1));
    }

    /// Run by [`concurrent_older_attempt_never_commits_after_newer`] in a child process
    /// (`TORPOR_STORE_COMMITTER=DIR:ATTEMPT:COUNT`); does nothing in a plain test run.
    /// Waits for `DIR.go`, then begins and commits COUNT times; attempt 1 creates
    /// `DIR.newer` after its first successful commit, attempt 0 prints `late GEN` for
    /// every commit that succeeded although `DIR.newer` existed when it began committing.
    #[test]
    fn committer_child() {
        let Ok(spec) = std::env::var("TORPOR_STORE_COMMITTER") else {
            return;
        };
        let mut it = spec.rsplitn(3, ':');
        let count: u32 = it.next().unwrap().parse().unwrap();
        let attempt: u32 = it.next().unwrap().parse().unwrap();
        let dir = PathBuf::from(it.next().unwrap());
        let flag = |ext: &str| PathBuf::from(format!("{}.{ext}", dir.display()));
        while !flag("go").exists() {
            std::thread::yield_now();
        }
        let s = Store::new(&dir);
        let mut after_newer_finished = 0;
        for _ in 0..count {
            // The stale writer keeps trying a few times after the newer one is done.
            if flag("finished").exists() {
                after_newer_finished += 1;
                if after_newer_finished > 5 {
                    break;
                }
            }
            let Ok(p) = s.begin(attempt) else { continue };
            let newer_before = flag("newer").exists();
            match p.commit(manifest()) {
                Ok(_) if attempt == 1 => {
                    let _ = fs::write(flag("newer"), b"");
                }
                Ok(g) if newer_before => println!("late {}", g.display()),
                _ => {}
            }
        }
        if attempt == 1 {
            let _ = fs::write(flag("finished"), b"");
        }
    }

    /// A stale writer (attempt 0, e.g. a node still running after the requeue) and the
    /// resumed program (attempt 1, slow to publish) commit
    /// concurrently into one store from two processes, over and over: once an attempt-1
    /// commit has returned, no attempt-0 commit may succeed, and at the end `latest` is
    /// attempt 1's, no attempt-0 generation lies above attempt 1's first, and every
    /// complete generation has its manifest.
    #[test]
    fn concurrent_older_attempt_never_commits_after_newer() {
        if std::env::var_os("TORPOR_STORE_COMMITTER").is_some() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        for round in 0..6 {
            let s = Store::new(tmp(&format!("race-{round}")));
            let flag = |ext: &str| PathBuf::from(format!("{}.{ext}", s.dir().display()));
            let _ = fs::remove_file(flag("go"));
            let _ = fs::remove_file(flag("newer"));
            let _ = fs::remove_file(flag("finished"));
            s.begin(0).unwrap().commit(manifest()).unwrap();
            let spawn = |attempt: u32, count: u32| {
                let mut c = std::process::Command::new(&exe);
                if attempt == 1 {
                    // A slow publication: the window the old check-then-rename left open.
                    c.env("TORPOR_STORE_TEST_PAUSE_MS", "15");
                }
                c.args([
                    "--exact",
                    "store::commit::tests::committer_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    "TORPOR_STORE_COMMITTER",
                    format!("{}:{attempt}:{count}", s.dir().display()),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
            };
            let stale = spawn(0, 300);
            let newer = spawn(1, 10);
            fs::write(flag("go"), b"").unwrap();
            let stale = stale.wait_with_output().unwrap();
            let newer = newer.wait_with_output().unwrap();
            assert!(stale.status.success() && newer.status.success());
            let late: Vec<String> = String::from_utf8_lossy(&stale.stdout)
                .lines()
                .filter(|l| l.starts_with("late "))
                .map(str::to_owned)
                .collect();
            assert!(
                late.is_empty(),
                "round {round}: attempt 0 committed after attempt 1 had: {late:?}"
            );
            assert!(
                flag("newer").exists(),
                "round {round}: attempt 1 never committed"
            );
            let latest = s.latest().unwrap();
            assert_eq!(s.manifest(latest).unwrap().attempt, 1, "round {round}");
            let gens = s.generations().unwrap();
            let attempts: Vec<(u64, u32)> = gens
                .iter()
                .map(|&g| (g, s.manifest(g).unwrap().attempt))
                .collect();
            let first1 = attempts.iter().find(|(_, a)| *a == 1).unwrap().0;
            assert!(
                attempts.iter().all(|&(g, a)| g <= first1 || a == 1),
                "round {round}: an attempt-0 generation above attempt 1's {first1}: {attempts:?}"
            );
            fs::remove_dir_all(s.dir()).unwrap();
            for f in ["go", "newer", "finished"] {
                let _ = fs::remove_file(flag(f));
            }
        }
    }
}
