//! Capture, compression helper: one extra thread in the writer child that LZ4-encodes
//! every other chunk, and scans half of each window of pages for zero and one-word pages
//! (see `PageSink::push_run`), so that both use two cores while one thread writes.
//!
//! The writer child is a raw `clone` of a process whose parked threads may hold glibc's
//! locks, and the agent's child allocator is not thread-safe. So the helper is created
//! with a raw `clone(CLONE_VM|CLONE_THREAD…)` on a stack mapped with `mmap`, shares the
//! writer's TLS pointer (it touches no thread-local), never allocates (its
//! [`Compressor`] and every buffer exist before it starts) and talks to the writer through
//! one atomic word and futexes. It starts after the writer has read `/proc/self/maps`, so
//! its stack is never part of the image.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use torpor_image::container::Compressor;

use crate::rawclone::raw_clone;

const IDLE: u32 = 0;
const WORK: u32 = 1;
const DONE: u32 = 2;
const EXIT: u32 = 3;
const SCAN: u32 = 4;
const STACK_LEN: usize = 1 << 20;

/// State shared with the helper thread (lives at a fixed heap address).
struct Shared {
    state: AtomicU32,
    /// The helper's tid while it runs; the kernel clears it and wakes waiters at exit.
    tid: AtomicI32,
    data: *const u8,
    len: usize,
    /// Result of the last job: (pointer into `lz4`'s buffer, length), or null.
    out: *const u8,
    out_len: usize,
    /// Scan jobs: one entry per page of `data`, see [`scan_pages`].
    words: *mut u64,
    lz4: Compressor,
}

pub(super) struct Helper {
    shared: *mut Shared,
    stack: *mut libc::c_void,
}

fn futex_wait(word: *const u32, val: u32) {
    // SAFETY: FUTEX_WAIT on a word of a live allocation; returns on change or wake.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            val,
            0usize,
            0usize,
            0u32,
        )
    };
}

fn futex_wake(word: *const u32) {
    // SAFETY: FUTEX_WAKE on a word of a live allocation.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        )
    };
}

extern "C" fn helper_main(sh: *mut Shared) -> ! {
    loop {
        // SAFETY: `sh` outlives the helper (freed only after it exited, see `stop`).
        let st = unsafe { &(*sh).state };
        match st.load(Ordering::Acquire) {
            SCAN => {
                // SAFETY: the writer set data/len to readable pages and `words` to one
                // entry per page, and touches neither until it sees DONE.
                unsafe {
                    let s = &mut *sh;
                    let data = std::slice::from_raw_parts(s.data, s.len);
                    let words = std::slice::from_raw_parts_mut(s.words, s.len / PAGE);
                    scan_pages(data, words);
                }
                st.store(DONE, Ordering::Release);
                futex_wake(st.as_ptr());
            }
            WORK => {
                // SAFETY: the writer set data/len to a readable page run and does not
                // touch `lz4`/`out` until it sees DONE.
                unsafe {
                    let s = &mut *sh;
                    let data = std::slice::from_raw_parts(s.data, s.len);
                    let (p, n) = match s.lz4.encode(data) {
                        Some(c) => (c.as_ptr(), c.len()),
                        None => (std::ptr::null(), 0),
                    };
                    s.out = p;
                    s.out_len = n;
                }
                st.store(DONE, Ordering::Release);
                futex_wake(st.as_ptr());
            }
            EXIT => {
                // SAFETY: ends this thread only.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
            }
            v => futex_wait(st.as_ptr(), v),
        }
    }
}

