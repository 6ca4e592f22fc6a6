//! Stage 2, copying raw chunks into place with `UFFDIO_COPY`: the kernel allocates each
//! page and fills it from the image's page cache in one step, instead of clearing a
//! fresh page (`MADV_POPULATE_WRITE`) and then copying into it (`pread`). On the 2-core
//! VMs measured this costs ~30% less CPU for 4 GiB of raw pages (docs/design ADR 0010).
//!
//! Private anonymous regions with saved pages are registered (missing mode) for the fill.
//! Nothing but `UFFDIO_COPY` may touch them while registered: a page fault there has no
//! handler (`UFFD_FEATURE_SIGBUS` makes it a SIGBUS rather than a hang). So compressed
//! chunks are decoded aside and copied in the same way. Every failure falls back to the plain path for the rest of
//! the extent, after unregistering it: no userfaultfd (an old kernel, a policy), a source
//! image that cannot be mapped, a region that could not be registered.

use crate::plan::*;
use crate::sys::{nr, sc};
use crate::{hdr, table};

const USERFAULTFD: u64 = 323;
const IOCTL: u64 = 16;
const O_CLOEXEC: u64 = 0o2000000;
const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFD_API: u64 = 0xaa;
/// A page fault in a registered range raises SIGBUS instead of waiting for a handler.
const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// _IOWR(0xAA, 0x3F, struct uffdio_api)
const UFFDIO_API: u64 = 0xc018_aa3f;
/// _IOWR(0xAA, 0x00, struct uffdio_register)
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// _IOR(0xAA, 0x01, struct uffdio_range)
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
/// _IOWR(0xAA, 0x03, struct uffdio_copy)
const UFFDIO_COPY: u64 = 0xc028_aa03;
const MADV_POPULATE_READ: u64 = 22;
const EAGAIN: i64 = -11;
const ENOENT: i64 = -2;
const PROT_READ: u64 = 1;
const MAP_SHARED: u64 = 1;

/// The userfaultfd, -1 when copying is off.
static mut UFFD: i64 = -1;
/// Each image file of the chain mapped read-only: (fd, address, length).
static mut SOURCES: [(i64, u64, u64); MAX_CHAIN + 1] = [(-1, 0, 0); MAX_CHAIN + 1];

fn uffd() -> i64 {
    // SAFETY: written only by `setup`/`teardown`, which run while no fill thread exists.
    unsafe { UFFD }
}

fn sources() -> &'static [(i64, u64, u64); MAX_CHAIN + 1] {
    // SAFETY: as for `uffd`.
    unsafe { &*core::ptr::addr_of!(SOURCES) }
}

/// Regions copied into: private anonymous ones with something to fill.
fn copied(r: &PlanRegion) -> bool {
    r.kind == KIND_ANON && r.nextents > 0
}

/// Opens the userfaultfd, maps the image files and registers the regions to copy into.
/// Leaves copying off when any part of that is unavailable.
pub fn setup() {
    let h = hdr();
    // SAFETY: userfaultfd(2) for faults from user mode only (all an unprivileged process
    // may ask for; we take no faults at all), then the API handshake on a local struct.
    let fd = unsafe {
        let fd = sc(USERFAULTFD, O_CLOEXEC | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0);
        if fd < 0 {
            return;
        }
        let mut api = [UFFD_API, UFFD_FEATURE_SIGBUS, 0u64];
        if sc(IOCTL, fd as u64, UFFDIO_API, api.as_mut_ptr() as u64, 0, 0, 0) != 0 {
            sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0);
            return;
        }
        fd
    };
    let mut n = 0;
    let fds = core::iter::once(h.image_fd).chain(h.chain_fds.iter().copied().filter(|&f| f >= 0));
    for f in fds {
        // SAFETY: sizes one of the image files stage 1 opened for us and maps it
        // read-only where the kernel finds room (the regions are all mapped already).
        let (len, at) = unsafe {
            let len = sc(nr::LSEEK, f as u64, 0, 2, 0, 0, 0);
            if len <= 0 {
                continue;
            }
            (len as u64, sc(nr::MMAP, 0, len as u64, PROT_READ, MAP_SHARED, f as u64, 0))
        };
        if at < 0 && at > -4096 {
            continue;
        }
        // SAFETY: no fill thread exists yet.
        unsafe { (*core::ptr::addr_of_mut!(SOURCES))[n] = (f, at as u64, len) };
        n += 1;
    }
    let regs: &[PlanRegion] = table(h.regions_off, h.nregions);
    for r in regs.iter().filter(|r| copied(r)) {
        let mut reg = [r.start, r.end - r.start, UFFDIO_REGISTER_MODE_MISSING, 0u64];
        // SAFETY: registers one of our own freshly mapped, still empty regions; a
        // failure leaves it unregistered and its extents take the plain path.
        unsafe { sc(IOCTL, fd as u64, UFFDIO_REGISTER, reg.as_mut_ptr() as u64, 0, 0, 0) };
    }
    // SAFETY: no fill thread exists yet.
    unsafe { UFFD = fd };
}

