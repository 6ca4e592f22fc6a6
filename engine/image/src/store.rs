//! The generation store of one program: `gen-NNNNNN/` directories, an atomic `latest`
//! pointer, and the commit protocol that makes a generation visible only once durable.
//!
//! ```text
//! <dir>/
//!   gen-000007/            complete generation (renamed into place after fsync)
//!     manifest.json        generation, attempt, time, process images
//!     proc-<pid>.img       one image per process
//!     files/               captured file contents
//!   .tmp-gen-000008-<pid>-<start>/ in progress; never taken for complete
//!   .del-gen-000005-<pid>/ being pruned (renamed away first, then removed)
//!   latest -> gen-000007   symlink replaced atomically (rename) after the commit
//!   .commit.lock           flock(2)ed around every commit; holds the fence (the highest
//!                          job attempt that committed here)
//! ```
//!
//! Fencing: a writer of job attempt A may not commit once a newer attempt committed (a
//! node still running after the job was requeued must not replace the resumed program's
//! generations). The check and the publication (rename into `gen-N`, `latest`) happen
//! under an exclusive `flock` of `.commit.lock`, whose content is the fence; a newer
//! attempt raises it before publishing. On NFS the Linux client turns `flock` into a
//! server-side lock and revalidates the locked file's data when it is taken, so the
//! fence holds across nodes (not on mounts with `nolock`, where locks are node-local, nor
//! on a filesystem without `flock`, where the commit runs unlocked).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

/// Name of the generation manifest inside a generation directory.
pub const MANIFEST: &str = "manifest.json";
/// Name of the pointer to the newest complete generation.
pub const LATEST: &str = "latest";
/// Directory of captured file copies inside a generation directory.
pub const FILES: &str = "files";
/// The commit lock and fence (see the module documentation); never removed.
pub const COMMIT_LOCK: &str = ".commit.lock";
/// How long a commit waits for another writer's commit to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors of the generation store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: manifest does not parse: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{dir}: generation {newer} was written by attempt {newer_attempt}; attempt {attempt} may not commit over it")]
    Fenced {
        dir: PathBuf,
        newer: u64,
        newer_attempt: u32,
        attempt: u32,
    },
    #[error("{path}: another writer held the commit lock for {secs} s")]
    Locked { path: PathBuf, secs: u64 },
    #[error("{dir}: no complete generation")]
    Empty { dir: PathBuf },
    #[error("{path}: {what}")]
    Damaged { path: PathBuf, what: String },
    #[error(transparent)]
    Unsafe(#[from] crate::safedir::SafeDirError),
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// One process image listed in a manifest. The first entry is the root of the tree;
/// the others (process trees, ADR 0006) carry their place in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ManifestProcess {
    pub pid: i32,
    /// Image path relative to the generation directory; empty for a zombie.
    pub image: String,
    #[serde(default)]
    pub ppid: i32,
    #[serde(default)]
    pub pgid: i32,
    #[serde(default)]
    pub sid: i32,
    /// A child that had exited but was not reaped yet: its wait status.
    #[serde(default)]
    pub zombie: Option<i32>,
}

/// The manifest of one generation, written last inside the temporary directory.
/// Unknown fields are refused, so that a damaged field name cannot hide the checksum.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub generation: u64,
    pub attempt: u32,
    pub time_unix: f64,
    pub hostname: String,
    pub processes: Vec<ManifestProcess>,
    /// Total bytes of the generation's files.
    #[serde(default)]
    pub bytes: u64,
    /// Shared memory mapped by several processes of a tree (process trees ADR).
    #[serde(default)]
    pub shared: Vec<SharedMemory>,
    /// Open file descriptions held by several processes of a tree (inherited or passed
    /// fds: one offset): recreated once and given to every holder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_files: Vec<SharedFile>,
    /// xxh3-64 (hex) of every captured file under `files/`, by name (filled by commit).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Incremental generations: the generation whose images this one's build on. Prune
    /// keeps it (and its own parent, ...) while this generation is kept.
    #[serde(default)]
    pub parent: Option<u64>,
    /// xxh3-64 (hex) of this manifest serialized with `checksum` = null (filled by commit).
    #[serde(default)]
    pub checksum: Option<String>,
}

impl Manifest {
    const KEY: &'static [u8] = b"\"checksum\"";

