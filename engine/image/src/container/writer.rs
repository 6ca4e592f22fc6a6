//! Image container, writer side: LZ4 compression of chunks and the sequential [`ImageWriter`]
//! (header, chunks, metadata, trailer).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};
use xxhash_rust::xxh3::xxh3_64;

use super::{header_bytes, io, ImageError, HEADER_LEN, MAX_COMPRESSED_CHUNK, TRAILER_MAGIC};
use crate::meta::{Chunk, Codec, ProcessMeta};
use crate::PAGE_SIZE;

/// Chunks shorter than this are stored raw: too little to gain.
const COMPRESS_MIN: usize = 16 << 10;
/// The first this many bytes of a chunk are compressed first; if they do not shrink to
/// 7/8, the chunk is stored raw without compressing the rest (random data goes at disk
/// speed).
const SAMPLE: usize = 64 << 10;
/// Compressed chunks are gathered and written in pieces of about this size.
const PENDING_CAP: usize = 4 << 20;

/// LZ4 state for one thread: a hash table and an output buffer, allocated once.
/// [`Compressor::encode`] allocates nothing, so a writer may run it on a helper thread
/// that must not allocate.
pub struct Compressor {
    comp: Vec<u8>,
    table: CompressTable,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    pub fn new() -> Self {
        Self {
            comp: vec![0u8; get_maximum_output_size(MAX_COMPRESSED_CHUNK)],
            table: CompressTable::large(),
        }
    }

    /// The LZ4 block for a run of pages if storing it compressed pays (the rule in
    /// image-format.md §1), else `None` (store raw).
    pub fn encode(&mut self, data: &[u8]) -> Option<&[u8]> {
        if data.len() < COMPRESS_MIN || data.len() > MAX_COMPRESSED_CHUNK {
            return None;
        }
        let sample = &data[..data.len().min(SAMPLE)];
        let n = compress_into_with_table(sample, &mut self.comp, &mut self.table).ok()?;
        if n * 8 > sample.len() * 7 {
            return None;
        }
        let n = if sample.len() == data.len() {
            n
        } else {
            compress_into_with_table(data, &mut self.comp, &mut self.table).ok()?
        };
        // Worth it only if it saves at least a page.
        (n as u64 + PAGE_SIZE <= data.len() as u64).then_some(&self.comp[..n])
    }
}

/// Writes one image file sequentially: header, chunks, then metadata and trailer.
/// Allocates all its buffers in [`ImageWriter::new`]; adding chunks allocates only to grow
/// the chunk table.
pub struct ImageWriter {
    file: File,
    path: PathBuf,
    /// File offset of the next byte (including bytes still in `pending`).
    pos: u64,
    chunks: Vec<Chunk>,
    /// Compressed chunks and padding not yet written.
    pending: Vec<u8>,
    /// `None` only while `add_chunk` uses it.
    lz4: Option<Compressor>,
    compress: bool,
    stats: WriteStats,
}

/// What the writer stored, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Page bytes handed to the writer.
    pub page_bytes: u64,
    /// Bytes of chunk data in the file (stored bytes plus alignment padding).
    pub data_bytes: u64,
    pub raw_chunks: u64,
    pub lz4_chunks: u64,
    /// Chunks that gather pages of several places (counted in the two above too).
    pub gathered_chunks: u64,
}

impl ImageWriter {
    /// Starts an image in `file` (which must be empty) and writes its header.
    pub fn new(mut file: File, path: &Path) -> Result<Self, ImageError> {
        let mut page = vec![0u8; HEADER_LEN as usize];
        page[..64].copy_from_slice(&header_bytes());
        file.write_all(&page).map_err(io(path, "write header"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            pos: HEADER_LEN,
            chunks: Vec::with_capacity(1024),
            pending: Vec::with_capacity(PENDING_CAP + MAX_COMPRESSED_CHUNK),
            lz4: Some(Compressor::new()),
            compress: true,
            stats: WriteStats::default(),
        })
    }

    /// Stores every chunk raw (no compression attempt).
    pub fn set_compress(&mut self, on: bool) {
        self.compress = on;
    }

    fn flush_pending(&mut self) -> Result<(), ImageError> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(io(&self.path, "write chunk"))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Appends the bytes of a page run that lives at `vaddr`. `data.len()` must be a
    /// multiple of the page size.
    pub fn add_chunk(&mut self, vaddr: u64, data: &[u8]) -> Result<(), ImageError> {
        let mut lz4 = self.lz4.take();
        let enc = match lz4.as_mut() {
            Some(c) if self.compress => c.encode(data),
            _ => None,
        };
        let r = self.add_encoded(vaddr, data, enc);
        self.lz4 = lz4;
        r
    }

