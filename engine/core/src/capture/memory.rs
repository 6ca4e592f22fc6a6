//! Capture, memory: which regions exist, what each is, and which of its pages are saved
//! (present or swapped, minus all-zero pages; for private file mappings only the pages
//! the program modified). The image writer stores each run of pages raw or LZ4-compressed.

use std::fs::File;

use torpor_image::container::Compressor;
use torpor_image::meta::*;
use torpor_image::store::Pending;
use torpor_image::{ImageWriter, PAGE_SIZE};
use xxhash_rust::xxh3::xxh3_64;

use super::helper::{scan_pages, Helper, NOT_WORD};
use super::{proc_err, shared_map_name, CaptureError, CaptureInput};
use crate::procmaps::Vma;

/// Largest run of pages stored as one chunk.
const MAX_CHUNK: u64 = torpor_image::container::MAX_COMPRESSED_CHUNK as u64;
/// Writeback of the image is started every this many bytes, so that the final fsync
/// finds little left to write.
const WRITEBACK_STEP: u64 = 64 << 20;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Reads memory of this process. The caller guarantees the range is mapped and readable.
fn mem(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: callers only pass ranges of VMAs listed in /proc/self/maps with read
    // permission (added with mprotect in this single-threaded writer if needed); nothing
    // unmaps them while the writer runs, since the writer is the only thread.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) }
}

fn classify(v: &Vma) -> Result<Option<RegionKind>, CaptureError> {
    let n = v.name.as_str();
    Ok(Some(match n {
        "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => return Ok(None),
        "[heap]" => RegionKind::Heap,
        "[stack]" => RegionKind::Stack,
        "" => {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::Anon
            }
        }
        _ if n.starts_with("[anon:")
            || n.starts_with("[stack:")
            || n.starts_with("[anon_shmem:") =>
        {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::Anon
            }
        }
        _ if n.starts_with('[') || !n.starts_with('/') => {
            // `[uprobes]`, `anon_inode:[perf_event]`, ...: nothing we can map again.
            return Err(CaptureError::SpecialMapping(n.into()));
        }
        "/dev/zero" | "/dev/zero (deleted)" => {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::Anon
            }
        }
        _ if n.starts_with("/SYSV") || n.starts_with("/memfd:") || n.ends_with(" (deleted)") => {
            if v.shared {
                RegionKind::SharedAnon
            } else {
                RegionKind::DeletedFile
            }
        }
        _ if n.starts_with("/dev/") && !n.starts_with("/dev/shm/") => {
            return Err(CaptureError::DeviceMapping(n.into()))
        }
        _ if v.shared => RegionKind::FileShared,
        _ => RegionKind::FilePrivate,
    }))
}

fn file_id(path: &str) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

pub(super) struct PageSink<'a> {
    w: ImageWriter,
    patch: Option<(u64, &'a [u8])>,
    /// The writer's own stack: it changes while we write, so it is copied first.
    volatile: (u64, u64),
    run_start: u64,
    run_len: u64,
    buf: Vec<u8>,
    pages: u64,
    /// File bytes whose writeback was started.
    started: u64,
    /// Second compression thread, if it could be started.
    helper: Option<Helper>,
    /// This thread's LZ4 state (the writer's own is used for single runs).
    mine: Compressor,
    /// A run (start, len) waiting for a partner: with the helper, runs are stored in
    /// pairs, the first compressed by the helper while this thread does the second.
    queued: Option<(u64, u64)>,
    /// The word each page of the current run repeats, while every page does one (such a
    /// run is encoded directly, see [`crate::lz4::encode_word_pages`]); cleared at the
    /// first page that does not.
    words: Vec<u64>,
    words_ok: bool,
    /// Output buffer for [`crate::lz4::encode_word_pages`].
    word_block: Vec<u8>,
    /// What `scan_pages` found for each page of the current window.
    scan: Vec<u64>,
    /// Whether runs of the current region may be gathered (not shared memory).
    gather_ok: bool,
    /// Small runs gathered into one chunk: their pages, their ranges, and the word each
    /// page repeats while every gathered page does one.
    gather: Vec<u8>,
    gather_runs: Vec<[u64; 2]>,
    gather_words: Vec<u64>,
    gather_words_ok: bool,
}

