//! Restore stage 1, incremental chains (ADR 0009): opens and checks the parent images an
//! incremental image builds on, and resolves every page of the newest image to the
//! newest image of the chain that describes it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use torpor_image::meta::{Chunk, Codec, ProcessMeta, Region};
use torpor_image::store::{Manifest, Store, MANIFEST};
use torpor_image::ImageReader;

use super::{ioe, my_uid, RestoreError};
use crate::plan::*;

fn broken(path: &Path, why: String) -> RestoreError {
    RestoreError::Io {
        what: format!("{}: incremental chain", path.display()),
        source: std::io::Error::other(why),
    }
}

/// Opens the parents of the image at `image` (whose metadata is `meta`): parent,
/// grandparent, ... up to a full image. Each must be the caller's, its generation's
/// manifest must match the checksum the child recorded, and its chunks must verify; and
/// together they must describe every page of `meta`'s regions.
pub fn open_chain(image: &Path, meta: &ProcessMeta) -> Result<Vec<ImageReader>, RestoreError> {
    let mut out: Vec<ImageReader> = Vec::new();
    let mut link = meta.parent.clone();
    // <program dir>/gen-N/proc-<pid>.img: parents are sibling generations.
    let mut gdir: PathBuf = image.parent().unwrap_or(Path::new(".")).to_path_buf();
    while let Some(p) = link {
        if out.len() + 1 >= MAX_CHAIN {
            return Err(broken(image, format!("longer than {MAX_CHAIN} images")));
        }
        let prog = gdir.parent().unwrap_or(Path::new("."));
        let pdir = Store::new(prog).gen_dir(p.generation);
        for q in [pdir.clone(), pdir.join(MANIFEST)] {
            let md = fs::symlink_metadata(&q).map_err(ioe(q.display().to_string()))?;
            if md.uid() != my_uid() {
                return Err(RestoreError::Owner {
                    path: q,
                    owner: md.uid(),
                    me: my_uid(),
                });
            }
        }
        let mpath = pdir.join(MANIFEST);
        let m = Manifest::parse(
            &fs::read(&mpath).map_err(ioe(mpath.display().to_string()))?,
            &mpath,
        )?;
        if m.checksum.as_deref() != Some(p.manifest_checksum.as_str()) {
            return Err(broken(
                image,
                format!(
                    "parent generation {} is not the one this image was taken on (manifest checksum differs)",
                    p.generation
                ),
            ));
        }
        if p.image.is_empty() || p.image.starts_with('/') || p.image.split('/').any(|c| c == "..") {
            return Err(broken(
                image,
                format!("bad parent image name {:?}", p.image),
            ));
        }
        let ipath = pdir.join(&p.image);
        let r = super::select::open_checked(&ipath)
            .map_err(|e| broken(image, format!("parent generation {}: {e}", p.generation)))?;
        link = r.meta().parent.clone();
        gdir = pdir;
        out.push(r);
    }
    let metas: Vec<&ProcessMeta> = std::iter::once(meta)
        .chain(out.iter().map(|r| r.meta()))
        .collect();
    for r in &meta.regions {
        pieces(r, &metas).map_err(|why| broken(image, why))?;
    }
    Ok(out)
}

/// Sorted, disjoint intervals: `a ∩ b`.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Sorted, disjoint intervals: `a \ b`. One merge pass: a 1%-dirty incremental image of
/// 4 GiB has ~10 000 written ranges in one region, and a pass of `b` per interval of `a`
/// cost ~100 ms of restore time per call.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut at = s;
        // Intervals of `b` wholly before this one are before every later one too.
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        for &(bs, be) in &b[j..] {
            if bs >= e {
                break;
            }
            if be <= at {
                continue;
            }
            if bs > at {
                out.push((at, bs));
            }
            at = at.max(be);
        }
        if at < e {
            out.push((at, e));
        }
    }
    out
}

