//! Lazy member managers: a fork child or an exec'd member installs its handlers but
//! starts no thread. Its manager thread is started from a signal handler, by the first
//! tree round, a SIGTERM, or a one-shot timer [`START_AFTER_NS`] after the process
//! became a member, whichever comes first; a child that execs or exits before never
//! pays for a thread. The handler starts it only when the interrupted thread cannot
//! hold a lock that `pthread_create` takes (glibc's stack cache, malloc for the TLS,
//! the loader's TLS lock, the agent's allocator) nor be inside malloc's lock-free
//! single-thread path: its instruction pointer is outside libc, the dynamic loader and
//! the agent, or in libc inside a blocking system call, and it is not running one of
//! the program's signal handlers (which may have interrupted malloc: a signal frame on
//! its stack, or its alternate signal stack in use). Otherwise a one-shot timer tries
//! again [`RETRY_NS`] later on the next thread of the process. On by default;
//! `TORPOR_LAZY_MEMBERS=0` makes members eager.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::OnceLock;

use crate::sys;

/// This process is a member whose manager has not started yet.
pub static LAZY: AtomicBool = AtomicBool::new(false);
/// Lazy starts are possible here (text ranges known, `calloc` is libc's).
static LAZY_OK: AtomicBool = AtomicBool::new(false);
/// A start is being attempted (one handler at a time).
static STARTING: AtomicBool = AtomicBool::new(false);
/// Delay of the first attempt after a process became a lazy member.
pub const START_AFTER_NS: i64 = 50_000_000;
/// Overrides [`START_AFTER_NS`] (milliseconds), for tests and diagnosis: a large value
/// leaves the start to the first round or SIGTERM.
pub const START_AFTER_VAR: &str = "TORPOR_LAZY_START_MS";
/// Lazy starts are the default; `0` makes every member start its manager at once
/// (eager, as before lazy starts), for diagnosis or a program whose threads stay in
/// libc without system calls for long.
pub const ENABLE_VAR: &str = "TORPOR_LAZY_MEMBERS";
static START_AFTER: AtomicI64 = AtomicI64::new(START_AFTER_NS);
/// Delay between attempts.
const RETRY_NS: i64 = 1_000_000;
/// A SIGTERM whose manager could not start for this long (a thread busy inside libc
/// for seconds) gets the program's own disposition at once, without the hold.
const TERM_GIVE_UP_NS: u64 = 2_000_000_000;
/// When the first attempt after a SIGTERM failed (0: none failed).
static TERM_SINCE: AtomicU64 = AtomicU64::new(0);
/// Pending retry timer id + 1 (0: none).
static TIMER: AtomicI64 = AtomicI64::new(0);
/// The request signal (the retry timer sends it, `si_code` `SI_TIMER`).
static SIG: AtomicU32 = AtomicU32::new(0);
/// Request and SIGTERM counters when the process became lazy: everything after is new
/// to the manager.
pub static SEEN_REQ: AtomicU32 = AtomicU32::new(0);
pub static SEEN_TERM: AtomicU32 = AtomicU32::new(0);
/// Text ranges: libc, dynamic loader, agent (start, end pairs).
static RANGES: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
/// Starts the manager thread (set by lib.rs).
static START: OnceLock<fn()> = OnceLock::new();

