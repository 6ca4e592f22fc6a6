//! The image file container: header, page-aligned chunks, JSON metadata, trailer.
//!
//! ```text
//! offset 0      +---------------------------------------------+
//!               | header (64 bytes used, padded to 4096)      |
//!               |  magic "TORPORIM" | major u16 | minor u16   |
//!               |  header_len u32 | page_size u32 | flags u32 |
//!               |  reserved ...   | xxh3(header[0..56]) u64   |
//! 4096          +---------------------------------------------+
//!               | chunk 0 bytes (raw: page aligned, padded)   |
//!               | chunk 1 bytes (lz4: packed) ...             |
//! meta_offset   +---------------------------------------------+
//!               | metadata: UTF-8 JSON (ProcessMeta)          |
//! len - 64      +---------------------------------------------+
//!               | trailer: magic "TORPEND\0" | meta_offset    |
//!               |  meta_len | xxh3(meta) | data_end | nchunks |
//!               |  reserved | xxh3(trailer[0..56])            |
//!               +---------------------------------------------+
//! ```
//! All integers are little endian. Each chunk carries its own xxh3-64 checksum in the
//! metadata; the metadata is covered by the trailer's checksum, the trailer by its own.
//! A chunk is stored raw (page-aligned, so it can be read straight into place) or, when
//! that is clearly smaller, as one LZ4 block (ADR 0005).

mod reader;
mod validate;
mod writer;

pub use reader::ImageReader;
pub use validate::validate_meta;
pub use writer::{Compressor, ImageWriter, WriteStats};

use std::path::{Path, PathBuf};

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::{FORMAT_MAJOR, FORMAT_MINOR, PAGE_SIZE};

const MAGIC: &[u8; 8] = b"TORPORIM";
const TRAILER_MAGIC: &[u8; 8] = b"TORPEND\0";
/// Bytes reserved for the header; the first chunk starts here.
pub const HEADER_LEN: u64 = 4096;
/// Length of the trailer at the end of the file.
pub const TRAILER_LEN: u64 = 64;
/// Upper bound on the metadata size accepted by readers.
pub const MAX_META_LEN: u64 = 256 << 20;
/// Upper bounds on counts accepted by readers, checked before anything is mapped.
pub const MAX_THREADS: usize = 65_536;
pub const MAX_REGIONS: usize = 1 << 20;
pub const MAX_FDS: usize = 1 << 20;
/// Highest user-space address on x86_64 with 4-level paging.
pub const USER_SPACE_END: u64 = 0x7fff_ffff_f000;
/// Largest chunk the writer compresses (larger ones are stored raw).
pub const MAX_COMPRESSED_CHUNK: usize = 4 << 20;

