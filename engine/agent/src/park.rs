//! Parking threads: the checkpoint signal handler, the mini-context save, and the
//! per-thread kernel state each thread records about itself. Everything here runs in a
//! signal handler: atomics and raw system calls only.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicIsize, AtomicU32, AtomicUsize, Ordering::SeqCst};

use torpor_engine::records::{MiniCtx, ThreadRec};

use crate::sys;

/// Most threads a checkpointed process may have.
pub const MAX_THREADS: usize = 1024;
/// glibc's rseq signature on x86_64.
const RSEQ_SIG: u32 = 0x5305_3053;

/// Per-thread records, indexed by slot.
pub struct Slots(UnsafeCell<[ThreadRec; MAX_THREADS]>);
// SAFETY: each slot is written only by the thread that claimed it with `SLOT.fetch_add`,
// and read by the manager/writer only after that thread has signalled PARKED.
unsafe impl Sync for Slots {}

pub static THREADS: Slots = Slots(UnsafeCell::new(
    [ThreadRec {
        tid: 0,
        is_main: 0,
        ctx: MiniCtx {
            rbx: 0,
            rbp: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            rsp: 0,
            rip: 0,
        },
        fs_base: 0,
        gs_base: 0,
        clear_tid: 0,
        robust_head: 0,
        robust_len: 0,
        rseq_addr: 0,
        rseq_len: 0,
        rseq_sig: 0,
        name: [0; 16],
    }; MAX_THREADS],
));

/// Next free slot.
pub static SLOT: AtomicUsize = AtomicUsize::new(0);
/// Threads parked in this round.
pub static PARKED: AtomicU32 = AtomicU32::new(0);
/// Threads that came back to life in a restored process.
pub static RESUMED: AtomicU32 = AtomicU32::new(0);
/// Round number; threads wait until RELEASE == GEN.
pub static GEN: AtomicU32 = AtomicU32::new(0);
pub static RELEASE: AtomicU32 = AtomicU32::new(0);
/// glibc's `__rseq_offset` (0 = unknown).
pub static RSEQ_OFFSET: AtomicIsize = AtomicIsize::new(0);

impl Slots {
    /// Raw pointer to slot `i`.
    pub fn slot(&self, i: usize) -> *mut ThreadRec {
        // SAFETY: i < MAX_THREADS is checked by callers; the pointer stays in bounds.
        unsafe { (self.0.get() as *mut ThreadRec).add(i) }
    }

    /// The first `n` records. Only valid once their threads are parked.
    ///
    /// # Safety
    /// No thread may be writing any of the first `n` slots.
    pub unsafe fn first(&self, n: usize) -> &[ThreadRec] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.0.get() as *const ThreadRec, n) }
    }
}

/// Saves callee-saved registers, the caller's stack pointer and the return address into
/// `*c` and returns 0. The restorer later jumps to the saved address with eax = 1, so this
/// "returns twice". Callers must not rely on locals written after the first return.
#[unsafe(naked)]
pub extern "C" fn ctx_save(c: *mut MiniCtx) -> u64 {
    std::arch::naked_asm!(
        "mov [rdi], rbx",
        "mov [rdi + 8], rbp",
        "mov [rdi + 16], r12",
        "mov [rdi + 24], r13",
        "mov [rdi + 32], r14",
        "mov [rdi + 40], r15",
        "lea rax, [rsp + 8]",
        "mov [rdi + 48], rax",
        "mov rax, [rsp]",
        "mov [rdi + 56], rax",
        "xor eax, eax",
        "ret",
    )
}

/// Records the calling thread's kernel-side state into `*r`.
///
/// # Safety
/// `r` must point to a slot owned by the calling thread.
pub unsafe fn fill_thread(r: *mut ThreadRec) {
    // SAFETY: the slot is ours (caller contract); all syscalls write into it only.
    unsafe {
        let r = &mut *r;
        r.tid = sys::gettid();
        r.is_main = (r.tid == sys::getpid()) as i32;
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut r.fs_base as *mut u64);
        libc::syscall(libc::SYS_arch_prctl, 0x1004, &mut r.gs_base as *mut u64);
        let mut ta: u64 = 0;
        libc::prctl(libc::PR_GET_TID_ADDRESS, &mut ta as *mut u64);
        r.clear_tid = ta;
        let mut head: u64 = 0;
        let mut len: usize = 0;
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut u64,
            &mut len as *mut usize,
        );
        r.robust_head = head;
        r.robust_len = len as u64;
        libc::prctl(libc::PR_GET_NAME, r.name.as_mut_ptr());
        r.rseq_addr = 0;
        r.rseq_len = 0;
        r.rseq_sig = 0;
        let off = RSEQ_OFFSET.load(SeqCst);
        if off != 0 && r.fs_base != 0 {
            let addr = (r.fs_base as i64 + off as i64) as u64;
            // Probe: EBUSY means this exact area is registered with these parameters.
            let rc = libc::syscall(libc::SYS_rseq, addr, 32u32, 0, RSEQ_SIG);
            if rc == -1 && sys::errno() == libc::EBUSY {
                r.rseq_addr = addr;
                r.rseq_len = 32;
                r.rseq_sig = RSEQ_SIG;
            } else if rc == 0 {
                // It was not registered: undo the accidental registration.
                libc::syscall(libc::SYS_rseq, addr, 32u32, 1, RSEQ_SIG);
            }
        }
    }
}

/// The checkpoint signal handler: record, save the mini-context, park until released.
pub extern "C" fn on_park(_sig: i32, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let saved_errno = sys::errno();
    let i = SLOT.fetch_add(1, SeqCst);
    if i >= MAX_THREADS {
        // Too many threads: the manager notices the overflow and aborts the round.
        PARKED.fetch_add(1, SeqCst);
        sys::futex_wake(&PARKED, 1);
    } else {
        let r = THREADS.slot(i);
        // SAFETY: slot i was claimed by this thread above.
        unsafe { fill_thread(r) };
        // SAFETY: r points to our slot; ctx is a plain struct field.
        if ctx_save(unsafe { std::ptr::addr_of_mut!((*r).ctx) }) == 0 {
            PARKED.fetch_add(1, SeqCst);
            sys::futex_wake(&PARKED, 1);
        } else {
            // Back to life in a restored process.
            RESUMED.fetch_add(1, SeqCst);
            sys::futex_wake(&RESUMED, 1);
        }
    }
    loop {
        let r = RELEASE.load(SeqCst);
        if r == GEN.load(SeqCst) {
            break;
        }
        sys::futex_wait(&RELEASE, r, 0);
    }
    sys::set_errno(saved_errno);
}
