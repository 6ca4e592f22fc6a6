//! SIGTERM interposition: the agent keeps its own SIGTERM handler so that a preempted,
//! requeued or cancelled job takes a final checkpoint inside the grace time. The
//! program's own SIGTERM disposition is recorded here instead of installed, and applied
//! exactly once the final checkpoint is durable: default (die of SIGTERM), ignore, or
//! its handler (installed, then the signal raised again).
//!
//! `sigaction` and `signal` are exported so that they override glibc's for the whole
//! process; every other signal passes straight through.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};

use crate::sys;

type SigactionFn = unsafe extern "C" fn(i32, *const libc::sigaction, *mut libc::sigaction) -> i32;

static REAL: AtomicUsize = AtomicUsize::new(0);
/// True while the agent owns SIGTERM.
pub static OWN_TERM: AtomicBool = AtomicBool::new(false);
/// Bumped by the agent's SIGTERM handler.
pub static TERM: AtomicU32 = AtomicU32::new(0);

struct Saved(UnsafeCell<libc::sigaction>);
// SAFETY: written only inside `sigaction` calls for SIGTERM made by the program, which
// POSIX does not make thread-safe against each other either; read by the manager.
unsafe impl Sync for Saved {}
// SAFETY: all-zero is SIG_DFL with an empty mask.
static APP_TERM: Saved = Saved(UnsafeCell::new(unsafe { std::mem::zeroed() }));

fn real() -> SigactionFn {
    let mut f = REAL.load(SeqCst);
    if f == 0 {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds glibc's sigaction.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) } as usize;
        REAL.store(f, SeqCst);
    }
    // SAFETY: glibc's sigaction has exactly this signature.
    unsafe { std::mem::transmute::<usize, SigactionFn>(f) }
}

/// Calls glibc's sigaction, bypassing the interposition.
pub fn real_sigaction(sig: i32, act: *const libc::sigaction, old: *mut libc::sigaction) -> i32 {
    // SAFETY: forwards the caller's pointers unchanged.
    unsafe { real()(sig, act, old) }
}

extern "C" fn on_term(_sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    TERM.fetch_add(1, SeqCst);
    sys::futex_wake(&crate::manager::REQ, 1);
    // A member without its manager yet: the manager holds and then applies SIGTERM.
    crate::tree::lazy::on_signal(uc);
}

/// Takes SIGTERM over, remembering what the program had set so far.
pub fn own_sigterm() {
    real(); // resolve while the process is still single-threaded
            // SAFETY: reads the current action into APP_TERM, then installs ours.
    unsafe {
        real_sigaction(libc::SIGTERM, std::ptr::null(), APP_TERM.0.get());
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        if real_sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) == 0 {
            OWN_TERM.store(true, SeqCst);
        }
    }
}

/// After the final checkpoint: do what the program asked for on SIGTERM.
pub fn apply_program_sigterm() {
    OWN_TERM.store(false, SeqCst);
    // SAFETY: APP_TERM holds a complete sigaction recorded from the program.
    let app = unsafe { *APP_TERM.0.get() };
    if app.sa_sigaction == libc::SIG_IGN {
        OWN_TERM.store(true, SeqCst); // keep ours: the program ignores SIGTERM anyway
        return;
    }
    real_sigaction(libc::SIGTERM, &app, std::ptr::null_mut());
    // SAFETY: raise SIGTERM for the process; the program's disposition handles it.
    unsafe { libc::kill(sys::getpid(), libc::SIGTERM) };
}

/// Interposed `sigaction`.
///
/// # Safety
/// Same contract as POSIX `sigaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: i32,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> i32 {
    if sig == libc::SIGTERM && OWN_TERM.load(SeqCst) {
        // SAFETY: pointers per the caller's contract; APP_TERM is ours.
        unsafe {
            if !old.is_null() {
                *old = *APP_TERM.0.get();
            }
            if !act.is_null() {
                *APP_TERM.0.get() = *act;
            }
        }
        return 0;
    }
    real_sigaction(sig, act, old)
}

/// Interposed `signal` (glibc semantics: BSD, SA_RESTART).
///
/// # Safety
/// Same contract as C `signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: i32, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: builds a plain sigaction and forwards to the interposed sigaction.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, sig);
        if sigaction(sig, &sa, &mut old) != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    }
}

/// Live (non-zombie) children of this process, read from /proc with stack buffers only
/// (`/proc/PID/task/TID/children` needs CONFIG_PROC_CHILDREN, which not every kernel
/// has: every `/proc/N/stat` is read instead). Signal-safe.
fn live_children() -> usize {
    let me = sys::getpid();
    // SAFETY: open/getdents64/close on /proc with a stack buffer.
    let dir = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return 0;
    }
    let mut live = 0;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: getdents64 into our stack buffer.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            let name = &name[..len];
            if !name.is_empty() && name.iter().all(|c| c.is_ascii_digit()) {
                if let Some((ppid, state)) = crate::tree::stat_of(name) {
                    if ppid == me && state != b'Z' && state != b'X' {
                        live += 1;
                    }
                }
            }
            off += reclen;
        }
    }
    // SAFETY: closes our directory fd.
    unsafe { libc::close(dir) };
    live
}

static GRACE_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10_000_000_000);

/// SIGTERM in a process that is not itself checkpointed (the batch shell, `env`,
/// srun): Slurm kills the whole step as soon as the batch shell dies, so hold the death
/// until the children (whose agents are taking their final checkpoints) have exited or
/// the grace time passed, then do what the process itself asked for. Signal-safe.
extern "C" fn on_term_keeper(_sig: i32, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let t0 = sys::now_ns();
    let grace = GRACE_NS.load(SeqCst);
    while live_children() > 0 && sys::now_ns() - t0 < grace {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 5_000_000,
        };
        // SAFETY: nanosleep is async-signal-safe.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
    // The batch shell: keep the job's output for the next run (Slurm truncates it).
    crate::joboutput::snapshot();
    OWN_TERM.store(false, SeqCst);
    // SAFETY: APP_TERM holds the process's own SIGTERM action.
    let app = unsafe { *APP_TERM.0.get() };
    if app.sa_sigaction == libc::SIG_IGN {
        OWN_TERM.store(true, SeqCst);
        return;
    }
    real_sigaction(libc::SIGTERM, &app, std::ptr::null_mut());
    // SAFETY: SIGTERM is blocked while this handler runs; it is delivered again (to the
    // process's own disposition) when the handler returns.
    unsafe { libc::kill(sys::getpid(), libc::SIGTERM) };
}

/// Installs the SIGTERM keeper in a process of a checkpointed job that is not a target.
pub fn keep_term_for_children(grace_ns: u64) {
    GRACE_NS.store(grace_ns, SeqCst);
    real();
    // SAFETY: records the current action, then installs the keeper.
    unsafe {
        real_sigaction(libc::SIGTERM, std::ptr::null(), APP_TERM.0.get());
        if (*APP_TERM.0.get()).sa_sigaction == libc::SIG_IGN {
            return; // it ignores SIGTERM: nothing to hold
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term_keeper as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, libc::SIGTERM);
        if real_sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) == 0 {
            OWN_TERM.store(true, SeqCst);
        }
    }
}