/// Everything that can be wrong with an image file.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a torpor image (bad magic at offset 0)")]
    BadMagic { path: PathBuf },
    #[error("{path}: image format {major}.{minor} is not supported (this torpor reads {FORMAT_MAJOR}.x)")]
    UnsupportedVersion {
        path: PathBuf,
        major: u16,
        minor: u16,
    },
    #[error("{path}: truncated or cut off at offset {offset} (file is {len} bytes; no valid trailer there)")]
    Truncated {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    #[error("{path}: checksum mismatch in {what} at offset {offset}")]
    Checksum {
        path: PathBuf,
        what: String,
        offset: u64,
    },
    #[error("{path}: metadata does not parse: {source}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid image: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn header_bytes() -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    h[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    let sum = xxh3_64(&h[0..56]);
    h[56..64].copy_from_slice(&sum.to_le_bytes());
    h
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::*;
    use std::fs::File;

    fn sample() -> ProcessMeta {
        ProcessMeta {
            format: "1.0".into(),
            threads: vec![ThreadMeta {
                tid: 7,
                is_main: true,
                ctx_addr: 0x10100,
                ..Default::default()
            }],
            regions: vec![Region {
                start: 0x10000,
                end: 0x14000,
                prot: 3,
                kind: RegionKind::Anon,
                name: String::new(),
                offset: 0,
                file: None,
                pages_saved: 2,
                pages_zero: 0,
                flags: vec![],
                captured: None,
                inherit: false,
                written: Vec::new(),
            }],
            ..Default::default()
        }
    }

    fn write(dir: &Path) -> PathBuf {
        let p = dir.join("x.img");
        let f = File::create(&p).unwrap();
        let mut w = ImageWriter::new(f, &p).unwrap();
        let data = vec![0xabu8; 8192];
        w.add_chunk(0x10000, &data).unwrap();
        let mut m = sample();
        w.finish(&mut m).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("torpor-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = tmp("rt");
        let p = write(&d);
        let r = ImageReader::open(&p).unwrap();
        r.verify_chunks().unwrap();
        assert_eq!(r.meta().chunks.len(), 1);
        assert_eq!(r.meta().threads[0].tid, 7);
        let mut buf = Vec::new();
        r.read_chunk(&r.meta().chunks[0], &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let d = tmp("flip");
        let p = write(&d);
        let orig = std::fs::read(&p).unwrap();
        // Flip one bit in every 61st byte, including header, data, metadata and trailer.
        for at in (0..orig.len()).step_by(61) {
            let mut b = orig.clone();
            b[at] ^= 0x10;
            let q = d.join("flipped.img");
            std::fs::write(&q, &b).unwrap();
            let ok = ImageReader::open(&q).and_then(|r| r.verify_chunks());
            assert!(ok.is_err(), "flip at {at} not detected");
        }
    }

    /// Compressible, incompressible and short chunks mixed: each decodes to its pages,
    /// raw ones stay page aligned, and a flipped bit in any stored byte is caught.
    #[test]
    fn compressed_chunks_round_trip() {
        let d = tmp("lz4");
        let p = d.join("c.img");
        let f = File::create(&p).unwrap();
        let mut w = ImageWriter::new(f, &p).unwrap();
        let mut m = sample();
        m.regions[0].end = 0x10000 + (3 << 20);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let pattern: Vec<u8> = (0..(1 << 20))
            .map(|i| (i / 4096) as u8 ^ (i % 7) as u8)
            .collect();
        let small = vec![5u8; 8192];
        let parts: [(u64, &[u8]); 4] = [
            (0x10000, &pattern),
            (0x10000 + (1 << 20), &random),
            (0x10000 + (2 << 20), &small),
            (0x10000 + (2 << 20) + 8192, &pattern[..65536]),
        ];
        for (a, b) in parts {
            w.add_chunk(a, b).unwrap();
        }
        let st = w.stats();
        assert_eq!((st.lz4_chunks, st.raw_chunks), (2, 2));
        w.finish(&mut m).unwrap();
        let r = ImageReader::open(&p).unwrap();
        r.verify_chunks().unwrap();
        let mut buf = Vec::new();
        for (c, (a, b)) in r.meta().chunks.iter().zip(parts) {
            assert_eq!(c.vaddr, a);
            if c.codec == Codec::Raw {
                assert_eq!(c.offset % PAGE_SIZE, 0);
            } else {
                assert!(c.stored_len * 4 < c.len);
            }
            r.read_pages(c, &mut buf).unwrap();
            assert_eq!(&buf[..], b);
        }
        let orig = std::fs::read(&p).unwrap();
        let chunks = r.meta().chunks.clone();
        // Padding before the raw chunk that follows a compressed one: zero, and checked.
        let padded = chunks
            .windows(2)
            .find(|w| w[0].codec == Codec::Lz4 && w[1].codec == Codec::Raw)
            .map(|w| (w[0].offset + w[0].stored_len, w[1].offset))
            .unwrap();
        assert!(padded.1 > padded.0);
        for at in padded.0..padded.1 {
            let mut b = orig.clone();
            b[at as usize] ^= 0x80;
            let q = d.join("flipped.img");
            std::fs::write(&q, &b).unwrap();
            let ok = ImageReader::open(&q).and_then(|r| r.verify_chunks());
            assert!(ok.is_err(), "flip in padding at {at} not detected");
        }
        for c in chunks {
            for at in
                (c.offset..c.offset + c.stored_len).step_by((c.stored_len as usize / 40).max(1))
            {
                let mut b = orig.clone();
                b[at as usize] ^= 0x01;
                let q = d.join("flipped.img");
                std::fs::write(&q, &b).unwrap();
                let ok = ImageReader::open(&q).and_then(|r| r.verify_chunks());
                assert!(ok.is_err(), "flip at {at} not detected");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let d = tmp("trunc");
        let p = write(&d);
        let orig = std::fs::read(&p).unwrap();
        for cut in [0, 10, 4096, 5000, orig.len() - 65, orig.len() - 1] {
            let q = d.join("cut.img");
            std::fs::write(&q, &orig[..cut]).unwrap();
            assert!(ImageReader::open(&q).is_err(), "cut at {cut} not detected");
        }
    }

    /// Incremental metadata (3.0): inheriting regions need a parent, written ranges must
    /// be well formed, and chunks of an inheriting region lie in its written ranges.
    #[test]
    fn incremental_metadata_is_validated() {
        let chunk = Chunk {
            vaddr: 0x11000,
            len: 4096,
            offset: 4096,
            stored_len: 4096,
            codec: Codec::Raw,
            checksum: 0,
            runs: vec![],
        };
        let good = || {
            let mut m = sample();
            m.parent = Some(ParentRef::default());
            m.regions[0].inherit = true;
            m.regions[0].written = vec![[0x11000, 0x12000], [0x13000, 0x14000]];
            m.chunks = vec![chunk.clone()];
            m
        };
        assert_eq!(validate_meta(&good(), 8192), Ok(()));
        let mut m = good();
        m.parent = None;
        assert!(validate_meta(&m, 8192).is_err(), "inherit without a parent");
        let mut m = good();
        m.regions[0].inherit = false;
        assert!(validate_meta(&m, 8192).is_err(), "written without inherit");
        for bad in [
            vec![[0x12000, 0x11000]],
            vec![[0x11000, 0x11800]],
            vec![[0x13000, 0x14000], [0x11000, 0x12000]],
            vec![[0x11000, 0x15000]],
        ] {
            let mut m = good();
            m.regions[0].written = bad.clone();
            assert!(validate_meta(&m, 8192).is_err(), "{bad:x?}");
        }
        let mut m = good();
        m.chunks[0].vaddr = 0x12000;
        assert!(
            validate_meta(&m, 8192).is_err(),
            "chunk outside the written pages"
        );
    }

    /// A gathered chunk written by `ImageWriter::add_gathered` reads back (checksum,
    /// decoding) with its runs, compressed or raw.
    #[test]
    fn gathered_chunk_round_trip() {
        let d = tmp("gather");
        let p = d.join("g.img");
        let mut w = ImageWriter::new(File::create(&p).unwrap(), &p).unwrap();
        let runs = [[0x10000u64, 0x11000], [0x12000, 0x14000]];
        let words: Vec<u8> = (0..3 * 4096).map(|i| (i / 4096 + 1) as u8).collect();
        w.add_gathered(0, &runs, &words, None).unwrap();
        let mut c = Compressor::new();
        let long: Vec<u8> = (0..16 * 4096).map(|i| (i / 4096) as u8).collect();
        let enc = c.encode(&long).map(|e| e.to_vec());
        assert!(enc.is_some());
        let runs2 = [[0x20000u64, 0x28000], [0x30000, 0x38000]];
        w.add_gathered(0, &runs2, &long, enc.as_deref()).unwrap();
        assert_eq!(w.stats().gathered_chunks, 2);
        let mut m = sample();
        m.regions.push(Region {
            start: 0x20000,
            end: 0x40000,
            ..m.regions[0].clone()
        });
        w.finish(&mut m).unwrap();
        let r = ImageReader::open(&p).unwrap();
        r.verify_chunks().unwrap();
        let cs = &r.meta().chunks;
        assert_eq!(
            (cs[0].vaddr, &cs[0].runs[..], cs[0].codec),
            (0x10000, &runs[..], Codec::Raw)
        );
        assert_eq!((cs[1].vaddr, &cs[1].runs[..]), (0x20000, &runs2[..]));
        assert_eq!(cs[1].codec, Codec::Lz4);
        let mut buf = Vec::new();
        r.read_pages(&cs[0], &mut buf).unwrap();
        assert_eq!(buf, words);
        r.read_pages(&cs[1], &mut buf).unwrap();
        assert_eq!(buf, long);
        assert_eq!(
            cs[1].pieces(),
            vec![(0x20000, 0x8000, 0), (0x30000, 0x8000, 0x8000)]
        );
    }

    /// Gathered chunks (3.1): runs sorted, disjoint, page aligned, adding up to `len`,
    /// each inside one private region (and its written pages when it inherits).
    #[test]
    fn gathered_chunks_are_validated() {
        let good = || {
            let mut m = sample();
            m.parent = Some(ParentRef::default());
            m.regions[0].inherit = true;
            m.regions[0].written = vec![[0x11000, 0x12000], [0x13000, 0x14000]];
            m.chunks = vec![Chunk {
                vaddr: 0x11000,
                len: 8192,
                offset: 4096,
                stored_len: 100,
                codec: Codec::Lz4,
                checksum: 0,
                runs: vec![[0x11000, 0x12000], [0x13000, 0x14000]],
            }];
            m
        };
        assert_eq!(validate_meta(&good(), 8192), Ok(()));
        for bad in [
            vec![[0x11000, 0x12000]],
            vec![[0x13000, 0x14000], [0x11000, 0x12000]],
            vec![[0x11000, 0x13000]],
            vec![[0x11000, 0x11800], [0x13000, 0x13800]],
            vec![[0x11000, 0x12000], [0x11000, 0x12000]],
            vec![[0x11000, 0x12000], [0x14000, 0x15000]],
        ] {
            let mut m = good();
            m.chunks[0].runs = bad.clone();
            assert!(validate_meta(&m, 8192).is_err(), "{bad:x?}");
        }
        let mut m = good();
        m.chunks[0].vaddr = 0x13000;
        assert!(
            validate_meta(&m, 8192).is_err(),
            "vaddr is not the first run"
        );
        let mut m = good();
        m.regions[0].kind = RegionKind::SharedAnon;
        m.regions[0].inherit = false;
        m.regions[0].written.clear();
        assert!(validate_meta(&m, 8192).is_err(), "shared memory gathered");
    }

    /// The JSON of 3.1: page runs as one flat list of page counts, a gathered chunk
    /// without `vaddr`; 3.0's `[[start, end]]` is still read, and a 3.0 reader (which
    /// needs `vaddr` and pairs) refuses what it would misread.
    #[test]
    fn page_runs_json() {
        let mut r = sample().regions[0].clone();
        r.inherit = true;
        r.written = vec![[0x11000, 0x12000], [0x13000, 0x15000]];
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["written"], serde_json::json!([0x11, 1, 1, 2]));
        let back: Region = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(back.written, r.written);
        let mut old = j.clone();
        old["written"] = serde_json::json!([[0x11000, 0x12000], [0x13000, 0x15000]]);
        let back: Region = serde_json::from_value(old).unwrap();
        assert_eq!(back.written, r.written);
        for bad in [
            serde_json::json!([1, 2, 3]),
            serde_json::json!([[0x11000, 0x12000], 1, 1]),
            serde_json::json!([u64::MAX, 1]),
        ] {
            let mut b = j.clone();
            b["written"] = bad.clone();
            assert!(serde_json::from_value::<Region>(b).is_err(), "{bad}");
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct OldRegion {
            #[serde(default)]
            written: Vec<[u64; 2]>,
        }
        assert!(serde_json::from_value::<OldRegion>(j).is_err());

        let c = Chunk {
            vaddr: 0x11000,
            len: 3 * 4096,
            offset: 4096,
            stored_len: 100,
            codec: Codec::Lz4,
            checksum: 7,
            runs: vec![[0x11000, 0x12000], [0x13000, 0x15000]],
        };
        let j = serde_json::to_value(&c).unwrap();
        assert!(j.get("vaddr").is_none());
        assert_eq!(serde_json::from_value::<Chunk>(j.clone()).unwrap(), c);
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct OldChunk {
            vaddr: u64,
        }
        assert!(serde_json::from_value::<OldChunk>(j).is_err());
        let plain = Chunk { runs: vec![], ..c };
        let j = serde_json::to_value(&plain).unwrap();
        assert_eq!(j["vaddr"], 0x11000);
        assert!(j.get("runs").is_none());
        assert_eq!(serde_json::from_value::<Chunk>(j).unwrap(), plain);
    }

    #[test]
    fn newer_major_is_refused() {
        let d = tmp("ver");
        let p = write(&d);
        let mut b = std::fs::read(&p).unwrap();
        b[8] = 9;
        let sum = xxh3_64(&b[0..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(
            ImageReader::open(&p),
            Err(ImageError::UnsupportedVersion { major: 9, .. })
        ));
    }
}