fn unregister(start: u64, len: u64) {
    let range = [start, len];
    // SAFETY: drops the registration of part of our own region (pages stay).
    unsafe { sc(IOCTL, uffd() as u64, UFFDIO_UNREGISTER, range.as_ptr() as u64, 0, 0, 0) };
}

/// Unregisters every region, closes the userfaultfd and unmaps the image files. Runs
/// after the fill threads are gone.
pub fn teardown() {
    let fd = uffd();
    if fd < 0 {
        return;
    }
    let h = hdr();
    let regs: &[PlanRegion] = table(h.regions_off, h.nregions);
    for r in regs.iter().filter(|r| copied(r)) {
        unregister(r.start, r.end - r.start);
    }
    for &(f, at, len) in sources() {
        if f >= 0 {
            // SAFETY: unmaps our own mapping of an image file.
            unsafe { sc(nr::MUNMAP, at, len, 0, 0, 0, 0) };
        }
    }
    // SAFETY: closes our userfaultfd; no fill thread uses it any more.
    unsafe {
        sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0);
        UFFD = -1;
        *core::ptr::addr_of_mut!(SOURCES) = [(-1, 0, 0); MAX_CHAIN + 1];
    }
}

/// Copying is on (set up, before the fill threads start and until they are gone).
pub fn on() -> bool {
    uffd() >= 0
}

/// Copies raw extent `e` into place from the mapped image. Returns how many of its bytes
/// are in place; the caller fills the rest the plain way.
pub fn copy_raw(e: &PlanExtent) -> u64 {
    if !on() {
        return 0;
    }
    let Some(&(_, base, flen)) = sources().iter().find(|s| s.0 == e.fd) else {
        return 0;
    };
    if e.file_off.checked_add(e.len).is_none_or(|end| end > flen) {
        return 0;
    }
    let src = base + e.file_off;
    // Map the source pages in one call rather than a fault per 16 pages during the copy.
    // SAFETY: advice on our own read-only mapping of the image; failure means faults.
    unsafe { sc(nr::MADVISE, src & !4095, e.len + (src & 4095), MADV_POPULATE_READ, 0, 0, 0) };
    copy_from(e.vaddr, src, e.len)
}

/// Copies `len` bytes from `src` (our own readable memory) to fresh pages at `dst` with
/// `UFFDIO_COPY`. Returns how many bytes are in place; when the copy stopped inside a
/// registered region, the rest of the range is unregistered so that the caller can fill
/// it the plain way.
pub fn copy_from(dst: u64, src: u64, len: u64) -> u64 {
    let fd = uffd();
    if fd < 0 || dst % 4096 != 0 || len % 4096 != 0 {
        return 0;
    }
    let (mut done, mut stalls) = (0u64, 0);
    while done < len {
        // struct uffdio_copy: dst, src, len, mode, copy (bytes copied or -errno).
        let mut c = [dst + done, src + done, len - done, 0u64, 0u64];
        // SAFETY: dst lies in one of our regions, src in our own readable memory, both
        // for len bytes.
        let r = unsafe { sc(IOCTL, fd as u64, UFFDIO_COPY, c.as_mut_ptr() as u64, 0, 0, 0) };
        let n = c[4] as i64;
        if r == 0 {
            return len;
        }
        if n > 0 {
            done += n as u64;
            stalls = 0;
            continue;
        }
        if r == EAGAIN && stalls < 1000 {
            stalls += 1;
            continue;
        }
        if r != ENOENT {
            // Registered, but the copy failed: the plain path needs the range back.
            unregister(dst + done, len - done);
        }
        break;
    }
    done
}
