//! Dirty-page tracking for incremental generations: userfaultfd write-protect in async
//! mode (`UFFD_USER_MODE_ONLY`, `WP_ASYNC`, `WP_UNPOPULATED`) on the program's private
//! mappings, and one `PAGEMAP_SCAN` per tracked range in each pause, which returns the
//! pages written since the previous pause and protects them again atomically
//! (ENGINE_NOTES.md §6, ADR 0009).
//!
//! A range whose scan fails (`EPERM` after an mremap dropped the registration, a new
//! mapping in its place) or overflows the result buffer is not "clean": the writer saves
//! its regions in full, and the range is registered and protected again. Everything here
//! runs on the manager thread; [`scan`] runs in the pause right before the fork and
//! neither allocates nor locks.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering::SeqCst};

use crate::manager::{close, Cell};
use crate::sys;

/// Tracked ranges (whole VMAs, merged when adjacent).
pub const MAX_TRACKED: usize = 8192;
/// Written ranges one round can report; more makes the rest of the scan a full dump.
pub const MAX_DIRTY: usize = 1 << 16;
/// Mappings larger than this are not tracked (markers for unpopulated pages would cost
/// page tables for all of it): they are saved in full every time.
const MAX_TRACK_LEN: u64 = 1 << 36;

const UFFD_USER_MODE_ONLY: i32 = 1;
const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// _IOWR(0xAA, 0x3F, struct uffdio_api)
const UFFDIO_API: u64 = 0xc018_aa3f;
/// _IOWR(0xAA, 0x00, struct uffdio_register)
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// _IOWR(0xAA, 0x06, struct uffdio_writeprotect)
const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// _IOWR('f', 16, struct pm_scan_arg)
const PAGEMAP_SCAN: u64 = 0xc060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1;
const PM_SCAN_CHECK_WPASYNC: u64 = 2;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// `struct page_region` of PAGEMAP_SCAN.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// The userfaultfd, -1 when none; and the process that opened it (a forked child
/// inherits the descriptor, which acts on its parent's memory: it must not use it).
static UFFD: AtomicI32 = AtomicI32::new(-1);
static OWNER: AtomicI32 = AtomicI32::new(0);
/// `/proc/self/pagemap`, opened with the userfaultfd.
static PAGEMAP: AtomicI32 = AtomicI32::new(-1);
static TRACKED: Cell<[(u64, u64); MAX_TRACKED]> =
    Cell(std::cell::UnsafeCell::new([(0, 0); MAX_TRACKED]));
static NTRACKED: AtomicUsize = AtomicUsize::new(0);
static CLEAN: Cell<[(u64, u64); MAX_TRACKED]> =
    Cell(std::cell::UnsafeCell::new([(0, 0); MAX_TRACKED]));
static NCLEAN: AtomicUsize = AtomicUsize::new(0);
/// Ranges `protect_new` registered and protected before this pause.
static PENDING: Cell<[(u64, u64); MAX_TRACKED]> =
    Cell(std::cell::UnsafeCell::new([(0, 0); MAX_TRACKED]));
static NPENDING: AtomicUsize = AtomicUsize::new(0);
/// Result buffer of the scans (mapped once, outside the pause).
static DIRTY: std::sync::atomic::AtomicPtr<PageRegion> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static NDIRTY: AtomicUsize = AtomicUsize::new(0);

fn ioctl(fd: i32, req: u64, arg: *mut u8) -> i64 {
    // SAFETY: every caller passes a pointer to the argument struct `req` expects.
    unsafe { libc::syscall(libc::SYS_ioctl, fd, req, arg) }
}

/// Forgets all tracking (after a restore: the descriptor numbers in our memory belong
/// to the dead original; or in a forked child). The next round is full.
pub fn reset() {
    UFFD.store(-1, SeqCst);
    PAGEMAP.store(-1, SeqCst);
    NTRACKED.store(0, SeqCst);
    NCLEAN.store(0, SeqCst);
    NDIRTY.store(0, SeqCst);
    NPENDING.store(0, SeqCst);
}

/// The descriptors tracking uses (excluded from the image's fds).
pub fn fds() -> [i32; 2] {
    if OWNER.load(SeqCst) == sys::getpid() {
        [UFFD.load(SeqCst), PAGEMAP.load(SeqCst)]
    } else {
        [-1, -1]
    }
}

