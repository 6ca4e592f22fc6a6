//! The LD_PRELOAD agent (`libtorpor_agent.so`): inert unless the environment asks for
//! checkpoints; otherwise installs the checkpoint and request signal handlers and starts
//! the manager thread that takes checkpoints on an interval or on request.

mod alloc;
mod manager;
mod park;
mod sys;

use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;

use manager::{Config, Outcome};

#[global_allocator]
static ALLOC: alloc::AgentAlloc = alloc::AgentAlloc;

/// Signal that parks threads (SIGRTMAX-3 with glibc's numbering).
pub const PARK_SIGNAL: i32 = 61;
/// Signal that asks for a checkpoint (SIGRTMAX-4); its `si_value` is the request id.
pub const REQUEST_SIGNAL: i32 = 60;

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    // Never let a panic unwind into the dynamic loader.
    let _ = std::panic::catch_unwind(start);
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn config_from_env() -> Option<Config> {
    let dir = PathBuf::from(std::env::var_os("TORPOR_DIR")?);
    if let Some(root) = env_u64("TORPOR_ROOT_PID") {
        if root != sys::getpid() as u64 {
            return None;
        }
    }
    let interval_ns = std::env::var("TORPOR_INTERVAL_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .map(|v| (v * 1e9) as u64)
        .unwrap_or(0);
    Some(Config {
        dir,
        interval_ns,
        keep: env_u64("TORPOR_KEEP").unwrap_or(2).max(1) as usize,
        attempt: env_u64("TORPOR_ATTEMPT")
            .or_else(|| env_u64("SLURM_RESTART_COUNT"))
            .unwrap_or(0) as u32,
        capture_limit: env_u64("TORPOR_CAPTURE_LIMIT").unwrap_or(1 << 30),
        verbose: std::env::var_os("TORPOR_VERBOSE").is_some(),
        park_sig: PARK_SIGNAL,
    })
}

/// Finds the agent's own writable load segments (.data, .bss, GOT).
fn find_writable_segment() {
    extern "C" fn cb(info: *mut libc::dl_phdr_info, _size: usize, _data: *mut libc::c_void) -> i32 {
        let probe = &manager::REQ as *const _ as u64;
        // SAFETY: the loader passes a valid dl_phdr_info with `dlpi_phnum` headers.
        let info = unsafe { &*info };
        // SAFETY: as above.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let base = info.dlpi_addr;
        let ours = phdrs.iter().any(|p| {
            p.p_type == libc::PT_LOAD
                && probe >= base + p.p_vaddr
                && probe < base + p.p_vaddr + p.p_memsz
        });
        if !ours {
            return 0;
        }
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for p in phdrs {
            if p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W != 0 {
                lo = lo.min((base + p.p_vaddr) & !4095);
                hi = hi.max((base + p.p_vaddr + p.p_memsz + 4095) & !4095);
            }
        }
        if hi > lo {
            manager::WSEG_START.store(lo, SeqCst);
            manager::WSEG_END.store(hi, SeqCst);
        }
        1
    }
    // SAFETY: dl_iterate_phdr calls `cb` synchronously with valid headers.
    unsafe { libc::dl_iterate_phdr(Some(cb), std::ptr::null_mut()) };
}

fn find_rseq_offset() {
    // SAFETY: dlsym with NUL-terminated names; the symbols are plain data in glibc.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if !off.is_null() && !size.is_null() && *(size as *const u32) > 0 {
            park::RSEQ_OFFSET.store(*(off as *const isize), SeqCst);
        }
    }
}

extern "C" fn on_request(_sig: i32, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let id = unsafe { (*info).si_value().sival_ptr as usize as i32 };
    manager::REQ_ID.store(id, SeqCst);
    manager::REQ.fetch_add(1, SeqCst);
    sys::futex_wake(&manager::REQ, 1);
}

fn install(sig: i32, h: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void)) -> bool {
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and a full mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = h as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0
    }
}

fn start() {
    let Some(cfg) = config_from_env() else { return };
    find_writable_segment();
    find_rseq_offset();
    if !install(PARK_SIGNAL, park::on_park) || !install(REQUEST_SIGNAL, on_request) {
        sys::write_err(&[b"torpor: cannot install signal handlers; checkpointing disabled\n"]);
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("torpor-agent".into())
        .stack_size(256 * 1024)
        .spawn(move || manager_main(cfg));
    if spawned.is_err() {
        sys::write_err(&[b"torpor: cannot start the agent thread; checkpointing disabled\n"]);
    }
}

fn manager_main(cfg: Config) {
    // SAFETY: blocks every signal for this thread only.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    manager::MANAGER_TID.store(sys::gettid(), SeqCst);
    let interval = cfg.interval_ns;
    let mut next = if interval > 0 {
        sys::now_ns() + interval
    } else {
        u64::MAX
    };
    let mut seen = manager::REQ.load(SeqCst);
    loop {
        let cur = manager::REQ.load(SeqCst);
        let now = sys::now_ns();
        if cur != seen || now >= next {
            let id = if cur != seen {
                manager::REQ_ID.load(SeqCst)
            } else {
                0
            };
            seen = cur;
            let out = manager::checkpoint(&cfg);
            report(&cfg, id, &out);
            next = if interval > 0 {
                sys::now_ns() + interval
            } else {
                u64::MAX
            };
            continue;
        }
        let wait = next.saturating_sub(now).min(60_000_000_000);
        sys::futex_wait(&manager::REQ, cur, wait.max(1));
    }
}

/// Writes `status.json` next to the generations and logs failures on stderr.
fn report(cfg: &Config, request: i32, out: &Outcome) {
    let status = match out {
        Outcome::Committed {
            generation,
            path,
            pause_ns,
            total_ns,
        } => {
            if cfg.verbose {
                eprintln!(
                    "torpor: checkpoint {} written to {} (pause {:.1} ms, total {:.1} ms)",
                    generation,
                    path.display(),
                    *pause_ns as f64 / 1e6,
                    *total_ns as f64 / 1e6
                );
            }
            serde_json::json!({
                "pid": sys::getpid(), "request": request, "ok": true,
                "generation": generation, "path": path,
                "pause_ms": *pause_ns as f64 / 1e6, "total_ms": *total_ns as f64 / 1e6,
            })
        }
        Outcome::Failed(e) => {
            eprintln!("torpor: checkpoint failed, the program continues: {e}");
            serde_json::json!({
                "pid": sys::getpid(), "request": request, "ok": false, "error": e,
            })
        }
        Outcome::Restored => serde_json::json!({
            "pid": sys::getpid(), "request": 0, "ok": true, "restored": true,
        }),
    };
    let tmp = cfg.dir.join(format!(".status-{}", sys::getpid()));
    if std::fs::write(&tmp, status.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, cfg.dir.join("status.json"));
    }
}
