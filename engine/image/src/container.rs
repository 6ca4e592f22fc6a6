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

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};

use crate::meta::{Chunk, Codec, ProcessMeta};
use crate::{FORMAT_MAJOR, FORMAT_MINOR, MIN_READ_MAJOR, PAGE_SIZE};

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
/// Chunks shorter than this are stored raw: too little to gain.
const COMPRESS_MIN: usize = 16 << 10;
/// The first this many bytes of a chunk are compressed first; if they do not shrink to
/// 7/8, the chunk is stored raw without compressing the rest (random data goes at disk
/// speed).
const SAMPLE: usize = 64 << 10;
/// Compressed chunks are gathered and written in pieces of about this size.
const PENDING_CAP: usize = 4 << 20;

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
        debug_assert!((data.len() as u64).is_multiple_of(PAGE_SIZE));
        self.stats.page_bytes += data.len() as u64;
        let start = self.pos;
        if let Some(c) = encoded {
            self.chunks.push(Chunk {
                vaddr,
                len: data.len() as u64,
                offset: self.pos,
                stored_len: c.len() as u64,
                codec: Codec::Lz4,
                checksum: xxh3_64(c),
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

/// Structural checks on metadata, before anything is trusted or mapped: `ImageReader`
/// applies them to every image; public for tools and the fuzz target. `data_end` is the
/// offset where the metadata starts (chunks must end before it).
pub fn validate_meta(m: &ProcessMeta, data_end: u64) -> Result<(), String> {
    validate(m, data_end)
}

fn validate(m: &ProcessMeta, data_end: u64) -> Result<(), String> {
    if m.threads.is_empty() || m.threads.len() > MAX_THREADS {
        return Err(format!("{} threads", m.threads.len()));
    }
    if m.threads.iter().filter(|t| t.is_main).count() != 1 {
        return Err("not exactly one main thread".into());
    }
    if m.regions.len() > MAX_REGIONS || m.fds.len() > MAX_FDS {
        return Err(format!("{} regions, {} fds", m.regions.len(), m.fds.len()));
    }
    let mut prev_end = 0u64;
    for r in &m.regions {
        if r.start % PAGE_SIZE != 0
            || r.end % PAGE_SIZE != 0
            || r.start >= r.end
            || r.end > USER_SPACE_END
            || r.start < prev_end
        {
            return Err(format!("region {:#x}-{:#x} is malformed", r.start, r.end));
        }
        if r.pages_saved > (r.end - r.start) / PAGE_SIZE {
            return Err(format!("region {:#x} claims too many pages", r.start));
        }
        prev_end = r.end;
    }
    for c in &m.chunks {
        let end = c.vaddr.saturating_add(c.len);
        let inside = m.regions.iter().any(|r| r.start <= c.vaddr && end <= r.end);
        let stored_end = c.offset.saturating_add(c.stored_len);
        if !inside
            || c.len % PAGE_SIZE != 0
            || c.len == 0
            || c.offset < HEADER_LEN
            || stored_end > data_end
            || !match c.codec {
                Codec::Raw => c.stored_len == c.len && c.offset % PAGE_SIZE == 0,
                Codec::Lz4 => c.stored_len > 0 && c.stored_len < c.len,
            }
        {
            return Err(format!("chunk at {:#x}+{} is malformed", c.vaddr, c.len));
        }
    }
    for f in &m.fds {
        if f.fd < 0 || f.fd > 1 << 20 {
            return Err(format!("fd {} out of range", f.fd));
        }
    }
    let in_region = |a: u64| m.regions.iter().any(|r| r.start <= a && a < r.end);
    for t in &m.threads {
        // Stage 2 jumps into the saved context: it must lie in memory the image maps.
        if !in_region(t.ctx_addr) {
            return Err(format!(
                "thread {} context at {:#x} is outside the saved memory",
                t.tid, t.ctx_addr
            ));
        }
    }
    let mm = &m.mm;
    for (name, a) in [
        ("start_code", mm.start_code),
        ("end_code", mm.end_code),
        ("start_data", mm.start_data),
        ("end_data", mm.end_data),
        ("start_brk", mm.start_brk),
        ("brk", mm.brk),
        ("start_stack", mm.start_stack),
        ("arg_start", mm.arg_start),
        ("arg_end", mm.arg_end),
        ("env_start", mm.env_start),
        ("env_end", mm.env_end),
    ] {
        if a > USER_SPACE_END {
            return Err(format!("mm {name} {a:#x} is outside user space"));
        }
    }
    if m.auxv.len() > MAX_AUXV || m.sigactions.len() > 64 || m.locks.len() > MAX_FDS {
        return Err(format!(
            "{} auxv entries, {} signal actions, {} locks",
            m.auxv.len(),
            m.sigactions.len(),
            m.locks.len()
        ));
    }
    Ok(())
}

/// Upper bound on auxiliary vector entries (the kernel writes about 20).
const MAX_AUXV: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::*;

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