/// Pages classified at a time (8 MiB: two chunks).
const SCAN_WINDOW: u64 = 2 * MAX_CHUNK / PAGE_SIZE;
/// Windows shorter than this many pages are scanned by the writer alone.
const SCAN_SPLIT_MIN: u64 = 64;

/// Largest LZ4 block of a run of word pages (27 bytes a page, 13 at the end).
const WORD_BLOCK_MAX: usize = (MAX_CHUNK as usize / PAGE_SIZE as usize) * 28 + 32;
/// Runs shorter than this are not stored as chunks of their own but gathered with other
/// small runs (of any private region) into chunks of up to `MAX_CHUNK`, which are
/// compressed as a whole: isolated written pages of an incremental image would
/// otherwise each be a raw chunk (too small to compress) with its own metadata.
const GATHER_BELOW: u64 = 64 << 10;

/// Word runs shorter than this are stored like any other run (the writer's rule: under
/// 16 KiB, raw).
const WORD_RUN_MIN: u64 = 16 << 10;

impl PageSink<'_> {
    /// Bytes of the page at `addr` as they were at the pause.
    fn page(&self, addr: u64) -> &[u8] {
        page_of(self.patch, addr)
    }

    pub(super) fn flush(&mut self) -> Result<(), CaptureError> {
        if self.run_len == 0 {
            return Ok(());
        }
        if self.gather_ok && self.run_len < GATHER_BELOW {
            return self.gather_run();
        }
        let (vs, ve) = self.volatile;
        let patched = self.patch.is_some_and(|(pa, pb)| {
            self.run_start < pa + pb.len() as u64 && pa < self.run_start + self.run_len
        }) || (self.run_start < ve && vs < self.run_start + self.run_len);
        if patched {
            self.drain()?;
            self.buf.clear();
            let mut a = self.run_start;
            while a < self.run_start + self.run_len {
                let p = self.page(a).to_vec();
                self.buf.extend_from_slice(&p);
                a += PAGE_SIZE;
            }
            let data = std::mem::take(&mut self.buf);
            self.w.add_chunk(self.run_start, &data)?;
            self.buf = data;
        } else if let (Some(h), true) = (self.helper.as_mut(), self.w.compressing()) {
            let (rs, rl) = (self.run_start, self.run_len);
            let word_run = self.words_ok && rl >= WORD_RUN_MIN;
            if let Some((qs, ql)) = self.queued.take() {
                let (a, b) = (mem(qs, ql), mem(rs, rl));
                h.submit(a);
                let eb = if word_run {
                    word_block(&self.words, &mut self.word_block)
                } else {
                    self.mine.encode(b)
                };
                let ea = h.wait();
                self.w.add_encoded(qs, a, ea)?;
                self.w.add_encoded(rs, b, eb)?;
            } else if word_run {
                let eb = word_block(&self.words, &mut self.word_block);
                self.w.add_encoded(rs, mem(rs, rl), eb)?;
            } else {
                self.queued = Some((rs, rl));
            }
        } else if self.words_ok && self.run_len >= WORD_RUN_MIN && self.w.compressing() {
            let eb = word_block(&self.words, &mut self.word_block);
            self.w
                .add_encoded(self.run_start, mem(self.run_start, self.run_len), eb)?;
        } else {
            self.w
                .add_chunk(self.run_start, mem(self.run_start, self.run_len))?;
        }
        self.run_len = 0;
        let written = self.w.written_bytes();
        if written - self.started >= WRITEBACK_STEP {
            use std::os::fd::AsRawFd;
            // SAFETY: asks the kernel to start writeback of a range of our own file.
            unsafe {
                libc::sync_file_range(
                    self.w.file().as_raw_fd(),
                    self.started as i64,
                    (written - self.started) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.started = written;
        }
        Ok(())
    }

    /// Adds the current run to the gathered chunk (copied: the pages as they were at the
    /// pause), storing that first if the run does not fit.
    fn gather_run(&mut self) -> Result<(), CaptureError> {
        let (rs, rl) = (self.run_start, self.run_len);
        if self.gather.len() as u64 + rl > MAX_CHUNK {
            self.flush_gathered()?;
        }
        let mut a = rs;
        while a < rs + rl {
            // Within capacity (MAX_CHUNK, reserved at start): no allocation.
            self.gather.extend_from_slice(page_of(self.patch, a));
            a += PAGE_SIZE;
        }
        // Never merged with the previous run: adjacent runs are in different regions
        // (within a region, runs end at a page not saved), and a run lies in one region.
        self.gather_runs.push([rs, rs + rl]);
        if self.words_ok && self.gather_words_ok {
            self.gather_words.extend_from_slice(&self.words);
        } else {
            self.gather_words_ok = false;
        }
        self.run_len = 0;
        Ok(())
    }

    /// Stores the gathered runs as one chunk (LZ4 when that pays, else raw).
    fn flush_gathered(&mut self) -> Result<(), CaptureError> {
        if self.gather_runs.is_empty() {
            return Ok(());
        }
        let len = self.gather.len() as u64;
        let enc = if !self.w.compressing() {
            None
        } else if self.gather_words_ok && len >= WORD_RUN_MIN {
            word_block(&self.gather_words, &mut self.word_block)
        } else {
            self.mine.encode(&self.gather)
        };
        self.w
            .add_gathered(self.gather_runs[0][0], &self.gather_runs, &self.gather, enc)?;
        self.gather.clear();
        self.gather_runs.clear();
        self.gather_words.clear();
        self.gather_words_ok = true;
        Ok(())
    }

    /// Stores the queued run, if any, on this thread.
    fn drain(&mut self) -> Result<(), CaptureError> {
        if let Some((qs, ql)) = self.queued.take() {
            let a = mem(qs, ql);
            let e = self.mine.encode(a);
            self.w.add_encoded(qs, a, e)?;
        }
        Ok(())
    }

    /// Adds the `npages` pages from `start` (all of them pages to save, bar all-zero
    /// ones when `skip_zero`); returns how many were stored and how many were zero. The
    /// pages are classified (zero, one repeated word, other) a window at a time, half of
    /// each window by the helper thread.
    fn push_run(
        &mut self,
        start: u64,
        npages: u64,
        skip_zero: bool,
    ) -> Result<(u64, u64), CaptureError> {
        let (mut saved, mut zero) = (0, 0);
        let mut words = std::mem::take(&mut self.scan);
        let mut a = start;
        let end = start + npages * PAGE_SIZE;
        while a < end {
            let n = ((end - a) / PAGE_SIZE).min(SCAN_WINDOW);
            let len = n * PAGE_SIZE;
            words.resize(n as usize, 0);
            let (vs, ve) = self.volatile;
            let touched = self
                .patch
                .is_some_and(|(pa, pb)| a < pa + pb.len() as u64 && pa < a + len)
                || (a < ve && vs < a + len);
            if touched {
                for (i, w) in words.iter_mut().enumerate() {
                    let page = self.page(a + i as u64 * PAGE_SIZE);
                    *w = crate::lz4::repeated_word(page).unwrap_or(NOT_WORD);
                }
            } else if let (Some(h), true) = (self.helper.as_mut(), n >= SCAN_SPLIT_MIN) {
                let half = n / 2;
                let (wa, wb) = words.split_at_mut(half as usize);
                h.submit_scan(mem(a, half * PAGE_SIZE), wa);
                scan_pages(mem(a + half * PAGE_SIZE, (n - half) * PAGE_SIZE), wb);
                h.wait();
            } else {
                scan_pages(mem(a, len), &mut words);
            }
            for (i, &w) in words.iter().enumerate() {
                let word = (w != NOT_WORD).then_some(w);
                if self.push_word(a + i as u64 * PAGE_SIZE, word, skip_zero)? {
                    saved += 1;
                } else {
                    zero += 1;
                }
            }
            a += len;
        }
        self.scan = words;
        Ok((saved, zero))
    }

    /// Adds the page at `addr`, which repeats `word` (if `Some`), unless it is all zeros
    /// and `skip_zero`. Returns whether it was stored.
    fn push_word(
        &mut self,
        addr: u64,
        word: Option<u64>,
        skip_zero: bool,
    ) -> Result<bool, CaptureError> {
        if skip_zero && word == Some(0) {
            self.flush()?;
            return Ok(false);
        }
        if self.run_len > 0 && (self.run_start + self.run_len != addr || self.run_len >= MAX_CHUNK)
        {
            self.flush()?;
        }
        if self.run_len == 0 {
            self.run_start = addr;
            self.words.clear();
            self.words_ok = true;
        }
        match word {
            Some(w) if self.words_ok => self.words.push(w),
            _ => self.words_ok = false,
        }
        self.run_len += PAGE_SIZE;
        self.pages += 1;
        Ok(true)
    }
}

/// Bytes of the page at `addr` as they were at the pause: from `patch` where it covers
/// the page, else from memory.
fn page_of(patch: Option<(u64, &[u8])>, addr: u64) -> &[u8] {
    if let Some((pa, pb)) = patch {
        if addr >= pa && addr + PAGE_SIZE <= pa + pb.len() as u64 {
            let o = (addr - pa) as usize;
            return &pb[o..o + PAGE_SIZE as usize];
        }
    }
    mem(addr, PAGE_SIZE)
}

/// The LZ4 block of a run of word pages, if it pays (it always does for 16 KiB or more).
fn word_block<'b>(words: &[u64], out: &'b mut [u8]) -> Option<&'b [u8]> {
    let n = crate::lz4::encode_word_pages(words, out)?;
    (n * 8 <= words.len() * PAGE_SIZE as usize * 7).then(|| &out[..n])
}