/// Finds libc's, the loader's and the agent's text and checks that `calloc` is libc's
/// (an allocator linked into the program could hold its own lock anywhere). Once per
/// exec; fork children inherit the result.
pub fn init(request_sig: i32, start: fn()) {
    extern "C" fn cb(info: *mut libc::dl_phdr_info, _size: usize, _d: *mut libc::c_void) -> i32 {
        // SAFETY: the loader passes a valid dl_phdr_info with `dlpi_phnum` headers.
        let info = unsafe { &*info };
        // SAFETY: as above.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr;
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for p in phdrs {
            if p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0 {
                lo = lo.min(base + p.p_vaddr);
                hi = hi.max(base + p.p_vaddr + p.p_memsz);
            }
        }
        if hi <= lo {
            return 0;
        }
        let probe = &LAZY as *const _ as u64;
        let mut data_hi = 0u64;
        for p in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD) {
            data_hi = data_hi.max(base + p.p_vaddr + p.p_memsz);
        }
        let name = if info.dlpi_name.is_null() {
            &b""[..]
        } else {
            // SAFETY: a NUL-terminated name from the loader.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
        };
        let base_name = name.rsplit(|&c| c == b'/').next().unwrap_or(name);
        let slot = if probe >= base && probe < data_hi {
            2
        } else if base_name.starts_with(b"libc.so") {
            0
        } else if base_name.starts_with(b"ld-linux") || base_name.starts_with(b"ld64.so") {
            1
        } else {
            return 0;
        };
        RANGES[slot * 2].store(lo, SeqCst);
        RANGES[slot * 2 + 1].store(hi, SeqCst);
        0
    }
    SIG.store(request_sig as u32, SeqCst);
    if let Some(ms) = initial_env(START_AFTER_VAR)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        START_AFTER.store(ms.clamp(1, 1 << 40) * 1_000_000, SeqCst);
    }
    let _ = START.set(start);
    // SAFETY: dl_iterate_phdr calls `cb` synchronously with valid headers.
    unsafe { libc::dl_iterate_phdr(Some(cb), std::ptr::null_mut()) };
    // SAFETY: dlsym with a NUL-terminated name.
    let calloc = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"calloc".as_ptr()) } as u64;
    let known = (0..3).all(|i| RANGES[i * 2 + 1].load(SeqCst) > 0);
    let enabled = initial_env(ENABLE_VAR).is_none_or(|v| v != b"0");
    REQUESTED.store(enabled, SeqCst);
    LAZY_OK.store(
        enabled && cfg!(target_arch = "x86_64") && known && in_range(0, calloc),
        SeqCst,
    );
}

/// The value of `name` in the process's initial environment (`/proc/self/environ`),
/// rather than from getenv: a program may define its own getenv, and bash's does not
/// answer from the environment while the constructors run.
fn initial_env(name: &str) -> Option<Vec<u8>> {
    let env = std::fs::read("/proc/self/environ").ok()?;
    env.split(|&c| c == 0).find_map(|v| {
        v.strip_prefix(name.as_bytes())?
            .strip_prefix(b"=")
            .map(<[u8]>::to_vec)
    })
}

