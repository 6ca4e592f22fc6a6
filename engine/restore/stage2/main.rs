//! Restore stage 2: a freestanding program (no libc, raw system calls) linked at a fixed
//! high address. It maps the plan that stage 1 prepared, throws away its own address
//! space except itself, moves the vdso to where the image expects it, recreates every
//! region, restores process-wide kernel state, then clones the threads and jumps each
//! one back into the checkpoint handler it was parked in.
//!
//! Built by `build.rs` with `rustc -C panic=abort` (see docs/design/0003-restorer.md).
//! Nothing here may allocate; every failure prints a message and exits 127.
#![no_std]
#![no_main]
#![allow(clippy::missing_safety_doc)]

#[path = "../../core/src/plan.rs"]
#[allow(dead_code)]
mod plan;

#[path = "../../core/src/lz4.rs"]
mod lz4;

use core::arch::{asm, naked_asm};
use plan::*;

const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
const MAP_PRIVATE: u64 = 2;
const MAP_SHARED: u64 = 1;
const MAP_ANON: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_NORESERVE: u64 = 0x4000;
const PROT_RW: u64 = 3;
const MADV_POPULATE_WRITE: u64 = 23;

#[repr(C, align(16))]
struct Stack([u8; 65536]);
static mut STACK: Stack = Stack([0; 65536]);
static mut MAPS: [u8; 65536] = [0; 65536];

unsafe extern "C" {
    static __executable_start: u8;
    static _end: u8;
}