/// Outside the pause: opens the userfaultfd and the result buffer if needed. Returns
/// whether tracking is available.
pub fn prepare() -> bool {
    let me = sys::getpid();
    if OWNER.load(SeqCst) != me {
        // Inherited from the process we were forked from: not ours to use or close
        // blindly (close only the numbers, which are our copies).
        if OWNER.load(SeqCst) != 0 {
            let [u, p] = [UFFD.load(SeqCst), PAGEMAP.load(SeqCst)];
            close(u);
            close(p);
        }
        reset();
        OWNER.store(me, SeqCst);
    }
    if MAPS.load(SeqCst).is_null() {
        let p = crate::alloc::map(MAPS_LEN);
        if p.is_null() {
            return false;
        }
        MAPS.store(p, SeqCst);
    }
    if DIRTY.load(SeqCst).is_null() {
        let len = MAX_DIRTY * std::mem::size_of::<PageRegion>();
        let p = crate::alloc::map(len);
        if p.is_null() {
            return false;
        }
        DIRTY.store(p as *mut PageRegion, SeqCst);
    }
    if UFFD.load(SeqCst) >= 0 {
        return true;
    }
    // SAFETY: userfaultfd(2) with flags only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        )
    } as i32;
    if fd < 0 {
        return false;
    }
    let mut api = [
        UFFD_API,
        UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        0u64,
    ];
    if ioctl(fd, UFFDIO_API, api.as_mut_ptr() as *mut u8) != 0 {
        close(fd);
        return false;
    }
    let pm = crate::manager::sys_open(b"/proc/self/pagemap\0", libc::O_RDONLY);
    if pm < 0 {
        close(fd);
        return false;
    }
    UFFD.store(fd, SeqCst);
    PAGEMAP.store(pm, SeqCst);
    NTRACKED.store(0, SeqCst);
    true
}

/// Size of the buffer `/proc/self/maps` is read into (mapped once, outside the pause).
const MAPS_LEN: usize = 8 << 20;
static MAPS: std::sync::atomic::AtomicPtr<u8> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// One maps line, parsed without allocating: (start, end, readable, shared, name).
fn parse_line(l: &[u8]) -> Option<(u64, u64, bool, bool, &[u8])> {
    let mut f = l.splitn(6, |&b| b == b' ');
    let range = f.next()?;
    let perms = f.next()?;
    let (_off, _dev, _ino) = (f.next()?, f.next()?, f.next()?);
    let name = f.next().unwrap_or(b"");
    let name = &name[name.iter().position(|&b| b != b' ').unwrap_or(name.len())..];
    let dash = range.iter().position(|&b| b == b'-')?;
    let hex = |s: &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for &c in s {
            v = v.checked_mul(16)? + (c as char).to_digit(16)? as u64;
        }
        Some(v)
    };
    if perms.len() < 4 {
        return None;
    }
    Some((
        hex(&range[..dash])?,
        hex(&range[dash + 1..])?,
        perms[0] == b'r',
        perms[3] == b's',
        name,
    ))
}

/// Whether a mapping is tracked: private memory whose pages the image stores (anonymous,
/// heap, stack, private file mappings), readable. Parts of it in `avoid` are not.
fn eligible(start: u64, end: u64, read: bool, shared: bool, n: &[u8]) -> bool {
    let kind_ok = n.is_empty()
        || n == b"[heap]"
        || n == b"[stack]"
        || n.starts_with(b"[anon:")
        || (n.starts_with(b"/")
            && !n.starts_with(b"/dev/")
            && !n.starts_with(b"/memfd:")
            && !n.starts_with(b"/SYSV")
            && !n.ends_with(b" (deleted)"));
    kind_ok && !shared && read && end - start <= MAX_TRACK_LEN
}

/// Splits `[start, end)` at the ranges of `avoid` (at most 8 of them): calls `f` on each
/// piece outside them, in address order.
fn pieces_outside(start: u64, end: u64, avoid: &[(u64, u64)], mut f: impl FnMut(u64, u64)) {
    let mut cuts = [(0u64, 0u64); 8];
    let mut n = 0;
    for &(a, b) in avoid {
        if a < end && start < b && n < cuts.len() {
            cuts[n] = (a.max(start), b.min(end));
            n += 1;
        }
    }
    cuts[..n].sort_unstable();
    let mut at = start;
    for &(a, b) in &cuts[..n] {
        if a > at {
            f(at, a);
        }
        at = at.max(b);
    }
    if at < end {
        f(at, end);
    }
}

fn covered(start: u64, end: u64, list: &[(u64, u64)]) -> bool {
    let mut at = start;
    for &(a, b) in list {
        if a <= at && at < b {
            at = b;
            if at >= end {
                return true;
            }
        }
    }
    at >= end
}

