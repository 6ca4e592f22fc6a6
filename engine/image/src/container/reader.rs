//! Image container, reader side: [`ImageReader`] opens an image, checks header, trailer,
//! metadata and (on request) every chunk and the padding between chunks.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::validate::validate;
use super::{
    io, u16_at, u64_at, ImageError, HEADER_LEN, MAGIC, MAX_META_LEN, TRAILER_LEN, TRAILER_MAGIC,
};
use crate::meta::{Chunk, Codec, ProcessMeta};
use crate::{FORMAT_MAJOR, MIN_READ_MAJOR};

/// An opened, structurally validated image.
pub struct ImageReader {
    file: File,
    path: PathBuf,
    meta: ProcessMeta,
}

impl ImageReader {
    /// Opens `path`, checks header, trailer, metadata checksum and bounds.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(io(path, "open"))?;
        Self::from_file(file, path)
    }

    /// Like [`ImageReader::open`] on an already opened file.
    pub fn from_file(mut file: File, path: &Path) -> Result<Self, ImageError> {
        let len = file.seek(SeekFrom::End(0)).map_err(io(path, "seek"))?;
        let mut magic = [0u8; 8];
        if len >= 8 {
            file.read_exact_at(&mut magic, 0)
                .map_err(io(path, "read header"))?;
            if &magic != MAGIC {
                return Err(ImageError::BadMagic { path: path.into() });
            }
        }
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(ImageError::Truncated {
                path: path.into(),
                offset: len,
                len,
            });
        }
        let mut page = vec![0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut page, 0)
            .map_err(io(path, "read header"))?;
        let mut h = [0u8; 64];
        h.copy_from_slice(&page[..64]);
        if &h[0..8] != MAGIC {
            return Err(ImageError::BadMagic { path: path.into() });
        }
        if u64_at(&h, 56) != xxh3_64(&h[0..56]) {
            return Err(ImageError::Checksum {
                path: path.into(),
                what: "header".into(),
                offset: 0,
            });
        }
        // The rest of the header page is not covered by the checksum: it must be zero.
        if let Some(at) = page[64..].iter().position(|&b| b != 0) {
            return Err(ImageError::Checksum {
                path: path.into(),
                what: "header padding (must be zero)".into(),
                offset: 64 + at as u64,
            });
        }
        let (major, minor) = (u16_at(&h, 8), u16_at(&h, 10));
        if !(MIN_READ_MAJOR..=FORMAT_MAJOR).contains(&major) {
            return Err(ImageError::UnsupportedVersion {
                path: path.into(),
                major,
                minor,
            });
        }
        let mut t = [0u8; 64];
        file.read_exact_at(&mut t, len - TRAILER_LEN)
            .map_err(io(path, "read trailer"))?;
        if &t[0..8] == TRAILER_MAGIC && u64_at(&t, 56) != xxh3_64(&t[0..56]) {
            return Err(ImageError::Checksum {
                path: path.into(),
                what: "trailer".into(),
                offset: len - TRAILER_LEN,
            });
        }
        if &t[0..8] != TRAILER_MAGIC {
            // A missing or damaged trailer is what a cut-off write leaves behind.
            return Err(ImageError::Truncated {
                path: path.into(),
                offset: len - TRAILER_LEN,
                len,
            });
        }
        let (meta_off, meta_len, meta_sum) = (u64_at(&t, 8), u64_at(&t, 16), u64_at(&t, 24));
        if meta_len > MAX_META_LEN
            || meta_off < HEADER_LEN
            || meta_off.checked_add(meta_len) != Some(len - TRAILER_LEN)
        {
            return Err(ImageError::Invalid {
                path: path.into(),
                reason: format!("metadata at {meta_off}+{meta_len} does not fit a {len}-byte file"),
            });
        }
        let mut json = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut json, meta_off)
            .map_err(io(path, "read metadata"))?;
        if xxh3_64(&json) != meta_sum {
            return Err(ImageError::Checksum {
                path: path.into(),
                what: "metadata".into(),
                offset: meta_off,
            });
        }
        let meta: ProcessMeta =
            serde_json::from_slice(&json).map_err(|source| ImageError::Metadata {
                path: path.into(),
                source,
            })?;
        validate(&meta, meta_off).map_err(|reason| ImageError::Invalid {
            path: path.into(),
            reason,
        })?;
        file.rewind().map_err(io(path, "seek"))?;
        Ok(Self {
            file,
            path: path.into(),
            meta,
        })
    }

    pub fn meta(&self) -> &ProcessMeta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads every chunk and checks its checksum; reports the first bad one. Bytes of
    /// the data area that no chunk covers (alignment padding) must be zero, so that no
    /// byte of an image goes unchecked.
    pub fn verify_chunks(&self) -> Result<(), ImageError> {
        self.verify_gaps()?;
        let mut buf = Vec::new();
        for (i, c) in self.meta.chunks.iter().enumerate() {
            buf.resize(c.stored_len as usize, 0);
            self.file.read_exact_at(&mut buf, c.offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    ImageError::Truncated {
                        path: self.path.clone(),
                        offset: c.offset,
                        len: c.offset,
                    }
                } else {
                    ImageError::Io {
                        path: self.path.clone(),
                        op: "read chunk",
                        source: e,
                    }
                }
            })?;
            if xxh3_64(&buf) != c.checksum {
                return Err(ImageError::Checksum {
                    path: self.path.clone(),
                    what: format!(
                        "chunk {i} (pages at {:#x}, bytes {}..{} of the file)",
                        c.vaddr,
                        c.offset,
                        c.offset + c.stored_len
                    ),
                    offset: c.offset,
                });
            }
        }
        Ok(())
    }

    /// Checks that the bytes of the data area no chunk covers are zero and that chunks
    /// do not overlap (part of [`ImageReader::verify_chunks`]).
    pub fn verify_gaps(&self) -> Result<(), ImageError> {
        let mut spans: Vec<(u64, u64)> = self
            .meta
            .chunks
            .iter()
            .map(|c| (c.offset, c.offset.saturating_add(c.stored_len)))
            .collect();
        spans.sort_unstable();
        let data_end = self.data_end()?;
        let mut pos = HEADER_LEN;
        let mut buf = Vec::new();
        for (start, end) in spans.into_iter().chain([(data_end, data_end)]) {
            if start < pos {
                return Err(ImageError::Invalid {
                    path: self.path.clone(),
                    reason: format!("chunks overlap at offset {start}"),
                });
            }
            if start > pos {
                buf.resize((start - pos) as usize, 0);
                self.file
                    .read_exact_at(&mut buf, pos)
                    .map_err(io(&self.path, "read padding"))?;
                if let Some(at) = buf.iter().position(|&b| b != 0) {
                    return Err(ImageError::Checksum {
                        path: self.path.clone(),
                        what: "padding between chunks (must be zero)".into(),
                        offset: pos + at as u64,
                    });
                }
            }
            pos = end;
        }
        Ok(())
    }

    /// Offset where the metadata starts (end of the data area), from the trailer.
    fn data_end(&self) -> Result<u64, ImageError> {
        let len = self.file.metadata().map_err(io(&self.path, "stat"))?.len();
        let mut t = [0u8; 64];
        self.file
            .read_exact_at(&mut t, len.saturating_sub(TRAILER_LEN))
            .map_err(io(&self.path, "read trailer"))?;
        Ok(u64_at(&t, 8))
    }

    /// Reads one chunk's stored bytes into `buf` (resized to fit).
    pub fn read_chunk(&self, c: &Chunk, buf: &mut Vec<u8>) -> Result<(), ImageError> {
        buf.resize(c.stored_len as usize, 0);
        self.file
            .read_exact_at(buf, c.offset)
            .map_err(io(&self.path, "read chunk"))
    }

    /// Reads one chunk and decodes it into `buf` (resized to the chunk's page length).
    /// Checks the checksum of the stored bytes first.
    pub fn read_pages(&self, c: &Chunk, buf: &mut Vec<u8>) -> Result<(), ImageError> {
        let mut stored = Vec::new();
        self.read_chunk(c, &mut stored)?;
        if xxh3_64(&stored) != c.checksum {
            return Err(ImageError::Checksum {
                path: self.path.clone(),
                what: format!("chunk at {:#x}", c.vaddr),
                offset: c.offset,
            });
        }
        match c.codec {
            Codec::Raw => *buf = stored,
            Codec::Lz4 => {
                buf.resize(c.len as usize, 0);
                let n = lz4_flex::block::decompress_into(&stored, buf).map_err(|e| {
                    ImageError::Invalid {
                        path: self.path.clone(),
                        reason: format!("chunk at {:#x} does not decode: {e}", c.vaddr),
                    }
                })?;
                if n as u64 != c.len {
                    return Err(ImageError::Invalid {
                        path: self.path.clone(),
                        reason: format!("chunk at {:#x} decodes to {n} bytes", c.vaddr),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn into_parts(self) -> (File, ProcessMeta) {
        (self.file, self.meta)
    }
}
