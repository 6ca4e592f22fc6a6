//! Restore stage 1, selection: the newest valid generation (with fallback), owned by the
//! caller, and the checks that this kernel and these files can take it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use torpor_image::meta::*;
use torpor_image::store::{Store, MANIFEST};
use torpor_image::ImageReader;
use xxhash_rust::xxh3::xxh3_64;

use super::{ioe, my_uid, RestoreError};
use crate::plan::*;
use crate::procmaps;

/// A generation chosen for restore.
pub struct Selected {
    pub gen_dir: PathBuf,
    pub generation: Option<u64>,
    pub reader: ImageReader,
    /// Newer generations that were skipped, with the reason.
    pub skipped: Vec<String>,
    /// When the selection started (for the timing printed with `--verbose`).
    pub started: std::time::Instant,
    /// The generation's manifest (absent when an image file was given).
    pub manifest: Option<torpor_image::store::Manifest>,
    /// An incremental image's parent, grandparent, ... back to a full image.
    pub chain: Vec<ImageReader>,
}

pub(super) fn open_checked(img: &Path) -> Result<ImageReader, RestoreError> {
    let md = fs::metadata(img).map_err(ioe(img.display().to_string()))?;
    if md.uid() != my_uid() {
        return Err(RestoreError::Owner {
            path: img.into(),
            owner: md.uid(),
            me: my_uid(),
        });
    }
    let r = ImageReader::open(img)?;
    super::verify::verify_chunks(&r)?;
    Ok(r)
}

type Opened = (ImageReader, torpor_image::store::Manifest, Vec<ImageReader>);

fn open_gen(gen_dir: &Path) -> Result<Opened, RestoreError> {
    // The generation and its manifest must be the caller's too: another user must not be
    // able to point us at images or captured files of their choosing.
    for p in [gen_dir.to_path_buf(), gen_dir.join(MANIFEST)] {
        let md = fs::symlink_metadata(&p).map_err(ioe(p.display().to_string()))?;
        if md.uid() != my_uid() {
            return Err(RestoreError::Owner {
                path: p,
                owner: md.uid(),
                me: my_uid(),
            });
        }
    }
    let m = fs::read(gen_dir.join(MANIFEST))
        .map_err(ioe(gen_dir.join(MANIFEST).display().to_string()))?;
    let m = torpor_image::store::Manifest::parse(&m, &gen_dir.join(MANIFEST))?;
    // Captured file copies (deleted files, shared mappings, job output) are put back
    // before the point of no return: they must be intact too.
    m.verify_files(gen_dir)?;
    let p = m
        .processes
        .first()
        .ok_or_else(|| RestoreError::NoImage(gen_dir.into()))?;
    let first = open_checked(&gen_dir.join(&p.image))?;
    // An incremental image is valid only with its whole chain (ADR 0009).
    let chain = super::chain::open_chain(&gen_dir.join(&p.image), first.meta())?;
    // A process tree is valid only as a whole (ADR 0006).
    for other in m.processes.iter().skip(1).filter(|p| !p.image.is_empty()) {
        let r = open_checked(&gen_dir.join(&other.image))?;
        if r.meta().parent.is_some() {
            return Err(RestoreError::NoImage(gen_dir.join(&other.image)));
        }
    }
    Ok((first, m, chain))
}

/// Chooses what to restore from `path`: an image file, a generation directory, or a
/// program's image directory (newest valid generation, falling back to older ones).
pub fn select(path: &Path) -> Result<Selected, RestoreError> {
    let started = std::time::Instant::now();
    if path.is_file() {
        let reader = open_checked(path)?;
        let chain = super::chain::open_chain(path, reader.meta())?;
        return Ok(Selected {
            gen_dir: path.parent().unwrap_or(Path::new(".")).into(),
            generation: None,
            reader,
            skipped: vec![],
            started,
            manifest: None,
            chain,
        });
    }
    if path.join(MANIFEST).is_file() {
        let (reader, manifest, chain) = open_gen(path)?;
        return Ok(Selected {
            gen_dir: path.into(),
            generation: None,
            reader,
            skipped: vec![],
            started,
            manifest: Some(manifest),
            chain,
        });
    }
    let store = Store::new(path);
    let gens = store.generations()?;
    if gens.is_empty() {
        return Err(RestoreError::NoImage(path.into()));
    }
    let mut skipped = Vec::new();
    for &g in gens.iter().rev() {
        match open_gen(&store.gen_dir(g)) {
            Ok((reader, manifest, chain)) => {
                return Ok(Selected {
                    gen_dir: store.gen_dir(g),
                    generation: Some(g),
                    reader,
                    skipped,
                    started,
                    manifest: Some(manifest),
                    chain,
                })
            }
            Err(e @ RestoreError::Owner { .. }) => return Err(e),
            Err(e) => skipped.push(format!("generation {g}: {e}")),
        }
    }
    Err(RestoreError::NoValidGeneration {
        dir: path.into(),
        reasons: skipped,
    })
}

/// Refuses images that this kernel, this machine or the current files cannot take.
pub fn check_compat(meta: &ProcessMeta) -> Result<(), RestoreError> {
    let maps = fs::read_to_string("/proc/self/maps").map_err(ioe("/proc/self/maps"))?;
    let maps = procmaps::parse(&maps);
    let kernel = meta.origin.kernel.clone();
    if meta.vdso.vdso_len != 0 {
        let v = maps
            .iter()
            .find(|v| v.name == "[vdso]")
            .ok_or(RestoreError::Vdso {
                what: "no vdso here",
                kernel: kernel.clone(),
            })?;
        if v.len() != meta.vdso.vdso_len {
            return Err(RestoreError::Vdso {
                what: "vdso size differs",
                kernel,
            });
        }
        // SAFETY: the vdso is mapped readable in every process for its whole length.
        let bytes = unsafe { std::slice::from_raw_parts(v.start as *const u8, v.len() as usize) };
        if xxh3_64(bytes) != meta.vdso.vdso_hash {
            return Err(RestoreError::Vdso {
                what: "vdso contents differ",
                kernel,
            });
        }
        let vvar = maps.iter().find(|v| v.name == "[vvar]");
        let vclock = maps.iter().find(|v| v.name == "[vvar_vclock]");
        let vvar_len = match (vvar, vclock) {
            (Some(a), Some(c)) if c.start == a.end => c.end - a.start,
            (Some(a), _) => a.len(),
            _ => 0,
        };
        if vvar_len != meta.vdso.vvar_len {
            return Err(RestoreError::Vdso {
                what: "vvar layout differs",
                kernel,
            });
        }
    }
    for r in &meta.regions {
        if r.start < RESTORER_END && STAGE2_BASE < r.end {
            return Err(RestoreError::Overlap {
                start: r.start,
                end: r.end,
            });
        }
        if matches!(r.kind, RegionKind::FilePrivate | RegionKind::FileShared) {
            let Some(id) = r.file else { continue };
            if r.captured.is_some() {
                continue; // a shared writable mapping: its contents are put back
            }
            let md = fs::metadata(&r.name).map_err(|_| RestoreError::FileChanged {
                path: r.name.clone(),
                why: "was removed",
            })?;
            if md.size() != id.size
                || md.mtime() != id.mtime_sec
                || md.mtime_nsec() != id.mtime_nsec
            {
                return Err(RestoreError::FileChanged {
                    path: r.name.clone(),
                    why: "binary, library or mapped file changed",
                });
            }
        }
    }
    Ok(())
}