/// For region `r` of the newest image (`metas[0]`): which image of the chain describes
/// which pages, as (index into `metas`, start, end). Every page of `r` is in exactly one.
fn pieces(r: &Region, metas: &[&ProcessMeta]) -> Result<Vec<(usize, u64, u64)>, String> {
    let mut remaining = vec![(r.start, r.end)];
    let mut out = Vec::new();
    for (k, m) in metas.iter().enumerate() {
        if remaining.is_empty() {
            break;
        }
        if k > 0 {
            // The newer image inherited these pages: this one must have mapped them.
            let mapped: Vec<(u64, u64)> = m.regions.iter().map(|g| (g.start, g.end)).collect();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (a, b) in mapped {
                match merged.last_mut() {
                    Some(l) if l.1 == a => l.1 = b,
                    _ => merged.push((a, b)),
                }
            }
            if intersect(&remaining, &merged) != remaining {
                return Err(format!(
                    "image {k} of the chain does not map inherited pages of region {:#x}-{:#x}",
                    r.start, r.end
                ));
            }
        }
        let mut taken = Vec::new();
        for g in m
            .regions
            .iter()
            .filter(|g| g.start < r.end && r.start < g.end)
        {
            let auth: Vec<(u64, u64)> = if g.inherit {
                g.written.iter().map(|&[a, b]| (a, b)).collect()
            } else {
                vec![(g.start, g.end)]
            };
            for (a, b) in intersect(&auth, &remaining) {
                out.push((k, a, b));
                taken.push((a, b));
            }
        }
        taken.sort_unstable();
        remaining = subtract(&remaining, &taken);
        // An image that describes this region fully ends the walk; pages it does not
        // map at all were not part of the region then, which a newer image must cover.
        let full_here = m
            .regions
            .iter()
            .any(|g| !g.inherit && g.start <= r.start && r.end <= g.end);
        if full_here {
            break;
        }
    }
    if let Some(&(a, b)) = remaining.first() {
        return Err(format!(
            "no image of the chain describes pages {a:#x}-{b:#x} of region {:#x}-{:#x}",
            r.start, r.end
        ));
    }
    Ok(out)
}

/// A contiguous piece of a chunk: `len` bytes at `vaddr`, which are the decoded bytes of
/// `chunk` from `skip` on (a chunk is one piece, a gathered chunk one per run).
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    vaddr: u64,
    len: u64,
    skip: u64,
    offset: u64,
    stored_len: u64,
    dec_len: u64,
    codec: Codec,
}

/// The pieces of `chunks`, sorted by address.
pub(super) fn pieces_of(chunks: &[Chunk]) -> Vec<Piece> {
    let mut out: Vec<Piece> = chunks
        .iter()
        .flat_map(|c| {
            c.pieces().into_iter().map(|(vaddr, len, skip)| Piece {
                vaddr,
                len,
                skip,
                offset: c.offset,
                stored_len: c.stored_len,
                dec_len: c.len,
                codec: c.codec,
            })
        })
        .collect();
    out.sort_by_key(|p| p.vaddr);
    out
}

