//! Stage 2, system interface: raw system calls and their numbers, fatal-error reporting,
//! and the memory functions the compiler expects (there is no libc).

use core::arch::asm;

#[inline(always)]
pub unsafe fn sc(n: u64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> i64 {
    let ret: i64;
    // SAFETY: raw system call; the caller passes valid arguments for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as i64 => ret, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret
}

pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
    pub const CLOSE: u64 = 3;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const MADVISE: u64 = 28;
    pub const EXIT: u64 = 60;
    pub const SCHED_YIELD: u64 = 24;
    pub const TKILL: u64 = 200;
    pub const FUTEX: u64 = 202;
    pub const RT_SIGACTION: u64 = 13;
    pub const RT_SIGPROCMASK: u64 = 14;
    pub const PREAD: u64 = 17;
    pub const MREMAP: u64 = 25;
    pub const EXIT_GROUP: u64 = 231;
    pub const FCNTL: u64 = 72;
    pub const FTRUNCATE: u64 = 77;
    pub const LSEEK: u64 = 8;
    pub const PRCTL: u64 = 157;
    pub const ARCH_PRCTL: u64 = 158;
    pub const GETTID: u64 = 186;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const SET_ROBUST_LIST: u64 = 273;
    pub const MEMFD_CREATE: u64 = 319;
    pub const RSEQ: u64 = 334;
    pub const SETITIMER: u64 = 38;
    pub const CAPSET: u64 = 126;
    pub const TIMER_CREATE: u64 = 222;
    pub const TIMER_SETTIME: u64 = 223;
}

pub fn write2(s: &[u8]) {
    // SAFETY: writes a valid buffer to stderr.
    unsafe { sc(nr::WRITE, 2, s.as_ptr() as u64, s.len() as u64, 0, 0, 0) };
}

fn hex(mut v: u64, out: &mut [u8; 18]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    i -= 1;
    out[i] = b'x';
    i -= 1;
    out[i] = b'0';
    &out[i..]
}

pub fn die(what: &[u8], v: i64) -> ! {
    let mut b = [0u8; 18];
    write2(b"torpor-restore: fatal: ");
    write2(what);
    write2(b" (");
    write2(hex(v as u64, &mut b));
    write2(b")\n");
    // SAFETY: ends the process.
    unsafe { sc(nr::EXIT_GROUP, 127, 0, 0, 0, 0, 0) };
    loop {}
}

pub fn check(what: &[u8], r: i64) -> i64 {
    if r < 0 && r > -4096 {
        die(what, r);
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for n bytes.
    unsafe { asm!("rep movsb", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _, options(nostack)) };
    d
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) || (d as usize) >= (s as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when the destination is below the source or
        // the ranges do not overlap.
        unsafe { memcpy(d, s, n) }
    } else {
        let mut i = n;
        while i > 0 {
            i -= 1;
            // SAFETY: i < n; ranges valid per caller.
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
        d
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees d is valid for n bytes.
    unsafe { asm!("rep stosb", inout("rcx") n => _, inout("rdi") d => _, in("al") c as u8, options(nostack)) };
    d
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n; ranges valid per caller.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}