pub(super) fn vdso_info(maps: &[Vma]) -> Vdso {
    let find = |n: &str| maps.iter().find(|v| v.name == n);
    let mut d = Vdso::default();
    if let Some(v) = find("[vvar]") {
        d.vvar_start = v.start;
        d.vvar_len = v.len();
        if let Some(c) = find("[vvar_vclock]") {
            if c.start == v.end {
                d.vvar_len = c.end - v.start;
            }
        }
    }
    if let Some(v) = find("[vdso]") {
        d.vdso_start = v.start;
        d.vdso_len = v.len();
        d.vdso_hash = xxh3_64(mem(v.start, v.len()));
    }
    d
}

impl PageSink<'_> {
    /// Starts the image writer; `maps` must be the list the caller iterates (the writer's
    /// own stack region is found from it).
    pub(super) fn start<'a>(
        pending: &Pending,
        name: &str,
        maps: &[Vma],
        patch: Option<(u64, &'a [u8])>,
    ) -> Result<PageSink<'a>, CaptureError> {
        let (file, path) = pending.create_file(name)?;
        // Any local lives on the writer's stack, which changes while we write.
        let probe = 0u8;
        let here = std::hint::black_box(&probe) as *const u8 as u64;
        let volatile = maps
            .iter()
            .find(|v| v.start <= here && here < v.end)
            .map(|v| (v.start, v.end))
            .unwrap_or((0, 0));
        Ok(PageSink {
            w: ImageWriter::new(file, &path)?,
            patch,
            volatile,
            run_start: 0,
            run_len: 0,
            buf: Vec::new(),
            pages: 0,
            started: 0,
            helper: Helper::start(),
            mine: Compressor::new(),
            queued: None,
            words: Vec::with_capacity((MAX_CHUNK / PAGE_SIZE) as usize),
            words_ok: false,
            word_block: vec![0; WORD_BLOCK_MAX],
            scan: Vec::with_capacity(SCAN_WINDOW as usize),
            gather_ok: false,
            gather: Vec::with_capacity(MAX_CHUNK as usize),
            gather_runs: Vec::with_capacity((MAX_CHUNK / PAGE_SIZE) as usize),
            gather_words: Vec::with_capacity((MAX_CHUNK / PAGE_SIZE) as usize),
            gather_words_ok: true,
        })
    }

    /// Stores what is still queued, stops the helper, and hands back the writer.
    pub(super) fn into_writer(mut self) -> Result<(ImageWriter, u64), CaptureError> {
        self.flush_gathered()?;
        self.drain()?;
        drop(self.helper.take());
        Ok((self.w, self.pages))
    }
}