    /// Appends a page run that was already offered to a [`Compressor`]: `encoded` is
    /// what [`Compressor::encode`] returned for `data`.
    pub fn add_encoded(
        &mut self,
        vaddr: u64,
        data: &[u8],
        encoded: Option<&[u8]>,
    ) -> Result<(), ImageError> {
        self.add_gathered(vaddr, &[], data, encoded)
    }

    /// Appends a gathered chunk: `data` holds the pages of the sorted, disjoint page
    /// ranges `runs` one after the other (or, with `runs` empty, the pages from `vaddr`
    /// on); `encoded` as for [`ImageWriter::add_encoded`].
    pub fn add_gathered(
        &mut self,
        vaddr: u64,
        runs: &[[u64; 2]],
        data: &[u8],
        encoded: Option<&[u8]>,
    ) -> Result<(), ImageError> {
        let (vaddr, runs) = match runs {
            [] | [_] => (runs.first().map_or(vaddr, |r| r[0]), Vec::new()),
            _ => (runs[0][0], runs.to_vec()),
        };
        debug_assert!((data.len() as u64).is_multiple_of(PAGE_SIZE));
        self.stats.page_bytes += data.len() as u64;
        self.stats.gathered_chunks += !runs.is_empty() as u64;
        let start = self.pos;
        if let Some(c) = encoded {
            self.chunks.push(Chunk {
                vaddr,
                len: data.len() as u64,
                offset: self.pos,
                stored_len: c.len() as u64,
                codec: Codec::Lz4,
                checksum: xxh3_64(c),
                runs,
            });
            self.pending.extend_from_slice(c);
            self.pos += c.len() as u64;
            self.stats.lz4_chunks += 1;
            if self.pending.len() >= PENDING_CAP {
                self.flush_pending()?;
            }
        } else {
            // Raw chunks start page aligned: they can be read (or mapped) straight
            // into place.
            let pad = self.pos.next_multiple_of(PAGE_SIZE) - self.pos;
            self.pending.resize(self.pending.len() + pad as usize, 0);
            self.pos += pad;
            self.flush_pending()?;
            self.file
                .write_all(data)
                .map_err(io(&self.path, "write chunk"))?;
            self.chunks.push(Chunk {
                vaddr,
                len: data.len() as u64,
                offset: self.pos,
                stored_len: data.len() as u64,
                codec: Codec::Raw,
                checksum: xxh3_64(data),
                runs,
            });
            self.pos += data.len() as u64;
            self.stats.raw_chunks += 1;
        }
        self.stats.data_bytes += self.pos - start;
        Ok(())
    }

    /// Whether chunks are offered to LZ4 at all.
    pub fn compressing(&self) -> bool {
        self.compress
    }

    /// Bytes of chunk data so far (stored bytes and padding, written or pending).
    pub fn data_bytes(&self) -> u64 {
        self.pos - HEADER_LEN
    }

    /// File bytes already handed to the kernel (header and chunks, not the pending tail).
    pub fn written_bytes(&self) -> u64 {
        self.pos - self.pending.len() as u64
    }

    /// What was stored so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// The image file (e.g. to start writeback of what was written).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes the metadata (with the chunk table filled in) and the trailer, then fsyncs.
    pub fn finish(mut self, meta: &mut ProcessMeta) -> Result<File, ImageError> {
        self.flush_pending()?;
        meta.chunks = std::mem::take(&mut self.chunks);
        let json = serde_json::to_vec(meta).map_err(|source| ImageError::Metadata {
            path: self.path.clone(),
            source,
        })?;
        let mut t = [0u8; 64];
        t[0..8].copy_from_slice(TRAILER_MAGIC);
        t[8..16].copy_from_slice(&self.pos.to_le_bytes());
        t[16..24].copy_from_slice(&(json.len() as u64).to_le_bytes());
        t[24..32].copy_from_slice(&xxh3_64(&json).to_le_bytes());
        t[32..40].copy_from_slice(&self.pos.to_le_bytes());
        t[40..48].copy_from_slice(&(meta.chunks.len() as u64).to_le_bytes());
        let sum = xxh3_64(&t[0..56]);
        t[56..64].copy_from_slice(&sum.to_le_bytes());
        self.file
            .write_all(&json)
            .map_err(io(&self.path, "write metadata"))?;
        self.file
            .write_all(&t)
            .map_err(io(&self.path, "write trailer"))?;
        self.file.sync_all().map_err(io(&self.path, "fsync"))?;
        Ok(self.file)
    }
}