    /// The manifest as written: pretty JSON whose last field, `checksum`, is the xxh3-64
    /// of every byte before it (computed on bytes, so it never depends on how floats
    /// re-parse).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut m = self.clone();
        m.checksum = Some("0".repeat(16));
        let mut body = serde_json::to_vec_pretty(&m)?;
        if let Some(at) = find_last(&body, Self::KEY) {
            let sum = format!("{:016x}", xxh3_64(&body[..at]));
            if let Some(v) = find_last(&body, b"0000000000000000") {
                body[v..v + 16].copy_from_slice(sum.as_bytes());
            }
        }
        Ok(body)
    }

    /// Parses a manifest and checks its own checksum.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, StoreError> {
        let damaged = |what: &str| StoreError::Damaged {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        let at = find_last(bytes, Self::KEY).ok_or_else(|| damaged("manifest has no checksum"))?;
        let m: Manifest = serde_json::from_slice(bytes).map_err(|source| StoreError::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
        if m.checksum.as_deref() != Some(format!("{:016x}", xxh3_64(&bytes[..at])).as_str()) {
            return Err(damaged("manifest checksum mismatch"));
        }
        Ok(m)
    }

    /// Checks every captured file of generation directory `gen_dir` against its checksum.
    pub fn verify_files(&self, gen_dir: &Path) -> Result<(), StoreError> {
        for (name, sum) in &self.files {
            let bad = || StoreError::Damaged {
                path: gen_dir.join(MANIFEST),
                what: format!("bad captured file name {name:?}"),
            };
            let p = if name.contains('/') {
                // Process trees: pipes/<n>, shm/<n>, p<pid>/files/<name>.
                if !tree_file_name(name) {
                    return Err(bad());
                }
                gen_dir.join(name)
            } else if name.starts_with('.') {
                return Err(bad());
            } else {
                gen_dir.join(FILES).join(name)
            };
            let b = fs::read(&p).map_err(io(&p, "read"))?;
            if format!("{:016x}", xxh3_64(&b)) != *sum {
                return Err(StoreError::Damaged {
                    path: p,
                    what: format!("checksum mismatch in captured file ({} bytes)", b.len()),
                });
            }
        }
        Ok(())
    }
}

/// Whether `name` is one of the files a process tree adds to a generation:
/// `pipes/<n>`, `shm/<n>` or `p<pid>/files/<name>` (no other shape, nothing hidden).
fn tree_file_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/');
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["pipes" | "shm", n] => digits(n),
        [p, "files", f] => p.strip_prefix('p').is_some_and(digits) && plain(f),
        _ => false,
    }
}

/// Checksums of the files a process tree adds (see [`tree_file_name`]), by relative path.
fn tree_file_sums(tmp: &Path, out: &mut BTreeMap<String, String>) -> Result<(), StoreError> {
    let Ok(rd) = fs::read_dir(tmp) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let sub = match name.as_str() {
            "pipes" | "shm" => name.clone(),
            n if n
                .strip_prefix('p')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) =>
            {
                format!("{n}/{FILES}")
            }
            _ => continue,
        };
        for (f, sum) in file_sums(&tmp.join(&sub))? {
            out.insert(format!("{sub}/{f}"), sum);
        }
    }
    Ok(())
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Checksums of the regular files directly under `dir` (captured file copies).
fn file_sums(dir: &Path) -> Result<BTreeMap<String, String>, StoreError> {
    let mut out = BTreeMap::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir, "read directory")(e)),
    };
    for e in rd {
        let e = e.map_err(io(dir, "read directory"))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let p = e.path();
        if !e.file_type().map_err(io(&p, "stat"))?.is_file() {
            continue;
        }
        let b = fs::read(&p).map_err(io(&p, "read"))?;
        out.insert(name, format!("{:016x}", xxh3_64(&b)));
    }
    Ok(out)
}

/// One shared memory object (anonymous shared mapping, memfd, deleted `/dev/shm` file)
/// mapped by several processes of a tree; its contents at the checkpoint are in `file`
/// (relative to the generation directory).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedMemory {
    pub file: String,
    /// Offset of the mappings in the object, and their length (the same in every member).
    pub offset: u64,
    pub len: u64,
    /// (pid, start address) of every mapping.
    pub members: Vec<(i32, u64)>,
}

/// One open file description (regular file or named FIFO) held by several processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SharedFile {
    /// (pid, fd) of every holder.
    pub members: Vec<(i32, i32)>,
}

/// The image directory of one program.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Directory name of generation `n`.
pub fn gen_name(n: u64) -> String {
    format!("gen-{n:06}")
}