/// Appends the extents of region `r`: each page from the newest image of `all` that
/// describes it (`sorted[k]` are the pieces of `all[k]`'s chunks, [`pieces_of`]). The
/// extents are sorted by address, except that the parts of a compressed chunk used only
/// in part come last, grouped by chunk: stage 2 then decodes each such chunk once
/// (`fill.rs`), however its parts interleave with other images' pages.
pub(super) fn resolve(
    r: &Region,
    all: &[(&ProcessMeta, i32)],
    sorted: &[Vec<Piece>],
    out: &mut Vec<PlanExtent>,
) {
    let metas: Vec<&ProcessMeta> = all.iter().map(|(m, _)| *m).collect();
    // Checked by open_chain; a full image always resolves to itself.
    let ps = pieces(r, &metas).unwrap_or_default();
    let first = out.len();
    for (k, a, b) in ps {
        let chunks = &sorted[k];
        let fd = all[k].1 as i64;
        let mut i = chunks.partition_point(|c| c.vaddr + c.len <= a);
        while i < chunks.len() && chunks[i].vaddr < b {
            let c = chunks[i];
            i += 1;
            let (s, e) = (a.max(c.vaddr), b.min(c.vaddr + c.len));
            if s >= e {
                continue;
            }
            let skip = c.skip + (s - c.vaddr);
            out.push(match c.codec {
                Codec::Raw => PlanExtent {
                    vaddr: s,
                    len: e - s,
                    file_off: c.offset + skip,
                    stored_len: e - s,
                    codec: CODEC_RAW,
                    fd,
                    skip: 0,
                    dec_len: e - s,
                },
                Codec::Lz4 => PlanExtent {
                    vaddr: s,
                    len: e - s,
                    file_off: c.offset,
                    stored_len: c.stored_len,
                    codec: CODEC_LZ4,
                    fd,
                    skip,
                    dec_len: c.dec_len,
                },
            });
        }
    }
    out[first..].sort_by_key(|e| {
        let partial = e.codec != CODEC_RAW && (e.skip != 0 || e.dec_len != e.len);
        if partial {
            (1, e.fd, e.file_off, e.vaddr)
        } else {
            (0, 0, 0, e.vaddr)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use torpor_image::meta::{ParentRef, RegionKind};

    fn region(start: u64, end: u64, inherit: bool, written: Vec<[u64; 2]>) -> Region {
        Region {
            start,
            end,
            prot: 3,
            kind: RegionKind::Anon,
            name: String::new(),
            offset: 0,
            file: None,
            pages_saved: 0,
            pages_zero: 0,
            flags: vec![],
            captured: None,
            inherit,
            written,
        }
    }

    fn chunk(vaddr: u64, len: u64, offset: u64, codec: Codec) -> Chunk {
        Chunk {
            vaddr,
            len,
            offset,
            stored_len: if codec == Codec::Raw { len } else { 100 },
            codec,
            checksum: 0,
            runs: vec![],
        }
    }

    /// Pages the newer image wrote come from it (stored or zero); the rest from the
    /// base, raw chunks split exactly, a compressed chunk used in parts.
    #[test]
    fn each_page_from_the_newest_image_that_describes_it() {
        let base = ProcessMeta {
            regions: vec![region(0x10000, 0x20000, false, vec![])],
            chunks: vec![
                chunk(0x10000, 0x4000, 4096, Codec::Raw),
                chunk(0x14000, 0xc000, 0x5000, Codec::Lz4),
            ],
            ..Default::default()
        };
        let inc = ProcessMeta {
            regions: vec![region(
                0x10000,
                0x20000,
                true,
                vec![[0x11000, 0x12000], [0x15000, 0x16000]],
            )],
            chunks: vec![chunk(0x11000, 0x1000, 4096, Codec::Raw)],
            parent: Some(ParentRef::default()),
            ..Default::default()
        };
        let all = [(&inc, 7), (&base, 8)];
        let sorted: Vec<Vec<Piece>> = all.iter().map(|(m, _)| pieces_of(&m.chunks)).collect();
        let mut out = Vec::new();
        resolve(&inc.regions[0], &all, &sorted, &mut out);
        let got: Vec<(u64, u64, i64, u64, u64, u64)> = out
            .iter()
            .map(|e| (e.vaddr, e.len, e.fd, e.file_off, e.skip, e.dec_len))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x10000, 0x1000, 8, 4096, 0, 0x1000),
                (0x11000, 0x1000, 7, 4096, 0, 0x1000),
                (0x12000, 0x2000, 8, 4096 + 0x2000, 0, 0x2000),
                (0x14000, 0x1000, 8, 0x5000, 0, 0xc000),
                (0x16000, 0xa000, 8, 0x5000, 0x2000, 0xc000),
            ]
        );
    }

    /// A gathered chunk fills its runs from its decoded bytes in order (raw: split
    /// exactly; LZ4: one chunk decoded, its parts grouped after the other extents so
    /// that stage 2 decodes it once).
    #[test]
    fn gathered_chunks_fill_their_runs() {
        let base = ProcessMeta {
            regions: vec![region(0x10000, 0x20000, false, vec![])],
            chunks: vec![chunk(0x10000, 0x10000, 0x100000, Codec::Lz4)],
            ..Default::default()
        };
        let written = vec![[0x11000, 0x12000], [0x14000, 0x16000], [0x18000, 0x19000]];
        let mut g = chunk(0x11000, 0x4000, 4096, Codec::Lz4);
        g.runs = written.clone();
        let inc = ProcessMeta {
            regions: vec![region(0x10000, 0x20000, true, written.clone())],
            chunks: vec![g],
            parent: Some(ParentRef::default()),
            ..Default::default()
        };
        let all = [(&inc, 7), (&base, 8)];
        let sorted: Vec<Vec<Piece>> = all.iter().map(|(m, _)| pieces_of(&m.chunks)).collect();
        let mut out = Vec::new();
        resolve(&inc.regions[0], &all, &sorted, &mut out);
        let got: Vec<(u64, u64, i64, u64, u64)> = out
            .iter()
            .map(|e| (e.vaddr, e.len, e.fd, e.file_off, e.skip))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x11000, 0x1000, 7, 4096, 0),
                (0x14000, 0x2000, 7, 4096, 0x1000),
                (0x18000, 0x1000, 7, 4096, 0x3000),
                (0x10000, 0x1000, 8, 0x100000, 0),
                (0x12000, 0x2000, 8, 0x100000, 0x2000),
                (0x16000, 0x2000, 8, 0x100000, 0x6000),
                (0x19000, 0x7000, 8, 0x100000, 0x9000),
            ]
        );
        let mut inc = inc;
        inc.chunks[0].codec = Codec::Raw;
        inc.chunks[0].stored_len = 0x4000;
        let all = [(&inc, 7), (&base, 8)];
        let sorted: Vec<Vec<Piece>> = all.iter().map(|(m, _)| pieces_of(&m.chunks)).collect();
        let mut out = Vec::new();
        resolve(&inc.regions[0], &all, &sorted, &mut out);
        let raw: Vec<(u64, u64, u64)> = out
            .iter()
            .filter(|e| e.fd == 7)
            .map(|e| (e.vaddr, e.len, e.file_off))
            .collect();
        assert_eq!(
            raw,
            vec![
                (0x11000, 0x1000, 4096),
                (0x14000, 0x2000, 4096 + 0x1000),
                (0x18000, 0x1000, 4096 + 0x3000)
            ]
        );
    }

    /// The merge pass agrees with a page-by-page subtraction, including intervals of `b`
    /// that span several of `a` and touch their ends.
    #[test]
    fn subtract_matches_page_by_page() {
        let pages = |v: &[(u64, u64)]| -> Vec<u64> { v.iter().flat_map(|&(s, e)| s..e).collect() };
        type Ranges = Vec<(u64, u64)>;
        let cases: Vec<(Ranges, Ranges)> = vec![
            (vec![(0, 10)], vec![(2, 3), (5, 7)]),
            (vec![(0, 4), (6, 10), (12, 20)], vec![(3, 13)]),
            (vec![(0, 4), (6, 10)], vec![(0, 4), (10, 12)]),
            (vec![(5, 9)], vec![(0, 1), (2, 5), (9, 11)]),
            (
                (0..50).map(|i| (i * 10, i * 10 + 5)).collect(),
                (0..70).map(|i| (i * 7 + 1, i * 7 + 4)).collect(),
            ),
        ];
        for (a, b) in cases {
            let want: Vec<u64> = pages(&a)
                .into_iter()
                .filter(|p| !pages(&b).contains(p))
                .collect();
            let got = subtract(&a, &b);
            assert_eq!(pages(&got), want, "{a:?} minus {b:?}");
            assert!(
                got.windows(2).all(|w| w[0].1 < w[1].0),
                "not sorted and disjoint: {got:?}"
            );
        }
    }

    /// An inheriting region must be mapped by the parent.
    #[test]
    fn uncovered_inherited_pages_are_refused() {
        let base = ProcessMeta {
            regions: vec![region(0x10000, 0x18000, false, vec![])],
            ..Default::default()
        };
        let inc = ProcessMeta {
            regions: vec![region(0x10000, 0x20000, true, vec![[0x11000, 0x12000]])],
            parent: Some(ParentRef::default()),
            ..Default::default()
        };
        assert!(pieces(&inc.regions[0], &[&inc, &base]).is_err());
        let ok = ProcessMeta {
            regions: vec![region(0x10000, 0x20000, true, vec![[0x18000, 0x20000]])],
            parent: Some(ParentRef::default()),
            ..Default::default()
        };
        assert!(pieces(&ok.regions[0], &[&ok, &base]).is_ok());
    }
}