/// The parts of `[v.start, v.end)` that the parent image maps the same way: regions of
/// the same kind (and the same file at the same offsets), as sorted address ranges.
fn parent_compatible(v: &Vma, kind: RegionKind, parent: &[Region]) -> Vec<(u64, u64)> {
    parent
        .iter()
        .filter(|p| p.start < v.end && v.start < p.end)
        .filter(|p| {
            p.kind == kind
                && (kind != RegionKind::FilePrivate
                    || (p.name == v.name
                        && p.offset.wrapping_sub(p.start) == v.offset.wrapping_sub(v.start)))
        })
        .map(|p| (p.start.max(v.start), p.end.min(v.end)))
        .collect()
}

/// Marks the pages of `v` in `[a, b)` in `auth`.
fn mark(auth: &mut [bool], v: &Vma, a: u64, b: u64) {
    let (a, b) = (a.max(v.start), b.min(v.end));
    if a < b {
        for i in (a - v.start) / PAGE_SIZE..(b - v.start) / PAGE_SIZE {
            auth[i as usize] = true;
        }
    }
}

/// Marks the pages of `v` outside the sorted ranges `keep` in `auth`.
fn mark_outside(auth: &mut [bool], v: &Vma, keep: &[(u64, u64)]) {
    let mut at = v.start;
    for &(a, b) in keep {
        if b <= at || a >= v.end {
            continue;
        }
        mark(auth, v, at, a);
        at = at.max(b);
    }
    mark(auth, v, at, v.end);
}

