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
#[allow(dead_code)]
mod lz4;

#[path = "../../core/src/rawclone.rs"]
mod rawclone;

mod copy;
mod fill;
mod sys;

use core::arch::naked_asm;
use fill::{fill_all, huge_pages_for};
use plan::*;
use rawclone::raw_clone;
use sys::{check, die, nr, sc, write2};

const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
const MAP_PRIVATE: u64 = 2;
const MAP_SHARED: u64 = 1;
const MAP_ANON: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_NORESERVE: u64 = 0x4000;
const PROT_RW: u64 = 3;
pub(crate) const MADV_POPULATE_WRITE: u64 = 23;

#[repr(C, align(16))]
struct Stack([u8; 65536]);
static mut STACK: Stack = Stack([0; 65536]);
static mut MAPS: [u8; 65536] = [0; 65536];

unsafe extern "C" {
    static __executable_start: u8;
    static _end: u8;
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

pub(crate) fn hdr() -> &'static PlanHeader {
    // SAFETY: set once in rmain before any use; points into the read-only plan mapping.
    unsafe { &*HDR }
}

pub(crate) fn table<T>(off: u64, n: u64) -> &'static [T] {
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
    if h.thp == 0 && h.copy != 0 {
        copy::setup();
    }
    fill_all();
    copy::teardown();
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
        let got = unsafe { sc(nr::MMAP, SCRATCH_ADDR, 2 * (h.scratch_len + h.dec_len), PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_FIXED_NOREPLACE, u64::MAX, 0) };
        if got as u64 != SCRATCH_ADDR {
            die(b"mapping the scratch buffer", got);
        }
    }
    map_regions();
    if h.scratch_len > 0 {
        // SAFETY: our own scratch mapping, no longer used.
        unsafe { sc(nr::MUNMAP, SCRATCH_ADDR, 2 * (h.scratch_len + h.dec_len), 0, 0, 0, 0) };
    }
    for &fd in &h.chain_fds {
        if fd > 2 && fd != h.image_fd {
            // SAFETY: closes an older image of the chain stage 1 opened for us.
            unsafe { sc(nr::CLOSE, fd as u64, 0, 0, 0, 0, 0) };
        }
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
                raw_clone(flags, stack + THREAD_STACK, t.clear_tid, t.clear_tid, t.fs_base, thread_entry as *const () as u64, i as u64)
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
