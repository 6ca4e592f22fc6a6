//! The agent's own global allocator: mmap-backed, never calls glibc's malloc, so the agent
//! can allocate while application threads that might hold malloc's locks are parked, and
//! in the forked writer child. In the child it switches to bump allocation from fresh,
//! separately tracked regions so that the image keeps the parent's allocator state intact.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const NCLASS: usize = 13; // 16 B .. 64 KiB
const MAX_SMALL: usize = 16 << (NCLASS - 1);
const ARENA: usize = 1 << 20;
const CHILD_ARENA: usize = 8 << 20;
/// Most child regions recorded (beyond that, allocations go unrecorded and are still
/// skipped because the writer checks the flag on each region).
pub const MAX_CHILD_REGIONS: usize = 256;

struct State {
    free: [usize; NCLASS],
    cur: usize,
    end: usize,
}

static LOCK: AtomicBool = AtomicBool::new(false);
static mut STATE: State = State {
    free: [0; NCLASS],
    cur: 0,
    end: 0,
};
static CHILD: AtomicBool = AtomicBool::new(false);
static CHILD_CUR: AtomicUsize = AtomicUsize::new(0);
static CHILD_END: AtomicUsize = AtomicUsize::new(0);
static CHILD_NREG: AtomicUsize = AtomicUsize::new(0);
static mut CHILD_REGS: [(usize, usize); MAX_CHILD_REGIONS] = [(0, 0); MAX_CHILD_REGIONS];

/// The allocator.
pub struct AgentAlloc;

/// A fresh private anonymous read-write mapping of `len` bytes, or null (no allocation,
/// no lock: safe in the pause and after fork).
pub(crate) fn map(len: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p as *mut u8
    }
}

fn class_of(size: usize) -> usize {
    let s = size.max(16).next_power_of_two();
    s.trailing_zeros() as usize - 4
}

fn lock() {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

fn unlock() {
    LOCK.store(false, Ordering::Release);
}

/// `fork` prepare handler: holds the lock so that the child never inherits it taken.
pub fn fork_prepare() {
    lock();
}

/// `fork` parent and child handlers: releases the lock taken by [`fork_prepare`].
pub fn fork_done() {
    unlock();
}

/// Switches this (forked, single-threaded) process to child mode.
pub fn enter_child_mode() {
    CHILD.store(true, Ordering::SeqCst);
    CHILD_CUR.store(0, Ordering::SeqCst);
    CHILD_END.store(0, Ordering::SeqCst);
    CHILD_NREG.store(0, Ordering::SeqCst);
}

/// True if `[start, end)` lies inside a region the writer child allocated.
pub fn is_child_region(start: u64, end: u64) -> bool {
    let n = CHILD_NREG.load(Ordering::SeqCst).min(MAX_CHILD_REGIONS);
    // SAFETY: only the single-threaded child writes CHILD_REGS; we read entries < n.
    let regs = unsafe { &*std::ptr::addr_of!(CHILD_REGS) };
    regs[..n]
        .iter()
        .any(|&(s, e)| start >= s as u64 && end <= e as u64)
}

fn child_alloc(layout: Layout) -> *mut u8 {
    let align = layout.align().max(16);
    let size = layout.size();
    let mut cur = (CHILD_CUR.load(Ordering::Relaxed) + align - 1) & !(align - 1);
    if cur == 0 || cur + size > CHILD_END.load(Ordering::Relaxed) {
        let len = (size + align).max(CHILD_ARENA).next_multiple_of(4096);
        let p = map(len);
        if p.is_null() {
            return p;
        }
        // SAFETY: p..p+len was just mapped by us. DONTDUMP gives the area distinct VMA
        // flags so the kernel never merges it with program memory.
        unsafe { libc::madvise(p as *mut libc::c_void, len, libc::MADV_DONTDUMP) };
        let n = CHILD_NREG.load(Ordering::Relaxed);
        if n < MAX_CHILD_REGIONS {
            // SAFETY: single-threaded child; index checked.
            unsafe { (*std::ptr::addr_of_mut!(CHILD_REGS))[n] = (p as usize, p as usize + len) };
            CHILD_NREG.store(n + 1, Ordering::SeqCst);
        }
        cur = (p as usize + align - 1) & !(align - 1);
        CHILD_END.store(p as usize + len, Ordering::Relaxed);
    }
    CHILD_CUR.store(cur + size, Ordering::Relaxed);
    cur as *mut u8
}

// SAFETY: blocks handed out are disjoint, at least `layout.size()` bytes and aligned to
// `layout.align()` (power-of-two classes carved at multiples of their size; large blocks
// are page aligned; alignments above a page are refused with null).
unsafe impl GlobalAlloc for AgentAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > 4096 {
            return std::ptr::null_mut();
        }
        if CHILD.load(Ordering::Relaxed) {
            return child_alloc(layout);
        }
        let size = layout.size().max(layout.align());
        if size > MAX_SMALL {
            return map(size.next_multiple_of(4096));
        }
        let c = class_of(size);
        let bsize = 16usize << c;
        lock();
        // SAFETY: STATE is only touched with LOCK held.
        let st = unsafe { &mut *std::ptr::addr_of_mut!(STATE) };
        let p = if st.free[c] != 0 {
            let p = st.free[c];
            // SAFETY: free blocks store the next pointer in their first word.
            st.free[c] = unsafe { *(p as *const usize) };
            p as *mut u8
        } else {
            let mut cur = (st.cur + bsize - 1) & !(bsize - 1);
            if st.cur == 0 || cur + bsize > st.end {
                let a = map(ARENA);
                if a.is_null() {
                    unlock();
                    return a;
                }
                st.cur = a as usize;
                st.end = a as usize + ARENA;
                cur = st.cur;
            }
            st.cur = cur + bsize;
            cur as *mut u8
        };
        unlock();
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if CHILD.load(Ordering::Relaxed) {
            return; // the child is short-lived; it never touches the parent's free lists
        }
        let size = layout.size().max(layout.align());
        if size > MAX_SMALL {
            // SAFETY: large blocks are whole mappings of this rounded size.
            unsafe { libc::munmap(ptr as *mut libc::c_void, size.next_multiple_of(4096)) };
            return;
        }
        let c = class_of(size);
        lock();
        // SAFETY: LOCK held; the block is at least 16 bytes and ours to link.
        unsafe {
            let st = &mut *std::ptr::addr_of_mut!(STATE);
            *(ptr as *mut usize) = st.free[c];
            st.free[c] = ptr as usize;
        }
        unlock();
    }
}