impl Helper {
    /// Starts the helper thread, or returns `None` (the writer then compresses alone).
    pub(super) fn start() -> Option<Helper> {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return None;
        }
        let shared = Box::into_raw(Box::new(Shared {
            state: AtomicU32::new(IDLE),
            tid: AtomicI32::new(0),
            data: std::ptr::null(),
            len: 0,
            out: std::ptr::null(),
            out_len: 0,
            words: std::ptr::null_mut(),
            lz4: Compressor::new(),
        }));
        // SAFETY: a fresh private mapping for the helper's stack.
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return None;
        }
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        // SAFETY: `shared` is a live allocation; `tid` is its futex word.
        let tid = unsafe { (*shared).tid.as_ptr() } as u64;
        // SAFETY: the new thread runs `helper_main(shared)` on its own stack and only
        // uses `shared` (see the module comment).
        let r = unsafe {
            raw_clone(
                flags,
                stack as u64 + STACK_LEN as u64,
                tid,
                tid,
                0,
                helper_main as *const () as u64,
                shared as u64,
            )
        };
        if r < 0 {
            // SAFETY: our own mapping, unused.
            unsafe { libc::munmap(stack, STACK_LEN) };
            return None;
        }
        Some(Helper { shared, stack })
    }

    /// Hands `data` (which must stay readable until `wait`) to the helper.
    pub(super) fn submit(&mut self, data: &[u8]) {
        // SAFETY: the helper is IDLE or DONE, so it does not read these fields now.
        unsafe {
            (*self.shared).data = data.as_ptr();
            (*self.shared).len = data.len();
            (*self.shared).state.store(WORK, Ordering::Release);
            futex_wake((*self.shared).state.as_ptr());
        }
    }

    /// Hands a scan of `data` (whole pages, which must stay readable until `wait`) to the
    /// helper, one result per page into `words` (untouched by the caller until `wait`).
    pub(super) fn submit_scan(&mut self, data: &[u8], words: &mut [u64]) {
        debug_assert_eq!(data.len() / PAGE, words.len());
        // SAFETY: the helper is IDLE or DONE, so it does not read these fields now.
        unsafe {
            (*self.shared).data = data.as_ptr();
            (*self.shared).len = words.len() * PAGE;
            (*self.shared).words = words.as_mut_ptr();
            (*self.shared).state.store(SCAN, Ordering::Release);
            futex_wake((*self.shared).state.as_ptr());
        }
    }

    /// Waits for the job handed over by `submit` (or `submit_scan`); returns its LZ4
    /// block, if any. The slice is valid until the next `submit`.
    pub(super) fn wait(&mut self) -> Option<&[u8]> {
        // SAFETY: `shared` is live; after DONE the helper does not touch out/lz4.
        unsafe {
            let st = &(*self.shared).state;
            loop {
                let v = st.load(Ordering::Acquire);
                if v == DONE {
                    break;
                }
                futex_wait(st.as_ptr(), v);
            }
            st.store(IDLE, Ordering::Relaxed);
            let s = &*self.shared;
            (!s.out.is_null()).then(|| std::slice::from_raw_parts(s.out, s.out_len))
        }
    }
}

const PAGE: usize = crate::lz4::PAGE;
/// [`scan_pages`]' entry for a page that does not repeat one 8-byte word. A page that
/// repeats exactly this word is reported the same way (and simply stored like any other).
pub(super) const NOT_WORD: u64 = 0x9b7e_5a3c_d1f0_4e26;

/// Asks the CPU to start loading the cache lines at the start of `p`'s page.
#[inline(always)]
pub(super) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..16 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint; it never faults, even on an unmapped address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line * 64) as *const i8) };
    }
}

/// Classifies each page of `data`: `words[i]` is the word page `i` repeats (0 for an
/// all-zero page), or [`NOT_WORD`].
pub(super) fn scan_pages(data: &[u8], words: &mut [u64]) {
    for (page, w) in data.chunks_exact(PAGE).zip(words.iter_mut()) {
        // Prefetchers stop at page boundaries: ask for the start of the page after next.
        prefetch(page.as_ptr().wrapping_add(2 * PAGE));
        *w = match crate::lz4::repeated_word(page) {
            Some(x) => x,
            None => NOT_WORD,
        };
    }
}

impl Drop for Helper {
    /// Stops the helper and waits until it is gone before freeing its stack.
    fn drop(&mut self) {
        // SAFETY: `shared` is live until freed below, after the helper exited (the
        // kernel clears `tid` only once the thread no longer runs on its stack).
        unsafe {
            let sh = &*self.shared;
            sh.state.store(EXIT, Ordering::Release);
            futex_wake(sh.state.as_ptr());
            loop {
                let t = sh.tid.load(Ordering::Acquire);
                if t == 0 {
                    break;
                }
                futex_wait(sh.tid.as_ptr() as *const u32, t as u32);
            }
            libc::munmap(self.stack, STACK_LEN);
            drop(Box::from_raw(self.shared));
        }
    }
}
