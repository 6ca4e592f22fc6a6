//! Generation manifests: what a generation holds (processes, shared memory, open files,
//! its parent), the manifest's own checksum, and the checksums of captured files.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{io, StoreError, FILES, MANIFEST};

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
/// `pipes/<n>`, `pipes/<n>.from` (senders of queued datagrams), `shm/<n>` or
/// `p<pid>/files/<name>` (no other shape, nothing hidden).
fn tree_file_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/');
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["pipes", n] => digits(n) || n.strip_suffix(".from").is_some_and(digits),
        ["shm", n] => digits(n),
        [p, "files", f] => p.strip_prefix('p').is_some_and(digits) && plain(f),
        _ => false,
    }
}

/// Checksums of the files a process tree adds (see [`tree_file_name`]), by relative path.
pub(super) fn tree_file_sums(
    tmp: &Path,
    out: &mut BTreeMap<String, String>,
) -> Result<(), StoreError> {
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
pub(super) fn file_sums(dir: &Path) -> Result<BTreeMap<String, String>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{manifest, tmp};
    use crate::store::Store;

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
        fs::write(p.path().join("pipes").join("77.from"), b"\0\0").unwrap();
        fs::write(p.path().join("p42").join(FILES).join("fd-3"), b"copy").unwrap();
        let g = p.commit(manifest()).unwrap();
        let m = s.manifest(1).unwrap();
        assert!(m.files.contains_key("pipes/77") && m.files.contains_key("p42/files/fd-3"));
        assert!(m.files.contains_key("pipes/77.from"));
        m.verify_files(&g).unwrap();
        fs::write(g.join("pipes").join("77"), b"in flighT").unwrap();
        assert!(m.verify_files(&g).is_err());
        for bad in [
            "p42/../x",
            "pipes/x",
            "pipes/x.from",
            "pipes/.from",
            "shm/1.from",
            "shm/1/2",
            "q1/files/a",
            "p1/files/.x",
        ] {
            assert!(!tree_file_name(bad), "{bad} accepted");
        }
    }
}
