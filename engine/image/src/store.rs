//! The generation store of one program: `gen-NNNNNN/` directories, an atomic `latest`
//! pointer, and the commit protocol that makes a generation visible only once durable.
//!
//! ```text
//! <dir>/
//!   gen-000007/            complete generation (renamed into place after fsync)
//!     manifest.json        generation, attempt, time, process images
//!     proc-<pid>.img       one image per process
//!     files/               captured file contents
//!   .tmp-gen-000008-<pid>/ in progress; never taken for complete
//!   .del-gen-000005-<pid>/ being pruned (renamed away first, then removed)
//!   latest -> gen-000007   symlink replaced atomically (rename) after the commit
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Name of the generation manifest inside a generation directory.
pub const MANIFEST: &str = "manifest.json";
/// Name of the pointer to the newest complete generation.
pub const LATEST: &str = "latest";

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
    #[error("{dir}: no complete generation")]
    Empty { dir: PathBuf },
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

/// One process image listed in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestProcess {
    pub pid: i32,
    pub image: String,
}

/// The manifest of one generation, written last inside the temporary directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub generation: u64,
    pub attempt: u32,
    pub time_unix: f64,
    pub hostname: String,
    pub processes: Vec<ManifestProcess>,
    /// Total bytes of the generation's files.
    #[serde(default)]
    pub bytes: u64,
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
            let mut parts = rest.splitn(2, '-');
            let gen = parts.next().and_then(|g| g.parse::<u64>().ok());
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            let stale = match (gen, pid) {
                (Some(g), Some(p)) => {
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
        serde_json::from_slice(&b).map_err(|source| StoreError::Manifest { path: p, source })
    }

    /// Starts generation `latest + 1` for job attempt `attempt`.
    pub fn begin(&self, attempt: u32) -> Result<Pending, StoreError> {
        self.create()?;
        self.clean_temporaries();
        let newest = self.generations()?.last().copied().unwrap_or(0);
        let n = newest.max(self.latest().unwrap_or(0)) + 1;
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", gen_name(n), std::process::id()));
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
    pub fn prune(&self, keep: usize) -> Result<(), StoreError> {
        let gens = self.generations()?;
        let latest = self.latest();
        if gens.len() > keep {
            for &n in &gens[..gens.len() - keep] {
                if Some(n) != latest {
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
    /// attempt already committed a generation (fencing).
    pub fn commit(&self, mut manifest: Manifest) -> Result<PathBuf, StoreError> {
        let dir = self.store.dir().to_path_buf();
        if let Some(l) = self.store.latest() {
            if let Ok(m) = self.store.manifest(l) {
                if m.attempt > self.attempt {
                    let _ = fs::remove_dir_all(&self.tmp);
                    return Err(StoreError::Fenced {
                        dir,
                        newer: l,
                        newer_attempt: m.attempt,
                        attempt: self.attempt,
                    });
                }
            }
        }
        manifest.generation = self.n;
        manifest.attempt = self.attempt;
        let body = serde_json::to_vec_pretty(&manifest).map_err(|source| StoreError::Manifest {
            path: self.tmp.join(MANIFEST),
            source,
        })?;
        let (mut f, p) = self.create_file(MANIFEST)?;
        f.write_all(&body).map_err(io(&p, "write"))?;
        f.sync_all().map_err(io(&p, "fsync"))?;
        sync_dir(&self.tmp)?;
        let fin = self.store.gen_dir(self.n);
        fs::rename(&self.tmp, &fin).map_err(io(&fin, "rename into place"))?;
        sync_dir(&dir)?;
        let link_tmp = dir.join(format!(".latest-{}", std::process::id()));
        let _ = fs::remove_file(&link_tmp);
        std::os::unix::fs::symlink(gen_name(self.n), &link_tmp)
            .map_err(io(&link_tmp, "symlink"))?;
        fs::rename(&link_tmp, dir.join(LATEST)).map_err(io(&dir, "update latest"))?;
        sync_dir(&dir)?;
        Ok(fin)
    }

    /// Abandons the generation, removing its temporary directory.
    pub fn abort(&self) {
        let _ = fs::remove_dir_all(&self.tmp);
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
            generation: 0,
            attempt: 0,
            time_unix: 0.0,
            hostname: "h".into(),
            processes: vec![],
            bytes: 0,
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
}