/// Lazy starts are on (members may be lazy even where this process, with an allocator
/// of its own, cannot be).
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether members of this tree may be lazy (they then get a request through the
/// process: they have no manager thread to send it to).
pub fn requested() -> bool {
    REQUESTED.load(SeqCst)
}

/// Whether this process can start its manager lazily.
pub fn possible() -> bool {
    LAZY_OK.load(SeqCst)
}

/// Makes this process lazy: remembers what it has seen so far and arms the timer of
/// the first attempt (timers are not inherited by fork nor kept by exec).
pub fn become_lazy(req: u32, term: u32) {
    SEEN_REQ.store(req, SeqCst);
    SEEN_TERM.store(term, SeqCst);
    STARTING.store(false, SeqCst);
    TIMER.store(0, SeqCst);
    TERM_SINCE.store(0, SeqCst);
    LAZY.store(true, SeqCst);
    retry_later(sys::gettid(), START_AFTER.load(SeqCst));
}

fn in_range(i: usize, a: u64) -> bool {
    a >= RANGES[i * 2].load(SeqCst) && a < RANGES[i * 2 + 1].load(SeqCst)
}

/// System calls a thread may be blocked in, inside libc, without holding a lock
/// `pthread_create` needs (restarted after our handler: the instruction pointer is
/// back on the `syscall` instruction and rax holds the number).
fn blocking_ok(nr: i64, op: i64) -> bool {
    const FUTEX_WAIT_BITSET: i64 = 9;
    matches!(
        nr,
        0 | 1
            | 7
            | 23
            | 42
            | 43
            | 44
            | 45
            | 46
            | 47
            | 61
            | 72
            | 73
            | 128
            | 232
            | 247
            | 270
            | 271
            | 281
            | 288
            | 441
    ) || (nr == 202 && op & 0x7f == FUTEX_WAIT_BITSET)
}

/// Whether the thread interrupted with context `uc` is at a point where starting a
/// thread cannot deadlock. Signal-safe.
#[cfg(target_arch = "x86_64")]
fn safe_point(uc: *mut libc::c_void) -> bool {
    if uc.is_null() {
        return false;
    }
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let ctx = unsafe { &*(uc as *const libc::ucontext_t) };
    let g = &ctx.uc_mcontext.gregs;
    // Inside one of the program's own signal handlers, which may have interrupted
    // malloc: not here. (A blocked signal is no sign of it: bash blocks SIGCHLD for
    // the whole of a `read`.)
    if in_handler(g[libc::REG_RSP as usize] as u64) {
        return false;
    }
    let rip = g[libc::REG_RIP as usize] as u64;
    let rax = g[libc::REG_RAX as usize];
    if in_range(1, rip) || in_range(2, rip) {
        return false;
    }
    if !in_range(0, rip) {
        return true;
    }
    let at = |a: u64| -> bool {
        in_range(0, a) && in_range(0, a + 1) && {
            // SAFETY: two bytes inside libc's mapped text.
            unsafe { *(a as *const u8) == 0x0f && *((a + 1) as *const u8) == 0x05 }
        }
    };
    // Interrupted sleep (nanosleep, poll with a timeout, ...): returned -EINTR.
    if rax == -(libc::EINTR as i64) && rip >= 2 && at(rip - 2) {
        return true;
    }
    // Restarted blocking call: back on the syscall instruction with its number.
    at(rip) && blocking_ok(rax, g[libc::REG_RSI as usize])
}

/// Whether the words at `f` (which hold a restorer address) look like the base of the
/// kernel's x86-64 signal frame: `pretcode`, then a `ucontext` with small `uc_flags`,
/// no `uc_link`, and a saved context whose stack pointer lies above the frame and whose
/// `fpstate` (if any) lies between the two. A copy of the restorer in a `struct
/// sigaction` kept on the stack (bash's `read` keeps some) does not. Signal-safe.
#[cfg(target_arch = "x86_64")]
fn is_sigframe(f: u64) -> bool {
    let mut w = [0u64; 32];
    let local = libc::iovec {
        iov_base: w.as_mut_ptr() as *mut libc::c_void,
        iov_len: std::mem::size_of_val(&w),
    };
    let remote = libc::iovec {
        iov_base: f as *mut libc::c_void,
        iov_len: std::mem::size_of_val(&w),
    };
    // SAFETY: copies 256 bytes of our own address space into a local buffer; fails
    // rather than faults on an unreadable page.
    let got = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            sys::getpid(),
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    if got != std::mem::size_of_val(&w) as i64 {
        return false;
    }
    // ucontext at f + 8: uc_flags, uc_link, uc_stack (3 words), then sigcontext:
    // r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, ..., fpstate (word 23).
    let (flags, link) = (w[1], w[2]);
    let (sp, ip, fpstate) = (w[6 + 15], w[6 + 16], w[6 + 23]);
    flags <= 0xff
        && link == 0
        && ip != 0
        && sp > f + 8 * 32
        && sp - f < 1 << 20
        && (fpstate == 0 || (fpstate > f && fpstate < sp))
}

/// How far above the interrupted stack pointer [`in_handler`] looks for a signal frame.
#[cfg(target_arch = "x86_64")]
const FRAME_SCAN: u64 = 256 * 1024;

/// Whether the thread interrupted with stack pointer `rsp` is running a signal handler:
/// it is on its alternate signal stack, or a signal frame lies on its stack above `rsp`
/// (the kernel puts the handler's return address, the `sa_restorer` of the handler's
/// `sigaction`, at the base of each frame it pushes). The stack is read with
/// `process_vm_readv` on ourselves, which fails instead of faulting at the end of the
/// mapping. A stale copy of that address in a live frame makes it refuse (safe).
/// Signal-safe.
#[cfg(target_arch = "x86_64")]
fn in_handler(rsp: u64) -> bool {
    #[repr(C)]
    struct KAction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    const SA_RESTORER: u64 = 0x0400_0000;
    // SAFETY: a zeroed stack_t is valid; sigaltstack only queries into it.
    let on_alt = unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::syscall(
            libc::SYS_sigaltstack,
            std::ptr::null::<libc::stack_t>(),
            &mut ss as *mut libc::stack_t,
        ) == 0
            && ss.ss_flags & libc::SS_ONSTACK != 0
    };
    if on_alt {
        return true;
    }
    let mut restorers = [0u64; 8];
    let mut n = 0usize;
    for s in 1..=64i32 {
        if s == libc::SIGKILL || s == libc::SIGSTOP {
            continue;
        }
        let mut old = KAction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: queries one signal's action into a local kernel-layout struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                s,
                std::ptr::null::<KAction>(),
                &mut old as *mut KAction,
                8usize,
            )
        };
        if r != 0 || old.handler == libc::SIG_DFL || old.handler == libc::SIG_IGN {
            continue;
        }
        if old.flags & SA_RESTORER == 0 || old.restorer == 0 {
            // A handler without a restorer: its frames cannot be told apart.
            return true;
        }
        let a = old.restorer as u64;
        if !restorers[..n].contains(&a) {
            if n == restorers.len() {
                return true;
            }
            restorers[n] = a;
            n += 1;
        }
    }
    let mut buf = [0u64; 512];
    let mut at = rsp & !7;
    let end = at.saturating_add(FRAME_SCAN);
    while at < end {
        let len = (((at & !0xfff) + 0x1000).min(end) - at) as usize;
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: copies `len` bytes of our own address space into our stack buffer;
        // an unmapped or unreadable page makes it fail rather than fault.
        let got = unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                sys::getpid(),
                &local as *const libc::iovec,
                1usize,
                &remote as *const libc::iovec,
                1usize,
                0usize,
            )
        };
        if got <= 0 {
            break;
        }
        for (i, w) in buf[..got as usize / 8].iter().enumerate() {
            if restorers[..n].contains(w) && is_sigframe(at + 8 * i as u64) {
                return true;
            }
        }
        at += got as u64;
    }
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn safe_point(_uc: *mut libc::c_void) -> bool {
    false
}