/// Reads `/proc/self/maps` into the preallocated buffer and calls `f` on every piece of
/// every eligible mapping outside `avoid` (a mapping merged with the agent's own memory,
/// as adjacent anonymous mappings merge, is taken in pieces around it; registering a
/// piece splits the mapping). Neither allocates nor locks. False if the maps could not
/// be read whole.
fn for_each_eligible(avoid: &[(u64, u64)], mut f: impl FnMut(u64, u64)) -> bool {
    let maps = MAPS.load(SeqCst);
    if maps.is_null() {
        return false;
    }
    let mfd = crate::manager::sys_open(b"/proc/self/maps\0", libc::O_RDONLY);
    if mfd < 0 {
        return false;
    }
    let mut len = 0usize;
    loop {
        // SAFETY: reads into our own buffer of MAPS_LEN bytes.
        let r = unsafe { libc::read(mfd, maps.add(len) as *mut libc::c_void, MAPS_LEN - len) };
        if r <= 0 {
            break;
        }
        len += r as usize;
        if len == MAPS_LEN {
            // Too many mappings to track: everything is saved in full.
            close(mfd);
            return false;
        }
    }
    close(mfd);
    // SAFETY: `len` bytes were read into the buffer.
    let text = unsafe { std::slice::from_raw_parts(maps, len) };
    for line in text.split(|&b| b == b'\n') {
        let Some((start, end, read, shared, name)) = parse_line(line) else {
            continue;
        };
        if eligible(start, end, read, shared, name) {
            pieces_outside(start, end, avoid, &mut f);
        }
    }
    true
}

fn register_and_protect(fd: i32, start: u64, end: u64) -> bool {
    let mut reg = [start, end - start, UFFDIO_REGISTER_MODE_WP, 0u64];
    if ioctl(fd, UFFDIO_REGISTER, reg.as_mut_ptr() as *mut u8) != 0 {
        return false;
    }
    let mut wp = [start, end - start, UFFDIO_WRITEPROTECT_MODE_WP];
    ioctl(fd, UFFDIO_WRITEPROTECT, wp.as_mut_ptr() as *mut u8) == 0
}

/// Appends a range. Adjacent ranges are not merged: each mapping is scanned on its own,
/// so one that was replaced (EPERM) does not make its neighbours unclean.
fn push_range(list: &mut [(u64, u64)], n: &mut usize, start: u64, end: u64) {
    if *n < list.len() {
        list[*n] = (start, end);
        *n += 1;
    }
}

/// Before the pause, with the program running: registers and protects the eligible
/// mappings not tracked yet, which costs about 70 ms per GiB of populated memory and
/// would otherwise lengthen the pause. Writes between this and the fork are seen by the
/// next scan, so they cost at most a page saved twice; these mappings are saved in full
/// this round anyway.
pub fn protect_new(avoid: &[(u64, u64)]) {
    let fd = UFFD.load(SeqCst);
    NPENDING.store(0, SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: manager-only tables.
    let tracked = unsafe { &(&*TRACKED.0.get())[..NTRACKED.load(SeqCst).min(MAX_TRACKED)] };
    // SAFETY: as above.
    let pending = unsafe { &mut *PENDING.0.get() };
    let mut n = 0usize;
    for_each_eligible(avoid, |start, end| {
        if !covered(start, end, tracked) && register_and_protect(fd, start, end) {
            push_range(pending, &mut n, start, end);
        }
    });
    NPENDING.store(n, SeqCst);
}

/// In the pause: the ranges `protect_new` protected that are still registered as a
/// whole (one protecting scan each, cheap: it only touches what was written since).
/// Keeps them in PENDING, drops the others.
fn recheck_pending(pm: i32) -> usize {
    // SAFETY: manager-only table.
    let pending = unsafe { &mut *PENDING.0.get() };
    let mut n = 0usize;
    for i in 0..NPENDING.load(SeqCst).min(MAX_TRACKED) {
        let (a, b) = pending[i];
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: a,
            end: b,
            walk_end: 0,
            vec: 0,
            vec_len: 0,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: 0,
        };
        if ioctl(pm, PAGEMAP_SCAN, &mut arg as *mut PmScanArg as *mut u8) >= 0 {
            pending[n] = (a, b);
            n += 1;
        }
    }
    n
}

