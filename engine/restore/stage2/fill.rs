//! Stage 2, filling memory: copies raw chunks straight into place (copy.rs, or `pread`)
//! and decodes LZ4 chunks from a scratch buffer, split between this thread and one
//! helper thread.

use crate::plan::*;
use crate::rawclone::raw_clone;
use crate::sys::{die, nr, sc};
use crate::{copy, hdr, lz4, table, MADV_POPULATE_WRITE, SCRATCH_ADDR};

/// Reads `len` bytes at file offset `off` of image `fd` into `to`.
fn pread_full(fd: u64, to: u64, len: u64, off: u64) {
    let mut done = 0u64;
    while done < len {
        // SAFETY: the destination is mapped writable by the caller for `len` bytes.
        let n = unsafe { sc(nr::PREAD, fd, to + done, len - done, off + done, 0, 0) };
        if n <= 0 {
            die(b"reading the image", n);
        }
        done += n as u64;
    }
}

/// Fills extents `[from, to)` of the plan (all regions mapped writable), using the
/// scratch buffer at `scratch` for compressed ones.
fn fill_extents(from: usize, to: usize, scratch: u64) {
    let h = hdr();
    let ext: &[PlanExtent] = table(h.extents_off, h.nextents);
    // The chunk (fd, offset) whose decoded bytes the scratch holds: the parts of one
    // chunk follow each other in the plan, so each chunk is decoded once.
    let mut decoded = (-1i64, u64::MAX);
    for e in &ext[from..to] {
        match e.codec {
            CODEC_RAW => {
                // Straight from the image's page cache into fresh pages where the region
                // takes that (copy.rs); the rest the plain way.
                let done = copy::copy_raw(e);
                if done < e.len {
                    populate(e.vaddr + done, e.len - done);
                    pread_full(e.fd as u64, e.vaddr + done, e.len - done, e.file_off + done);
                }
            }
            // Part of a chunk (newer images of the chain hold the rest), or any chunk
            // while copying: decode it aside, copy the part.
            CODEC_LZ4 if e.skip != 0 || e.dec_len != e.len || (copy::on() && e.dec_len <= h.dec_len) => {
                if e.stored_len > h.scratch_len || e.dec_len > h.dec_len || e.skip + e.len > e.dec_len {
                    die(b"partial compressed chunk does not fit the scratch buffer", e.vaddr as i64);
                }
                let dec = scratch + h.scratch_len;
                if decoded != (e.fd, e.file_off) {
                    pread_full(e.fd as u64, scratch, e.stored_len, e.file_off);
                    // SAFETY: the scratch buffer holds stored_len bytes just read,
                    // followed by dec_len bytes of decode space.
                    let (src, out) = unsafe {
                        (
                            core::slice::from_raw_parts(scratch as *const u8, e.stored_len as usize),
                            core::slice::from_raw_parts_mut(dec as *mut u8, e.dec_len as usize),
                        )
                    };
                    if lz4::decode_block(src, out) != Some(e.dec_len as usize) {
                        die(b"decoding a compressed chunk", e.vaddr as i64);
                    }
                    decoded = (e.fd, e.file_off);
                }
                let src = dec + e.skip;
                let done = copy::copy_from(e.vaddr, src, e.len);
                if done < e.len {
                    populate(e.vaddr + done, e.len - done);
                    // SAFETY: the destination lies inside a region mapped writable for
                    // `len` bytes; the decoded bytes are in the restorer's own range.
                    unsafe { crate::sys::memcpy((e.vaddr + done) as *mut u8, (src + done) as *const u8, (e.len - done) as usize) };
                }
            }
            CODEC_LZ4 => {
                if e.stored_len > h.scratch_len {
                    die(b"compressed chunk larger than the scratch buffer", e.vaddr as i64);
                }
                populate(e.vaddr, e.len);
                pread_full(e.fd as u64, scratch, e.stored_len, e.file_off);
                // SAFETY: the scratch buffer holds stored_len bytes just read; the
                // destination lies inside a region mapped writable for `len` bytes.
                let (src, dst) = unsafe {
                    (
                        core::slice::from_raw_parts(scratch as *const u8, e.stored_len as usize),
                        core::slice::from_raw_parts_mut(e.vaddr as *mut u8, e.len as usize),
                    )
                };
                if lz4::decode_block(src, dst) != Some(e.len as usize) {
                    die(b"decoding a compressed chunk", e.vaddr as i64);
                }
            }
            _ => die(b"unknown chunk codec", e.codec as i64),
        }
    }
}

/// Allocates `len` bytes of pages at `at` in one call rather than one fault per page (a
/// fault costs ~1 us in a VM; failure, e.g. an older kernel, just means faults).
fn populate(at: u64, len: u64) {
    // SAFETY: MADV_POPULATE_WRITE on part of a region mapped writable.
    unsafe { sc(nr::MADVISE, at, len, MADV_POPULATE_WRITE, 0, 0, 0) };
}