#[inline(always)]
unsafe fn sc(n: u64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> i64 {
    let ret: i64;
    // SAFETY: raw system call; the caller passes valid arguments for syscall `n`.
    unsafe {
        asm!("syscall", inlateout("rax") n as i64 => ret, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret
}

mod nr {
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

fn write2(s: &[u8]) {
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

fn die(what: &[u8], v: i64) -> ! {
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

fn check(what: &[u8], r: i64) -> i64 {
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

/// libcore is precompiled with unwinding and references this symbol; with
/// `panic=abort` nothing ever calls it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    die(b"internal error", 0)
}

/// Entry point: switch to our static stack and call `rmain(original sp)`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "mov rdi, rsp",
        "lea rsp, [rip + {stack} + 65536]",
        "and rsp, -16",
        "call {main}",
        "ud2",
        stack = sym STACK,
        main = sym rmain,
    )
}

/// Jumps into a saved mini-context: callee-saved registers, rsp, and rip, with eax = 1.
#[unsafe(naked)]
unsafe extern "C" fn ctx_restore(ctx: u64) -> ! {
    naked_asm!(
        "mov rbx, [rdi]",
        "mov rbp, [rdi + 8]",
        "mov r12, [rdi + 16]",
        "mov r13, [rdi + 24]",
        "mov r14, [rdi + 32]",
        "mov r15, [rdi + 40]",
        "mov rsp, [rdi + 48]",
        "mov eax, 1",
        "jmp qword ptr [rdi + 56]",
    )
}

/// clone(flags, stack, ptid, ctid, tls) running `f(arg)` on the new stack in the child.
#[unsafe(naked)]
unsafe extern "C" fn rclone(flags: u64, stack: u64, ptid: u64, ctid: u64, tls: u64, f: u64, arg: u64) -> i64 {
    naked_asm!(
        "mov rax, [rsp + 8]",
        "sub rsi, 16",
        "mov [rsi + 8], rax",
        "mov [rsi], r9",
        "mov r10, rcx",
        "mov eax, 56",
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "pop rax",
        "pop rdi",
        "and rsp, -16",
        "call rax",
        "ud2",
        "2: ret",
    )
}

/// clone3(args, size) running `f(arg)` in the child (stack given in args).
#[unsafe(naked)]
unsafe extern "C" fn rclone3(args: u64, size: u64, f: u64, arg: u64) -> i64 {
    naked_asm!(
        "mov r8, rdx",
        "mov r9, rcx",
        "mov eax, 435",
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "mov rdi, r9",
        "and rsp, -16",
        "call r8",
        "ud2",
        "2: ret",
    )
}

#[repr(C)]
struct MmMap {
    v: [u64; 11],
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

static mut HDR: *const PlanHeader = core::ptr::null();

fn hdr() -> &'static PlanHeader {
    // SAFETY: set once in rmain before any use; points into the read-only plan mapping.
    unsafe { &*HDR }
}

fn table<T>(off: u64, n: u64) -> &'static [T] {
    // SAFETY: stage 1 wrote `n` records of T at `off` inside the plan mapping.
    unsafe { core::slice::from_raw_parts((PLAN_ADDR + off) as *const T, n as usize) }
}

fn cstr_at(off: u64) -> u64 {
    PLAN_ADDR + hdr().strings_off + off
}

fn parse_num(mut p: *const u8) -> u64 {
    let mut v = 0u64;
    // SAFETY: argv strings are NUL-terminated.
    unsafe {
        while *p >= b'0' && *p <= b'9' {
            v = v * 10 + (*p - b'0') as u64;
            p = p.add(1);
        }
    }
    v
}

fn parse_hex(s: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    while *i < s.len() {
        let c = s[*i];
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => break,
        };
        v = v * 16 + d as u64;
        *i += 1;
    }
    v
}

struct Special {
    vvar: (u64, u64),
    vclock: (u64, u64),
    vdso: (u64, u64),
}

/// Unmaps everything except ourselves, the plan and the kernel's special mappings.
fn clear_address_space(keep: [(u64, u64); 2]) -> Special {
    // SAFETY: reads /proc/self/maps into our static buffer (single thread).
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(MAPS) };
    let fd = check(b"open /proc/self/maps", unsafe {
        sc(nr::OPEN, c"/proc/self/maps".as_ptr() as u64, 0, 0, 0, 0, 0)
    });
    let mut n = 0usize;
    loop {
        // SAFETY: reads into the rest of the buffer.
        let r = unsafe { sc(nr::READ, fd as u64, buf.as_mut_ptr() as u64 + n as u64, (buf.len() - n - 1) as u64, 0, 0, 0) };
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    // SAFETY: closes our fd.
    unsafe { sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0) };
    let s = &buf[..n];
    let mut sp = Special { vvar: (0, 0), vclock: (0, 0), vdso: (0, 0) };
    let mut unmap: [(u64, u64); 64] = [(0, 0); 64];
    let mut nu = 0;
    let mut i = 0;
    while i < s.len() {
        let start = parse_hex(s, &mut i);
        i += 1;
        let end = parse_hex(s, &mut i);
        let ls = i;
        while i < s.len() && s[i] != b'\n' {
            i += 1;
        }
        let line = &s[ls..i];
        i += 1;
        let ends = |t: &[u8]| line.len() >= t.len() && &line[line.len() - t.len()..] == t;
        if ends(b"[vvar]") {
            sp.vvar = (start, end);
        } else if ends(b"[vvar_vclock]") {
            sp.vclock = (start, end);
        } else if ends(b"[vdso]") {
            sp.vdso = (start, end);
        } else if ends(b"[vsyscall]") || keep.iter().any(|&(l, h)| start >= l && end <= h) {
        } else if nu < unmap.len() {
            unmap[nu] = (start, end);
            nu += 1;
        }
    }
    for &(a, b) in &unmap[..nu] {
        // SAFETY: unmapping memory we no longer use (we run on the static stack).
        unsafe { sc(nr::MUNMAP, a, b - a, 0, 0, 0, 0) };
    }
    sp
}

fn mremap_to(from: u64, len: u64, to: u64) {
    if from == to || len == 0 {
        return;
    }
    // SAFETY: moves a special mapping to an address free of other mappings.
    let r = unsafe { sc(nr::MREMAP, from, len, len, 3 /* MAYMOVE|FIXED */, to, 0) };
    if r as u64 != to {
        die(b"mremap of vdso/vvar", r);
    }
}

fn move_vdso(sp: &Special) {
    let h = hdr();
    if h.vdso_len == 0 {
        return;
    }
    let parts = [sp.vvar, sp.vclock, sp.vdso];
    let base = parts.iter().filter(|p| p.1 > p.0).map(|p| p.0).min().unwrap_or(0);
    // Park everything first so that no move overlaps a mapping still in the way.
    for &(a, b) in &parts {
        if b > a {
            mremap_to(a, b - a, PARK_ADDR + (a - base));
        }
    }
    for &(a, b) in &parts {
        if b <= a {
            continue;
        }
        let to = if (a, b) == sp.vdso {
            h.vdso_start
        } else {
            h.vvar_start + (a - sp.vvar.0)
        };
        mremap_to(PARK_ADDR + (a - base), b - a, to);
    }
}

/// Reads `len` bytes at file offset `off` of the image into `to`.
fn pread_full(to: u64, len: u64, off: u64) {
    let fd = hdr().image_fd as u64;
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
    for e in &ext[from..to] {
        // Allocate the extent's pages in one call rather than one fault per page (a
        // fault costs ~1 us in a VM; failure, e.g. an older kernel, just means faults).
        // SAFETY: MADV_POPULATE_WRITE on part of a region mapped writable.
        unsafe { sc(nr::MADVISE, e.vaddr, e.len, MADV_POPULATE_WRITE, 0, 0, 0) };
        match e.codec {
            CODEC_RAW => pread_full(e.vaddr, e.len, e.file_off),
            CODEC_LZ4 => {
                if e.stored_len > h.scratch_len {
                    die(b"compressed chunk larger than the scratch buffer", e.vaddr as i64);
                }
                pread_full(scratch, e.stored_len, e.file_off);
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

const HUGE: u64 = 2 << 20;
const MADV_HUGEPAGE: u64 = 14;

/// Marks the 2 MiB-aligned stretches of region `r` that its saved extents cover entirely
/// `MADV_HUGEPAGE`, so that filling them allocates 2 MiB pages (one allocation and one
/// clear instead of 512 faults). Only stretches whose every page is saved: this never
/// makes the program use more memory than at the checkpoint. The mark splits the VMA
/// and stays (`hg` in smaps) for those stretches.
fn huge_pages_for(r: &PlanRegion) {
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
    fill_extents(from, to, SCRATCH_ADDR + hdr().scratch_len);
    // SAFETY: ends this thread only (exit, not exit_group).
    unsafe { sc(nr::EXIT, 0, 0, 0, 0, 0, 0) };
    loop {}
}

/// Fills every extent: the page copies and decoding are split by bytes between this
/// thread and one helper thread (restore is bound by page allocation and copying, and
/// the machines have two or more cores). The helper is gone when this returns.
fn fill_all() {
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
    let r = unsafe { rclone(flags, stack_top, tid_addr, tid_addr, 0, helper_entry as *const () as u64, ((k as u64) << 32) | n as u64) };
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

fn map_regions() {
    let h = hdr();
    let regs: &[PlanRegion] = table(h.regions_off, h.nregions);
    for r in regs {
        let len = r.end - r.start;
        let fill = r.nextents > 0;
        let prot = if fill { r.prot as u64 | PROT_RW } else { r.prot as u64 };
        // SAFETY: every mmap below targets the region's own range, now unmapped; files
        // are opened by the paths stage 1 verified.
        let got = unsafe {
            match r.kind {
                KIND_FILE_PRIVATE | KIND_FILE_SHARED => {
                    let shared = r.kind == KIND_FILE_SHARED;
                    let mode = if shared && r.prot & 2 != 0 { 2 } else { 0 };
                    let fd = sc(nr::OPEN, cstr_at(r.path_off), mode | 0o2000000, 0, 0, 0, 0);
                    if fd < 0 {
                        write2(b"torpor-restore: cannot open mapped file\n");
                        die(b"open", fd);
                    }
                    let fl = if shared { MAP_SHARED } else { MAP_PRIVATE };
                    let got = sc(nr::MMAP, r.start, len, prot, fl | MAP_FIXED_NOREPLACE, fd as u64, r.file_offset);
                    sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0);
                    got
                }
                KIND_SHARED_ANON => {
                    let fd = check(b"memfd_create", sc(nr::MEMFD_CREATE, c"torpor-shm".as_ptr() as u64, 1, 0, 0, 0, 0));
                    check(b"ftruncate", sc(nr::FTRUNCATE, fd as u64, len, 0, 0, 0, 0));
                    let got = sc(nr::MMAP, r.start, len, prot, MAP_SHARED | MAP_FIXED_NOREPLACE, fd as u64, 0);
                    sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0);
                    got
                }
                KIND_STACK => sc(nr::MMAP, r.start, len, prot, MAP_PRIVATE | MAP_ANON | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE, u64::MAX, 0),
                _ => {
                    let nores = if r.prot == 0 { MAP_NORESERVE } else { 0 };
                    sc(nr::MMAP, r.start, len, prot, MAP_PRIVATE | MAP_ANON | nores | MAP_FIXED_NOREPLACE, u64::MAX, 0)
                }
            }
        };
        if got as u64 != r.start {
            die(b"mapping a region", got);
        }
        if fill && h.thp != 0 && r.kind == KIND_ANON {
            huge_pages_for(r);
        }
    }
    fill_all();
    for r in regs {
        if r.nextents > 0 && r.prot as u64 | PROT_RW != r.prot as u64 {
            // SAFETY: final protection of our own mapping.
            check(b"mprotect", unsafe { sc(nr::MPROTECT, r.start, r.end - r.start, r.prot as u64, 0, 0, 0) });
        }
    }
}

/// Recreates interval timers and POSIX timers (with their original ids).
fn restore_timers() {
    let h = hdr();
    for (which, it) in h.itimers.iter().enumerate() {
        if it[1] != 0 {
            let tv = [it[0] / 1_000_000_000, (it[0] % 1_000_000_000) / 1000, it[1] / 1_000_000_000, (it[1] % 1_000_000_000) / 1000];
            // SAFETY: setitimer with a kernel struct itimerval.
            unsafe { sc(nr::SETITIMER, which as u64, tv.as_ptr() as u64, 0, 0, 0, 0) };
        }
    }
    let ts: &[PlanTimer] = table(h.timers_off, h.ntimers);
    if ts.is_empty() {
        return;
    }
    // SAFETY: PR_TIMER_CREATE_RESTORE_IDS(77) on: timer_create takes the id we pass.
    check(b"prctl(PR_TIMER_CREATE_RESTORE_IDS)", unsafe { sc(nr::PRCTL, 77, 1, 0, 0, 0, 0) });
    for t in ts {
        // struct sigevent: value, signo, notify, tid (padded to 64 bytes).
        let mut ev = [0u64; 8];
        ev[0] = t.value;
        ev[1] = (t.signo as u32 as u64) | ((t.notify as u32 as u64) << 32);
        ev[2] = t.tid as u32 as u64;
        let mut id: i32 = t.id as i32;
        // SAFETY: timer_create with valid pointers to our locals.
        check(b"timer_create", unsafe { sc(nr::TIMER_CREATE, t.clock as u64, ev.as_ptr() as u64, &mut id as *mut i32 as u64, 0, 0, 0) });
        let spec = [t.interval_ns / 1_000_000_000, t.interval_ns % 1_000_000_000, t.value_ns / 1_000_000_000, t.value_ns % 1_000_000_000];
        if t.value_ns != 0 {
            // SAFETY: timer_settime with a kernel struct itimerspec.
            unsafe { sc(nr::TIMER_SETTIME, id as u64, 0, spec.as_ptr() as u64, 0, 0, 0) };
        }
    }
    // SAFETY: turns id restoring off again.
    unsafe { sc(nr::PRCTL, 77, 0, 0, 0, 0, 0) };
}

/// Drops capabilities that stage 1 carried over for a non-root user (creds are per
/// thread, so every thread does this for itself).
fn drop_carried_caps() {
    if hdr().drop_caps == 0 {
        return;
    }
    let h: [u32; 2] = [0x2008_0522, 0];
    let d = [0u32; 6];
    // SAFETY: PR_CAP_AMBIENT(47) CLEAR_ALL(4), then capset to nothing.
    unsafe {
        sc(nr::PRCTL, 47, 4, 0, 0, 0, 0);
        sc(nr::CAPSET, h.as_ptr() as u64, d.as_ptr() as u64, 0, 0, 0, 0);
    }
}

fn thread_common(t: &PlanThread) {
    drop_carried_caps();
    // SAFETY: re-registers kernel per-thread state at addresses inside restored memory.
    unsafe {
        if t.robust_head != 0 {
            sc(nr::SET_ROBUST_LIST, t.robust_head, t.robust_len, 0, 0, 0, 0);
        }
        if t.rseq_addr != 0 {
            check(b"rseq registration", sc(nr::RSEQ, t.rseq_addr, t.rseq_len, 0, t.rseq_sig, 0, 0));
        }
        if t.gs_base != 0 {
            sc(nr::ARCH_PRCTL, 0x1001, t.gs_base, 0, 0, 0, 0);
        }
    }
}

extern "C" fn thread_entry(i: u64) -> ! {
    let h = hdr();
    let ts: &[PlanThread] = table(h.threads_off, h.nthreads);
    let t = &ts[i as usize];
    thread_common(t);
    // SAFETY: jumps into the thread's saved context inside restored memory.
    unsafe { ctx_restore(t.ctx_addr) }
}

unsafe extern "C" fn rmain(sp: *const u64) -> ! {
    // SAFETY: the kernel's initial stack: argc, argv[], NULL, envp...
    let (argc, argv) = unsafe { (*sp, sp.add(1) as *const *const u8) };
    if argc < 2 {
        die(b"usage: stage2 PLAN_FD", argc as i64);
    }
    // SAFETY: argv[1] exists (argc >= 2).
    let plan_fd = parse_num(unsafe { *argv.add(1) });
    let all: u64 = !0;
    // SAFETY: blocks every signal; threads inherit this and sigreturn restores their own.
    unsafe { sc(nr::RT_SIGPROCMASK, 0, &all as *const u64 as u64, 0, 8, 0, 0) };
    // SAFETY: sizes the plan file, then maps it read-only at its fixed address.
    let plan_len = check(b"plan size", unsafe { sc(nr::LSEEK, plan_fd, 0, 2, 0, 0, 0) }) as u64;
    let got = unsafe { sc(nr::MMAP, PLAN_ADDR, plan_len, 1, MAP_PRIVATE | MAP_FIXED_NOREPLACE, plan_fd, 0) };
    if got as u64 != PLAN_ADDR {
        die(b"mapping the plan", got);
    }
    // SAFETY: the plan starts with its header.
    unsafe { HDR = PLAN_ADDR as *const PlanHeader };
    let h = hdr();
    if h.magic != PLAN_MAGIC {
        die(b"bad plan", 0);
    }
    // Linker-provided symbols bounding this program.
    let (lo, hi) = (
        core::ptr::addr_of!(__executable_start) as u64 & !4095,
        (core::ptr::addr_of!(_end) as u64 + 4095) & !4095,
    );
    let plan_end = (PLAN_ADDR + plan_len + 4095) & !4095;
    let sp_special = clear_address_space([(lo, hi), (PLAN_ADDR, plan_end)]);
    move_vdso(&sp_special);
    if h.scratch_len > 0 {
        // SAFETY: fresh anonymous memory in the restorer's range for compressed chunks.
        let got = unsafe { sc(nr::MMAP, SCRATCH_ADDR, 2 * h.scratch_len, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED_NOREPLACE, u64::MAX, 0) };
        if got as u64 != SCRATCH_ADDR {
            die(b"mapping the scratch buffer", got);
        }
    }
    map_regions();
    if h.scratch_len > 0 {
        // SAFETY: our own scratch mapping, no longer used.
        unsafe { sc(nr::MUNMAP, SCRATCH_ADDR, 2 * h.scratch_len, 0, 0, 0, 0) };
    }
    for &fd in &h.close_fds {
        if fd > 2 {
            // SAFETY: closes an fd stage 1 opened only for mapping (tree shared memory).
            unsafe { sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0) };
        }
    }
    // Memory descriptor fields: brk, stack, argument and environment areas.
    let mm = MmMap { v: h.mm, auxv: 0, auxv_size: 0, exe_fd: u32::MAX };
    // SAFETY: PR_SET_MM(35), PR_SET_MM_MAP(14) with a valid struct.
    check(b"prctl(PR_SET_MM_MAP)", unsafe { sc(nr::PRCTL, 35, 14, &mm as *const MmMap as u64, core::mem::size_of::<MmMap>() as u64, 0, 0) });
    let sigs: &[PlanSig] = table(h.sigs_off, h.nsigs);
    for s in sigs {
        let act = [s.handler, s.flags, s.restorer, s.mask];
        // SAFETY: kernel sigaction layout; handlers live in restored memory.
        unsafe { sc(nr::RT_SIGACTION, s.signo, act.as_ptr() as u64, 0, 8, 0, 0) };
    }
    let nthreads = h.nthreads;
    let stacks_len = nthreads.max(1) * THREAD_STACK;
    // SAFETY: fresh anonymous memory for the clone stacks in the restorer's range.
    let got = unsafe { sc(nr::MMAP, STACKS_ADDR, stacks_len, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED_NOREPLACE, u64::MAX, 0) };
    if got as u64 != STACKS_ADDR {
        die(b"mapping thread stacks", got);
    }
    if h.restore_info != 0 {
        // SAFETY: the agent's RestoreInfo lies in restored, writable memory.
        unsafe {
            let ri = h.restore_info as *mut u64;
            *ri.add(1) = lo;
            *ri.add(2) = hi;
            *ri.add(3) = PLAN_ADDR;
            *ri.add(4) = plan_end;
            *ri.add(5) = STACKS_ADDR;
            *ri.add(6) = STACKS_ADDR + stacks_len;
            *ri.add(9) = h.same_pids;
            *ri.add(10) = h.attempt_plus1;
            *ri = 1;
        }
    }
    let fds: &[PlanFd] = table(h.fds_off, h.nfds);
    for f in fds {
        if f.cloexec != 0 {
            // SAFETY: F_SETFD on an fd stage 1 placed.
            unsafe { sc(nr::FCNTL, f.fd as u64, 2, 1, 0, 0, 0) };
        }
    }
    // SAFETY: our own fds, no longer needed (the plan stays mapped).
    unsafe {
        sc(nr::CLOSE, h.image_fd as u64, 0, 0, 0, 0, 0);
        sc(nr::CLOSE, plan_fd, 0, 0, 0, 0, 0);
    }
    let ts: &[PlanThread] = table(h.threads_off, h.nthreads);
    let flags: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 | 0x80000 | 0x100000 | 0x200000;
    // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
    let mut main_idx = usize::MAX;
    for (i, t) in ts.iter().enumerate() {
        if t.is_main != 0 {
            main_idx = i;
            continue;
        }
        let stack = STACKS_ADDR + i as u64 * THREAD_STACK;
        // SAFETY: clones a thread into restored memory with its own small stack.
        let r = unsafe {
            if h.same_pids != 0 {
                let want: i32 = t.tid as i32;
                let ca = CloneArgs {
                    flags,
                    pidfd: 0,
                    child_tid: t.clear_tid,
                    parent_tid: t.clear_tid,
                    exit_signal: 0,
                    stack,
                    stack_size: THREAD_STACK,
                    tls: t.fs_base,
                    set_tid: &want as *const i32 as u64,
                    set_tid_size: 1,
                    cgroup: 0,
                };
                rclone3(&ca as *const CloneArgs as u64, core::mem::size_of::<CloneArgs>() as u64, thread_entry as *const () as u64, i as u64)
            } else {
                rclone(flags, stack + THREAD_STACK, t.clear_tid, t.clear_tid, t.fs_base, thread_entry as *const () as u64, i as u64)
            }
        };
        check(b"cloning a thread", r);
    }
    if main_idx == usize::MAX {
        die(b"no main thread", 0);
    }
    restore_timers();
    let t = &ts[main_idx];
    // SAFETY: the leader takes over the main thread's identity and jumps into it.
    unsafe {
        let tid = sc(nr::GETTID, 0, 0, 0, 0, 0, 0);
        if t.clear_tid != 0 {
            *(t.clear_tid as *mut i32) = tid as i32;
            sc(nr::SET_TID_ADDRESS, t.clear_tid, 0, 0, 0, 0, 0);
        }
        check(b"arch_prctl(SET_FS)", sc(nr::ARCH_PRCTL, 0x1002, t.fs_base, 0, 0, 0, 0));
    }
    thread_common(t);
    // SAFETY: jumps into the main thread's saved context.
    unsafe { ctx_restore(t.ctx_addr) }
}
