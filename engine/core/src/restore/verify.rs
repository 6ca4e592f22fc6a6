//! Restore stage 1, integrity: every chunk's checksum, checked before the point of no
//! return. The image is mapped read-only (no copy out of the page cache) and mapped in and
//! hashed by two threads, so a large image costs about one pass over memory.

use std::os::fd::AsRawFd;

use torpor_image::{Chunk, ImageError, ImageReader};
use xxhash_rust::xxh3::xxh3_64;

/// Threads hashing chunks (the machines this runs on have 2 or more cores).
const THREADS: usize = 2;

/// A read-only mapping of a whole file, unmapped on drop.
struct Mapped {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and only read through shared slices.
unsafe impl Sync for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `verify_chunks`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

impl Mapped {
    fn bytes(&self, off: u64, len: u64) -> &[u8] {
        // SAFETY: callers pass ranges inside the mapping (checked against the file
        // length first); the mapping lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts((self.addr as *const u8).add(off as usize), len as usize)
        }
    }
}

fn first_bad(r: &ImageReader, m: &Mapped, chunks: &[(usize, &Chunk)]) -> Option<ImageError> {
    // Map this part's pages in one call (each thread its own part) instead of a fault
    // per 16 pages while hashing.
    let from = chunks.iter().map(|(_, c)| c.offset).min().unwrap_or(0) & !4095;
    let to = chunks
        .iter()
        .map(|(_, c)| c.offset + c.stored_len)
        .max()
        .unwrap_or(0);
    if to > from {
        // SAFETY: advice on part of our own read-only mapping (bounds checked against the
        // file length); a failure only means page faults.
        unsafe {
            libc::madvise(
                (m.addr as *mut u8).add(from as usize) as *mut libc::c_void,
                (to - from) as usize,
                libc::MADV_POPULATE_READ,
            )
        };
    }
    chunks.iter().find_map(|&(i, c)| {
        (xxh3_64(m.bytes(c.offset, c.stored_len)) != c.checksum).then(|| ImageError::Checksum {
            path: r.path().to_path_buf(),
            what: format!("chunk {i} (pages at {:#x})", c.vaddr),
            offset: c.offset,
        })
    })
}

/// Checks every chunk's checksum and the zero padding between chunks; reports the first
/// bad chunk (in chunk order) like [`ImageReader::verify_chunks`].
pub fn verify_chunks(r: &ImageReader) -> Result<(), ImageError> {
    let chunks = &r.meta().chunks;
    let len = r
        .file()
        .metadata()
        .map_err(|source| ImageError::Io {
            path: r.path().to_path_buf(),
            op: "stat",
            source,
        })?
        .len();
    if let Some(c) = chunks
        .iter()
        .find(|c| c.offset.saturating_add(c.stored_len) > len)
    {
        return Err(ImageError::Truncated {
            path: r.path().to_path_buf(),
            offset: c.offset,
            len,
        });
    }
    r.verify_gaps()?;
    if chunks.is_empty() || len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh shared read-only mapping of the image file; nothing else in this
    // process maps or writes it. (A truncation by another process while we read would
    // raise SIGBUS and end the restore before the point of no return.)
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            r.file().as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        // No mapping (a file system without mmap): the reader's own pass.
        return r.verify_chunks();
    }
    let m = Mapped {
        addr,
        len: len as usize,
    };
    let all: Vec<(usize, &Chunk)> = chunks.iter().enumerate().collect();
    // Split by stored bytes, keeping chunk order within each part.
    let total: u64 = chunks.iter().map(|c| c.stored_len).sum();
    let mut parts: Vec<&[(usize, &Chunk)]> = Vec::new();
    let (mut from, mut acc) = (0usize, 0u64);
    for (k, (_, c)) in all.iter().enumerate() {
        acc += c.stored_len;
        if acc * THREADS as u64 >= total * (parts.len() as u64 + 1) && parts.len() + 1 < THREADS {
            parts.push(&all[from..=k]);
            from = k + 1;
        }
    }
    parts.push(&all[from..]);
    let bad: Vec<Option<ImageError>> = std::thread::scope(|s| {
        let hs: Vec<_> = parts
            .iter()
            .map(|p| s.spawn(|| first_bad(r, &m, p)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| first_bad(r, &m, &all)))
            .collect()
    });
    match bad.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