/// The next thread of this process after `me` (wrapping), with a stack buffer only.
fn next_thread(me: i32) -> i32 {
    let fd = crate::manager::sys_open(b"/proc/self/task\0", libc::O_RDONLY | libc::O_DIRECTORY);
    if fd < 0 {
        return me;
    }
    let (mut first, mut next) = (0i32, 0i32);
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: getdents64 into our stack buffer.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let mut tid = 0i32;
            for &c in &buf[off + 19..(off + reclen).min(n as usize)] {
                if !c.is_ascii_digit() {
                    break;
                }
                tid = tid * 10 + (c - b'0') as i32;
            }
            if tid > 0 {
                if first == 0 || tid < first {
                    first = tid;
                }
                if tid > me && (next == 0 || tid < next) {
                    next = tid;
                }
            }
            off += reclen.max(1);
        }
    }
    crate::manager::close(fd);
    if next > 0 {
        next
    } else if first > 0 {
        first
    } else {
        me
    }
}

/// Arms a one-shot timer that sends the request signal (`SI_TIMER`) to `tid` in `ns`.
fn retry_later(tid: i32, ns: i64) {
    // SAFETY: a zeroed sigevent is valid; we fill the fields we use.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_THREAD_ID;
    ev.sigev_signo = SIG.load(SeqCst) as i32;
    ev.sigev_notify_thread_id = tid;
    let mut id: libc::c_int = 0;
    // SAFETY: raw timer_create with a valid sigevent and an out pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            libc::CLOCK_MONOTONIC,
            &ev as *const libc::sigevent,
            &mut id as *mut libc::c_int,
        )
    };
    if r != 0 {
        return;
    }
    TIMER.store(id as i64 + 1, SeqCst);
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: ns / 1_000_000_000,
            tv_nsec: ns % 1_000_000_000,
        },
    };
    // SAFETY: raw timer_settime on the timer just created.
    unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &its as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
}

fn drop_timer() {
    let t = TIMER.swap(0, SeqCst);
    if t > 0 {
        // SAFETY: raw timer_delete of our own retry timer.
        unsafe { libc::syscall(libc::SYS_timer_delete, (t - 1) as libc::c_int) };
    }
}

/// From the request or SIGTERM handler of a lazy member: starts the manager now if the
/// interrupted thread is at a safe point, else tries again shortly. Signal-safe up to
/// the start itself, which only happens at a safe point.
pub fn on_signal(uc: *mut libc::c_void) {
    if !LAZY.load(SeqCst) || STARTING.swap(true, SeqCst) {
        return;
    }
    drop_timer();
    if safe_point(uc) {
        LAZY.store(false, SeqCst);
        if let Some(start) = START.get() {
            start();
        }
    } else if term_overdue() {
        // No manager to hold the SIGTERM: the program's disposition, now.
        LAZY.store(false, SeqCst);
        STARTING.store(false, SeqCst);
        crate::sigwrap::apply_program_sigterm();
        return;
    } else {
        retry_later(next_thread(sys::gettid()), RETRY_NS);
    }
    STARTING.store(false, SeqCst);
}

/// A SIGTERM is waiting for the manager, and has been for too long.
fn term_overdue() -> bool {
    if crate::sigwrap::TERM.load(SeqCst) == SEEN_TERM.load(SeqCst) {
        return false;
    }
    let now = sys::now_ns();
    let since = TERM_SINCE.load(SeqCst);
    if since == 0 {
        TERM_SINCE.store(now, SeqCst);
        return false;
    }
    now - since > TERM_GIVE_UP_NS
}