/// In the pause, right before the fork: scans the ranges tracked at the previous pause
/// for pages written since, protecting them again (a range whose scan fails is left out
/// of the clean list: its regions are saved in full); then registers and protects every
/// eligible mapping that is neither clean nor protected by `protect_new` (and still so),
/// and makes the tracked list the current eligible mappings. `avoid`: ranges never
/// tracked (the agent's own data, the manager's stack, written after the scan: always
/// saved in full). Neither allocates nor locks: what is written after the scan must not
/// be program memory.
pub fn scan_and_register(avoid: &[(u64, u64)]) {
    scan();
    let fd = UFFD.load(SeqCst);
    // SAFETY: manager-only tables.
    let tracked = unsafe { &mut *TRACKED.0.get() };
    // SAFETY: as above.
    let clean = unsafe { &(&*CLEAN.0.get())[..NCLEAN.load(SeqCst)] };
    NTRACKED.store(0, SeqCst);
    if fd < 0 {
        return;
    }
    let npend = recheck_pending(PAGEMAP.load(SeqCst));
    // SAFETY: manager-only table, filled by recheck_pending.
    let pending = unsafe { &(&*PENDING.0.get())[..npend] };
    let mut n = 0usize;
    let whole = for_each_eligible(avoid, |start, end| {
        if covered(start, end, clean)
            || covered(start, end, pending)
            || register_and_protect(fd, start, end)
        {
            push_range(tracked, &mut n, start, end);
        }
    });
    if !whole {
        NCLEAN.store(0, SeqCst);
        n = 0;
    }
    NTRACKED.store(n, SeqCst);
}

/// Scans the ranges tracked at the previous pause (see [`scan_and_register`]).
fn scan() {
    let pm = PAGEMAP.load(SeqCst);
    let buf = DIRTY.load(SeqCst);
    NCLEAN.store(0, SeqCst);
    NDIRTY.store(0, SeqCst);
    if pm < 0 || buf.is_null() {
        return;
    }
    // SAFETY: manager-only tables.
    let clean = unsafe { &mut *CLEAN.0.get() };
    // SAFETY: as above.
    let prev = unsafe { &(&*TRACKED.0.get())[..NTRACKED.load(SeqCst).min(MAX_TRACKED)] };
    let (mut nc, mut nd) = (0usize, 0usize);
    for &(a, b) in prev {
        if nd >= MAX_DIRTY {
            break;
        }
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: a,
            end: b,
            walk_end: 0,
            // SAFETY: within the MAX_DIRTY entries mapped at `buf`.
            vec: unsafe { buf.add(nd) } as u64,
            vec_len: (MAX_DIRTY - nd) as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        };
        let r = ioctl(pm, PAGEMAP_SCAN, &mut arg as *mut PmScanArg as *mut u8);
        if r < 0 {
            // Partly unregistered (mremap, a new mapping in its place): saved in full,
            // registered again below.
            continue;
        }
        let room = MAX_DIRTY - nd;
        nd += r as usize;
        // The walk stops early only when the result buffer is full. (`walk_end` is no
        // guide: after an internal buffer flush the kernel can leave it short of the
        // end of a walk that did complete.)
        if r as usize >= room {
            continue;
        }
        clean[nc] = (a, b);
        nc += 1;
    }
    NCLEAN.store(nc, SeqCst);
    NDIRTY.store(nd, SeqCst);
}

/// The agent's own scratch mappings (never tracked; their contents are not needed after
/// a restore, so images do not hold them). `(0, 0)` for one not mapped yet.
pub fn own_ranges() -> [(u64, u64); 2] {
    let d = DIRTY.load(SeqCst) as u64;
    let m = MAPS.load(SeqCst) as u64;
    let range = |a: u64, len: usize| if a == 0 { (0, 0) } else { (a, a + len as u64) };
    [
        range(d, MAX_DIRTY * std::mem::size_of::<PageRegion>()),
        range(m, MAPS_LEN),
    ]
}

/// The result of the last [`scan`]: clean ranges and written ranges within them, both
/// sorted. Valid in the writer child (its copy of our memory).
pub fn last_scan() -> (&'static [(u64, u64)], &'static [PageRegion]) {
    // SAFETY: manager-only tables; the child reads its own copy.
    let clean = unsafe { &(&*CLEAN.0.get())[..NCLEAN.load(SeqCst).min(MAX_TRACKED)] };
    let buf = DIRTY.load(SeqCst);
    let dirty = if buf.is_null() {
        &[][..]
    } else {
        // SAFETY: `scan` filled NDIRTY entries of the mapping.
        unsafe { std::slice::from_raw_parts(buf, NDIRTY.load(SeqCst).min(MAX_DIRTY)) }
    };
    (clean, dirty)
}