fn parse_gen(name: &str) -> Option<u64> {
    let n = name.strip_prefix("gen-")?;
    if n.len() < 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0700) if it does not exist, refusing paths another user
    /// could redirect (see [`crate::safedir`]).
    pub fn create(&self) -> Result<(), StoreError> {
        crate::safedir::ensure_private_dir(&self.dir)?;
        Ok(())
    }

    /// Removes temporaries that can never be committed: those of a generation that is
    /// already complete, of a process that no longer exists, or of this process (a round
    /// of ours that was cut off before it could clean up; only one round runs at a time).
    pub fn clean_temporaries(&self) {
        let newest = self.generations().ok().and_then(|g| g.last().copied());
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with(".del-gen-") {
                // A pruned generation whose removal was cut off.
                let _ = fs::remove_dir_all(e.path());
                continue;
            }
            let Some(rest) = name.strip_prefix(".tmp-gen-") else {
                continue;
            };
            // `<gen>-<pid>-<start>` (or `<gen>-<pid>` from older writers). Any temporary
            // with our pid goes, also one of an earlier incarnation of this program (a
            // restored program has the original's pid and a new start time): its writer
            // is dead, unless it runs on a node that was given up, whose round is lost
            // anyway.
            let mut parts = rest.splitn(3, '-');
            let gen = parts.next().and_then(|g| g.parse::<u64>().ok());
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            let start_ok = parts.next().is_none_or(|s| s.parse::<u64>().is_ok());
            let stale = match (gen, pid) {
                (Some(g), Some(p)) if start_ok => {
                    newest.is_some_and(|n| g <= n)
                        || p == std::process::id()
                        || !Path::new(&format!("/proc/{p}")).exists()
                }
                _ => true,
            };
            if stale {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// The parent generation that generation `n`'s manifest names, if any.
    pub fn parent_of(&self, n: u64) -> Option<u64> {
        let p = self.gen_dir(n).join(MANIFEST);
        let b = fs::read(&p).ok()?;
        Manifest::parse(&b, &p).ok()?.parent
    }

    pub fn gen_dir(&self, n: u64) -> PathBuf {
        self.dir.join(gen_name(n))
    }

    /// Complete generations, oldest first.
    pub fn generations(&self) -> Result<Vec<u64>, StoreError> {
        let mut v = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io(&self.dir, "read directory")(e)),
        };
        for e in rd {
            let e = e.map_err(io(&self.dir, "read directory"))?;
            if let Some(n) = e.file_name().to_str().and_then(parse_gen) {
                v.push(n);
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    /// The generation `latest` points to, if any.
    pub fn latest(&self) -> Option<u64> {
        let t = fs::read_link(self.dir.join(LATEST)).ok()?;
        parse_gen(t.to_str()?)
    }

    /// Reads the manifest of generation `n`.
    pub fn manifest(&self, n: u64) -> Result<Manifest, StoreError> {
        let p = self.gen_dir(n).join(MANIFEST);
        let b = fs::read(&p).map_err(io(&p, "read"))?;
        Manifest::parse(&b, &p)
    }

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

    /// Deletes all but the newest `keep` complete generations and stale temporaries of
    /// processes that no longer exist.
    /// Generations an incremental generation depends on are kept as long as it is.
    pub fn prune(&self, keep: usize) -> Result<(), StoreError> {
        let gens = self.generations()?;
        let latest = self.latest();
        if gens.len() > keep {
            let mut kept: Vec<u64> = gens[gens.len() - keep..].to_vec();
            kept.extend(latest);
            let mut i = 0;
            while i < kept.len() {
                // A generation whose manifest cannot be read cannot be restored: it needs
                // no parent.
                if let Some(p) = self.parent_of(kept[i]) {
                    if !kept.contains(&p) {
                        kept.push(p);
                    }
                }
                i += 1;
            }
            // Newest first: a generation is never left without the one it builds on,
            // even by a prune that is cut off.
            for &n in gens[..gens.len() - keep].iter().rev() {
                if !kept.contains(&n) {
                    // Renamed out of the way first: a removal cut off half-way must not
                    // leave a generation that looks complete with files missing.
                    let doomed =
                        self.dir
                            .join(format!(".del-{}-{}", gen_name(n), std::process::id()));
                    if fs::rename(self.gen_dir(n), &doomed).is_ok() {
                        let _ = fs::remove_dir_all(&doomed);
                    }
                }
            }
        }
        self.clean_temporaries();
        Ok(())
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

/// fsyncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("torpor-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn manifest() -> Manifest {
        Manifest {
            hostname: "h".into(),
            ..Default::default()
        }
    }

    #[test]
    fn manifest_and_captured_files_are_checksummed() {
        let s = Store::new(tmp("sums"));
        let p = s.begin(0).unwrap();
        fs::create_dir(p.path().join(FILES)).unwrap();
        fs::write(p.path().join(FILES).join("f0"), b"hello").unwrap();
        let g = p.commit(manifest()).unwrap();
        let m = s.manifest(1).unwrap();
        assert_eq!(m.files.len(), 1);
        m.verify_files(&g).unwrap();
        fs::write(g.join(FILES).join("f0"), b"hellp").unwrap();
        assert!(matches!(
            m.verify_files(&g),
            Err(StoreError::Damaged { .. })
        ));
        let raw = fs::read(g.join(MANIFEST)).unwrap();
        for at in 0..raw.len() {
            let mut b = raw.clone();
            b[at] ^= 0x04;
            assert!(
                Manifest::parse(&b, &g).is_err(),
                "flip at {at} not detected"
            );
        }
    }

    #[test]
    fn tree_files_are_checksummed_and_names_checked() {
        let s = Store::new(tmp("treesums"));
        let p = s.begin(0).unwrap();
        fs::create_dir_all(p.path().join("pipes")).unwrap();
        fs::create_dir_all(p.path().join("p42").join(FILES)).unwrap();
        fs::write(p.path().join("pipes").join("77"), b"in flight").unwrap();
        fs::write(p.path().join("p42").join(FILES).join("fd-3"), b"copy").unwrap();
        let g = p.commit(manifest()).unwrap();
        let m = s.manifest(1).unwrap();
        assert!(m.files.contains_key("pipes/77") && m.files.contains_key("p42/files/fd-3"));
        m.verify_files(&g).unwrap();
        fs::write(g.join("pipes").join("77"), b"in flighT").unwrap();
        assert!(m.verify_files(&g).is_err());
        for bad in [
            "p42/../x",
            "pipes/x",
            "shm/1/2",
            "q1/files/a",
            "p1/files/.x",
        ] {
            assert!(!tree_file_name(bad), "{bad} accepted");
        }
    }

    #[test]
    fn commit_makes_latest_and_prune_keeps_n() {
        let s = Store::new(tmp("commit"));
        for _ in 0..4 {
            let p = s.begin(0).unwrap();
            p.commit(manifest()).unwrap();
        }
        assert_eq!(s.latest(), Some(4));
        s.prune(2).unwrap();
        assert_eq!(s.generations().unwrap(), vec![3, 4]);
    }

    /// A kept incremental generation keeps its chain (parent, grandparent, ...) until a
    /// newer full generation makes it unnecessary.
    #[test]
    fn prune_keeps_what_kept_generations_depend_on() {
        let s = Store::new(tmp("chain"));
        let with_parent = |p: Option<u64>| Manifest {
            parent: p,
            ..manifest()
        };
        // 1 full, 2 on 1, 3 on 2, 4 full, 5 on 4.
        let parents = [None, Some(1), Some(2), None, Some(4)];
        let expect: [&[u64]; 5] = [&[1], &[1, 2], &[1, 2, 3], &[1, 2, 3, 4], &[4, 5]];
        for (p, want) in parents.into_iter().zip(expect) {
            s.begin(0).unwrap().commit(with_parent(p)).unwrap();
            s.prune(2).unwrap();
            assert_eq!(s.generations().unwrap(), want);
        }
        assert_eq!(s.parent_of(5), Some(4));
        assert_eq!(s.parent_of(4), None);
    }

    #[test]
    fn cut_off_temporaries_are_cleaned_at_the_next_round() {
        let s = Store::new(tmp("clean"));
        s.begin(0).unwrap().commit(manifest()).unwrap();
        // A dead writer's leftover for the next generation, one of an old generation,
        // and one of a live process (pid 1) for a generation not yet complete.
        for name in [
            ".tmp-gen-000002-999999999",
            ".tmp-gen-000001-1",
            ".tmp-gen-000009-1",
        ] {
            fs::create_dir_all(s.dir().join(name).join("files")).unwrap();
        }
        let p = s.begin(0).unwrap();
        assert!(!s.dir().join(".tmp-gen-000002-999999999").exists());
        assert!(!s.dir().join(".tmp-gen-000001-1").exists());
        assert!(s.dir().join(".tmp-gen-000009-1").exists());
        p.commit(manifest()).unwrap();
        assert_eq!(s.latest(), Some(2));
    }

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
                    "store::tests::committer_child",
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
