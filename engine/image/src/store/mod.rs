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

mod commit;
mod manifest;
mod prune;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use commit::Pending;
pub use manifest::{Manifest, ManifestProcess, SharedFile, SharedMemory};

/// Name of the generation manifest inside a generation directory.
pub const MANIFEST: &str = "manifest.json";
/// Name of the pointer to the newest complete generation.
pub const LATEST: &str = "latest";
/// Directory of captured file copies inside a generation directory.
pub const FILES: &str = "files";
/// The commit lock and fence (see the module documentation); never removed.
pub const COMMIT_LOCK: &str = ".commit.lock";

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
}

/// fsyncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir, "fsync directory"))
}

#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("torpor-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    pub(super) fn manifest() -> Manifest {
        Manifest {
            hostname: "h".into(),
            ..Default::default()
        }
    }
}