/// For a region that may inherit: per page, whether this image describes it. It does
/// for pages written since the parent, pages whose tracking did not hold throughout
/// (outside `clean`: new or re-created mappings merged into this one), pages the parent
/// does not map the same way (a mapping that grew), and for a private file mapping every
/// page that is not a private copy now (it shows the file's bytes; a dropped private
/// copy is not reported as written).
fn authoritative(
    v: &Vma,
    kind: RegionKind,
    pm: &[u64],
    inc: &super::Incremental,
    parent: &[Region],
) -> Vec<bool> {
    let mut auth = vec![false; pm.len()];
    let first = inc.dirty.partition_point(|d| d[1] <= v.start);
    for d in &inc.dirty[first..] {
        if d[0] >= v.end {
            break;
        }
        mark(&mut auth, v, d[0], d[1]);
    }
    mark_outside(&mut auth, v, inc.clean);
    mark_outside(&mut auth, v, &parent_compatible(v, kind, parent));
    if kind == RegionKind::FilePrivate {
        for (i, &e) in pm.iter().enumerate() {
            let private_copy = (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0;
            if !private_copy {
                auth[i] = true;
            }
        }
    }
    auth
}

/// Records every region and stores its saved pages through `sink`.
pub(super) fn capture_regions(
    maps: &[Vma],
    pending: &Pending,
    inp: &CaptureInput,
    sink: &mut PageSink,
) -> Result<Vec<Region>, CaptureError> {
    let pagemap = File::open("/proc/self/pagemap").map_err(proc_err("/proc/self/pagemap"))?;
    let mut regions = Vec::new();
    let mut pm = Vec::<u64>::new();
    // Incremental: the parent's regions (an unreadable parent makes this image full).
    let parent: Option<(Vec<Region>, &super::Incremental)> =
        inp.incremental.as_ref().and_then(|inc| {
            torpor_image::ImageReader::open(inc.parent_image)
                .ok()
                .map(|r| (r.into_parts().1.regions, inc))
        });
    for v in maps {
        if (inp.skip)(v.start, v.end) {
            continue;
        }
        let Some(kind) = classify(v)? else { continue };
        let npages = v.len() / PAGE_SIZE;
        let mut region = Region {
            start: v.start,
            end: v.end,
            prot: v.prot(),
            kind,
            name: v.name.clone(),
            offset: v.offset,
            file: None,
            pages_saved: 0,
            pages_zero: 0,
            flags: Vec::new(),
            captured: None,
            inherit: false,
            written: Vec::new(),
        };
        if matches!(kind, RegionKind::FilePrivate | RegionKind::FileShared) {
            region.file = file_id(&v.name);
        }
        if kind == RegionKind::FileShared && v.write {
            let name = shared_map_name(v.dev_major, v.dev_minor, v.inode);
            if pending.path().join(&name).exists() {
                region.captured = Some(name);
            }
        }
        let inc = parent.as_ref().filter(|_| {
            matches!(
                kind,
                RegionKind::Anon | RegionKind::Heap | RegionKind::Stack | RegionKind::FilePrivate
            )
        });
        if kind != RegionKind::FileShared {
            pm.resize(npages as usize, 0);
            // SAFETY: the slice of u64 is viewed as bytes for the duration of the read.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(pm.as_mut_ptr() as *mut u8, pm.len() * 8) };
            use std::os::unix::fs::FileExt;
            pagemap
                .read_exact_at(bytes, (v.start / PAGE_SIZE) * 8)
                .map_err(proc_err("/proc/self/pagemap"))?;
            let want = |e: u64| match kind {
                RegionKind::FilePrivate => {
                    (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
                }
                RegionKind::SharedAnon | RegionKind::DeletedFile => true,
                _ => e & (PM_PRESENT | PM_SWAPPED) != 0,
            };
            // A region this image describes entirely is simply full.
            let auth = inc
                .map(|(pr, i)| authoritative(v, kind, &pm, i, pr))
                .filter(|a| a.iter().any(|&x| !x));
            if let Some(auth) = &auth {
                region.inherit = true;
                let mut i = 0usize;
                while i < auth.len() {
                    if !auth[i] {
                        i += 1;
                        continue;
                    }
                    let s = i;
                    while i < auth.len() && auth[i] {
                        i += 1;
                    }
                    region.written.push([
                        v.start + s as u64 * PAGE_SIZE,
                        v.start + i as u64 * PAGE_SIZE,
                    ]);
                }
            }
            // The agent's scratch buffers: nothing of them is saved (zeros at restore).
            let scratch: Vec<(usize, usize)> = inp
                .scratch
                .iter()
                .filter(|&&(a, b)| a < v.end && v.start < b)
                .map(|&(a, b)| {
                    let (a, b) = (a.max(v.start), b.min(v.end));
                    (
                        ((a - v.start) / PAGE_SIZE) as usize,
                        (b - v.start).div_ceil(PAGE_SIZE) as usize,
                    )
                })
                .collect();
            let want = |i: usize, e: u64| {
                auth.as_ref().is_none_or(|a| a[i])
                    && want(e)
                    && !scratch.iter().any(|&(a, b)| a <= i && i < b)
            };
            if pm.iter().enumerate().any(|(i, &e)| want(i, e)) {
                if !v.read {
                    // SAFETY: changes protection of our own (the writer's) copy only.
                    unsafe {
                        libc::mprotect(
                            v.start as *mut libc::c_void,
                            v.len() as usize,
                            libc::PROT_READ,
                        )
                    };
                }
                // A zero page of a private file mapping must be stored: the restore maps
                // the file, so a skipped page would show the file's bytes, not zeros.
                let skip_zero = kind != RegionKind::FilePrivate;
                sink.gather_ok = kind != RegionKind::SharedAnon;
                let mut i = 0;
                while i < pm.len() {
                    if !want(i, pm[i]) {
                        i += 1;
                        continue;
                    }
                    let j = (i..pm.len()).find(|&k| !want(k, pm[k])).unwrap_or(pm.len());
                    let addr = v.start + i as u64 * PAGE_SIZE;
                    let (saved, zero) = sink.push_run(addr, (j - i) as u64, skip_zero)?;
                    region.pages_saved += saved;
                    region.pages_zero += zero;
                    i = j;
                }
                sink.flush()?;
            }
        }
        regions.push(region);
    }
    Ok(regions)
}