const HUGE: u64 = 2 << 20;
const MADV_HUGEPAGE: u64 = 14;

/// Marks the 2 MiB-aligned stretches of region `r` that its saved extents cover entirely
/// `MADV_HUGEPAGE`, so that filling them allocates 2 MiB pages (one allocation and one
/// clear instead of 512 faults). Only stretches whose every page is saved: this never
/// makes the program use more memory than at the checkpoint. The mark splits the VMA
/// and stays (`hg` in smaps) for those stretches.
pub fn huge_pages_for(r: &PlanRegion) {
    let h = hdr();
    let ext: &[PlanExtent] = table(h.extents_off, h.nextents);
    let mine = &ext[r.first_extent as usize..(r.first_extent + r.nextents) as usize];
    let mut i = 0;
    while i < mine.len() {
        let start = mine[i].vaddr;
        let mut end = start + mine[i].len;
        i += 1;
        while i < mine.len() && mine[i].vaddr == end {
            end += mine[i].len;
            i += 1;
        }
        let (a, b) = ((start + HUGE - 1) & !(HUGE - 1), end & !(HUGE - 1));
        if b > a {
            // SAFETY: advice on part of our own, just mapped region; a failure (THP
            // disabled) only means 4 KiB pages.
            unsafe { sc(nr::MADVISE, a, b - a, MADV_HUGEPAGE, 0, 0, 0) };
        }
    }
}

/// Below this many bytes of pages, one thread fills everything.
const PARALLEL_MIN: u64 = 64 << 20;

#[repr(C, align(16))]
struct HelperStack([u8; 65536]);
static mut HELPER_STACK: HelperStack = HelperStack([0; 65536]);
/// The helper's tid while it runs: set by the kernel at clone (PARENT_SETTID), cleared
/// and futex-woken when it exits (CHILD_CLEARTID).
static mut HELPER_TID: i32 = 0;

extern "C" fn helper_entry(range: u64) -> ! {
    let (from, to) = ((range >> 32) as usize, (range & 0xffff_ffff) as usize);
    fill_extents(from, to, SCRATCH_ADDR + hdr().scratch_len + hdr().dec_len);
    // SAFETY: ends this thread only (exit, not exit_group).
    unsafe { sc(nr::EXIT, 0, 0, 0, 0, 0, 0) };
    loop {}
}

/// Fills every extent: the page copies and decoding are split by bytes between this
/// thread and one helper thread (restore is bound by page allocation and copying, and
/// the machines have two or more cores). The helper is gone when this returns.
pub fn fill_all() {
    let h = hdr();
    let ext: &[PlanExtent] = table(h.extents_off, h.nextents);
    let n = ext.len();
    let total: u64 = ext.iter().map(|e| e.len).sum();
    if h.fill_threads < 2 || total < PARALLEL_MIN || n < 2 || n > u32::MAX as usize {
        fill_extents(0, n, SCRATCH_ADDR);
        return;
    }
    let (mut k, mut acc) = (0usize, 0u64);
    while k < n && acc * 2 < total {
        acc += ext[k].len;
        k += 1;
    }
    // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|PARENT_SETTID|CHILD_CLEARTID: a plain
    // thread on its own stack; it shares this thread's (unused) TLS pointer.
    let flags: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x100000 | 0x200000;
    let tid_addr = core::ptr::addr_of_mut!(HELPER_TID) as u64;
    let stack_top = core::ptr::addr_of_mut!(HELPER_STACK) as u64 + 65536;
    // SAFETY: the helper runs `helper_entry` on its own static stack and touches only
    // the extents [k, n) and the second half of the scratch buffer.
    let r = unsafe { raw_clone(flags, stack_top, tid_addr, tid_addr, 0, helper_entry as *const () as u64, ((k as u64) << 32) | n as u64) };
    if r < 0 {
        fill_extents(0, n, SCRATCH_ADDR);
        return;
    }
    fill_extents(0, k, SCRATCH_ADDR);
    loop {
        // SAFETY: reads the word the kernel clears when the helper exits.
        let t = unsafe { core::ptr::read_volatile(tid_addr as *const i32) };
        if t == 0 {
            break;
        }
        // SAFETY: FUTEX_WAIT(0) on our own word while it still holds the tid.
        unsafe { sc(nr::FUTEX, tid_addr, 0, t as u64, 0, 0, 0) };
    }
    // The tid may stay allocated a moment after the clear; a thread restored with
    // set_tid could need that very number.
    // SAFETY: tkill with signal 0 only checks whether the tid exists.
    while unsafe { sc(nr::TKILL, r as u64, 0, 0, 0, 0, 0) } == 0 {
        // SAFETY: yields the CPU.
        unsafe { sc(nr::SCHED_YIELD, 0, 0, 0, 0, 0, 0) };
    }
}

