//! The LD_PRELOAD agent (`libtorpor_agent.so`): inert unless the environment asks for
//! checkpoints; otherwise installs the checkpoint and request signal handlers and starts
//! the manager thread that takes checkpoints on an interval or on request.

mod alloc;
mod dirty;
mod fds;
mod identity;
mod joboutput;
mod manager;
mod parent;
mod park;
mod prescan;
mod sigwrap;
mod sys;
mod tree;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;

use manager::{Config, Outcome};

#[global_allocator]
static ALLOC: alloc::AgentAlloc = alloc::AgentAlloc;

/// Signal that parks threads (SIGRTMAX-3 with glibc's numbering).
pub const PARK_SIGNAL: i32 = 61;
/// Default signal that asks for a checkpoint (SIGRTMIN+4, as the plugin's `signal=`
/// default); its `si_value` is the request id. `TORPOR_SIGNAL` overrides it.
pub const REQUEST_SIGNAL: i32 = 38;

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

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The request signal: `TORPOR_SIGNAL` if it is usable, else [`REQUEST_SIGNAL`].
fn request_signal() -> i32 {
    env_u64("TORPOR_SIGNAL")
        .map(|v| v as i32)
        .filter(|&v| v > 0 && v < 65 && v != PARK_SIGNAL)
        .unwrap_or(REQUEST_SIGNAL)
}

/// A descendant of a tree root (`TORPOR_TREE` names another pid): its configuration,
/// with the root's image directory.
fn member_from_env() -> Option<(i32, Config)> {
    std::env::var_os("TORPOR_DIR")?;
    if std::env::var_os(identity::INERT_VAR).is_some() {
        return None;
    }
    let (root, dir) = tree::parse_var(&std::env::var(tree::TREE_VAR).ok()?)?;
    if root == sys::getpid() {
        return None;
    }
    Some((
        root,
        base_config(dir, env_str("TORPOR_CONTEXT").as_deref() == Some("slurm")),
    ))
}

fn base_config(dir: PathBuf, slurm: bool) -> Config {
    Config {
        dir,
        interval_ns: 0,
        keep: env_u64("TORPOR_KEEP").unwrap_or(2).max(1) as usize,
        full_every: env_u64("TORPOR_FULL_EVERY").unwrap_or(8).clamp(1, 16) as u32,
        attempt: env_u64("TORPOR_ATTEMPT")
            .or_else(|| env_u64("SLURM_RESTART_COUNT"))
            .unwrap_or(0) as u32,
        capture_limit: env_u64("TORPOR_CAPTURE_LIMIT").unwrap_or(1 << 30),
        verbose: std::env::var_os("TORPOR_VERBOSE").is_some(),
        park_sig: PARK_SIGNAL,
        request_sig: request_signal(),
        slurm,
    }
}

/// Reads the configuration; `None` when this process is not a checkpoint target.
fn config_from_env() -> Option<Config> {
    let root = PathBuf::from(std::env::var_os("TORPOR_DIR")?);
    if std::env::var_os(identity::INERT_VAR).is_some() {
        return None;
    }
    if let Some(pid) = env_u64("TORPOR_ROOT_PID") {
        if pid != sys::getpid() as u64 {
            return None;
        }
    }
    let slurm = env_str("TORPOR_CONTEXT").as_deref() == Some("slurm");
    let exe = identity::exe_name();
    if slurm && identity::skipped(&exe) {
        return None;
    }
    let interval_ns = std::env::var("TORPOR_INTERVAL_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .map(|v| (v * 1e9) as u64)
        .unwrap_or(0);
    let attempt = env_u64("TORPOR_ATTEMPT")
        .or_else(|| env_u64("SLURM_RESTART_COUNT"))
        .unwrap_or(0) as u32;
    let dir = if slurm {
        let job = env_str("TORPOR_JOB_ID")?;
        let step = env_str("TORPOR_STEP_ID").unwrap_or_else(|| "batch".into());
        let task = env_str("TORPOR_TASK_ID").unwrap_or_else(|| "0".into());
        match identity::slurm_program_dir(&root, &job, &step, &task, attempt, &exe) {
            Ok(d) => d,
            Err(e) => {
                eprintln!(
                    "torpor: cannot use image directory under {}: {e}; running without checkpoints",
                    root.display()
                );
                return None;
            }
        }
    } else {
        root
    };
    Some(Config {
        dir,
        interval_ns,
        keep: env_u64("TORPOR_KEEP").unwrap_or(2).max(1) as usize,
        full_every: env_u64("TORPOR_FULL_EVERY").unwrap_or(8).clamp(1, 16) as u32,
        attempt,
        capture_limit: env_u64("TORPOR_CAPTURE_LIMIT").unwrap_or(1 << 30),
        verbose: std::env::var_os("TORPOR_VERBOSE").is_some(),
        park_sig: PARK_SIGNAL,
        request_sig: request_signal(),
        slurm,
    })
}

/// Finds the agent's own writable load segments (.data, .bss, GOT).
pub(crate) fn find_writable_segment() {
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

pub(crate) fn find_rseq_offset() {
    // SAFETY: dlsym with NUL-terminated names; the symbols are plain data in glibc.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if !off.is_null() && !size.is_null() && *(size as *const u32) > 0 {
            park::RSEQ_OFFSET.store(*(off as *const isize), SeqCst);
        }
    }
}

pub(crate) extern "C" fn on_request(_sig: i32, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (id, code) = unsafe {
        (
            (*info).si_value().sival_ptr as usize as i32,
            (*info).si_code,
        )
    };
    if tree::in_vfork_child() {
        return;
    }
    if code == libc::SI_TIMER {
        // The retry timer of a lazy member's start, never a request.
        tree::lazy::on_signal(uc);
        return;
    }
    manager::REQ_ID.store(id, SeqCst);
    manager::REQ_CODE.store(code, SeqCst);
    manager::REQ.fetch_add(1, SeqCst);
    sys::futex_wake(&manager::REQ, 1);
    // A member without its manager yet: start it (the manager takes this request).
    tree::lazy::on_signal(uc);
}

/// The request signal's handler in every process of a checkpointed job that is not a
/// checkpoint target (batch shell, srun, env, inert descendants): `torpor checkpoint JOBID`
/// signals the whole job, and a real-time signal's default action is to terminate.
extern "C" fn on_request_elsewhere(_sig: i32, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
}

/// Makes the request signal harmless in this process: a no-op handler (not SIG_IGN, which
/// would be inherited across exec by programs that never load the agent). Left alone when
/// the process already has a disposition of its own (inherited SIG_IGN).
fn quiet_request_signal(sig: i32) {
    // SAFETY: queries the current action into a local.
    let cur = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if sigwrap::real_sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return;
        }
        old
    };
    if cur.sa_sigaction == libc::SIG_DFL {
        install(sig, on_request_elsewhere);
    }
}

pub(crate) fn install(
    sig: i32,
    h: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void),
) -> bool {
    // SAFETY: a zeroed sigaction is valid; we fill handler, flags and a full mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = h as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigfillset(&mut sa.sa_mask);
        sigwrap::real_sigaction(sig, &sa, std::ptr::null_mut()) == 0
    }
}

/// At normal exit of a Slurm job's program: its images are no longer needed (a rerun of
/// the batch script runs a finished program again from the start). Kept when the exit
/// follows a SIGTERM (the program may exit in its own handler while being preempted).
extern "C" fn at_exit() {
    if tree::MEMBER.load(SeqCst) {
        return; // the images belong to the tree's root
    }
    if !(manager::SLURM.load(SeqCst) && manager::ACTIVE.load(SeqCst))
        || manager::TERMINATING.load(SeqCst)
    {
        return;
    }
    manager::EXITING.store(true, SeqCst);
    // A round in flight would recreate the directory: stop its writer and let the
    // manager abort the round before removing everything.
    let fd = manager::WRITER_PIDFD.load(SeqCst);
    if fd >= 0 {
        // SAFETY: pidfd_send_signal on our own writer child.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0usize, 0u32) };
    }
    let t0 = sys::now_ns();
    while manager::BUSY.load(SeqCst) && sys::now_ns() - t0 < 5_000_000_000 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if let Some(d) = manager::DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static FINI: extern "C" fn() = at_exit;

/// Starts the manager thread: a member's (`tree::member::member_main`) or a target's.
pub(crate) fn spawn_manager(cfg: Config, seen: u32, seen_term: u32) {
    let spawned = std::thread::Builder::new()
        .name("torpor-agent".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if tree::MEMBER.load(SeqCst) {
                tree::member::member_main(cfg, seen, seen_term)
            } else {
                manager_main(cfg)
            }
        });
    if spawned.is_ok() {
        manager::ACTIVE.store(true, SeqCst);
    } else {
        sys::write_err(&[b"torpor: cannot start the agent thread; checkpointing disabled\n"]);
    }
}

fn start() {
    let slurm_job = env_str("TORPOR_CONTEXT").as_deref() == Some("slurm")
        && std::env::var_os("TORPOR_DIR").is_some();
    if slurm_job {
        // Before anything else: a request for the whole job may arrive at any time. A
        // target replaces this handler with the real one below.
        quiet_request_signal(request_signal());
        if std::env::var_os(identity::INERT_VAR).is_none() && identity::parent_is_stepd() {
            if let (Some(root), Some(job)) =
                (std::env::var_os("TORPOR_DIR"), env_str("TORPOR_JOB_ID"))
            {
                identity::mark_task(
                    std::path::Path::new(&root),
                    &job,
                    &env_str("TORPOR_STEP_ID").unwrap_or_else(|| "batch".into()),
                    &env_str("TORPOR_TASK_ID").unwrap_or_else(|| "0".into()),
                    env_u64("TORPOR_ATTEMPT").unwrap_or(0) as u32,
                );
            }
        }
    }
    if let Some((root, _)) = std::env::var(tree::TREE_VAR)
        .ok()
        .and_then(|v| tree::parse_var(&v))
    {
        if root != sys::getpid() && identity::never_member(&identity::exe_name()) {
            return; // inert inside a tree: the root refuses rounds while it runs
        }
    }
    if let Some((root, cfg)) = member_from_env() {
        tree::member::start_member(root, cfg);
        return;
    }
    let Some(cfg) = config_from_env() else {
        // Not a target. In a checkpointed Slurm job, a shell or wrapper that is not
        // checkpointed itself still must not die before its children's final checkpoints.
        if slurm_job && std::env::var_os(identity::INERT_VAR).is_none() {
            let grace = env_u64("TORPOR_GRACE_SECS").unwrap_or(10);
            let step = env_str("TORPOR_STEP_ID").unwrap_or_default();
            if let (Some(root), Some(job)) =
                (std::env::var_os("TORPOR_DIR"), env_str("TORPOR_JOB_ID"))
            {
                if joboutput::is_batch_top(&step) {
                    let attempt = env_u64("TORPOR_ATTEMPT").unwrap_or(0) as u32;
                    joboutput::init(std::path::Path::new(&root), &job, attempt);
                }
            }
            sigwrap::keep_term_for_children(grace * 1_000_000_000);
        }
        return;
    };
    // Descendants of a target are members of its process tree (ADR 0006).
    // SAFETY: constructors run before the program's threads exist.
    unsafe { std::env::set_var(tree::TREE_VAR, tree::var_value(sys::getpid(), &cfg.dir)) };
    let no_restore = std::env::var_os("TORPOR_NO_RESTORE").is_some();
    if no_restore {
        // SAFETY: still single-threaded.
        unsafe { std::env::remove_var("TORPOR_NO_RESTORE") };
    }
    if cfg.slurm && !no_restore && identity::has_generation(&cfg.dir) {
        let restorer = std::env::var_os("TORPOR_RESTORER")
            .map(PathBuf::from)
            .unwrap_or_default();
        let err = identity::exec_restorer(&restorer, &cfg.dir);
        eprintln!(
            "torpor: cannot run the restorer {} for {}: {err}; starting over",
            restorer.display(),
            cfg.dir.display()
        );
    }
    manager::ATTEMPT.store(cfg.attempt, SeqCst);
    manager::SLURM.store(cfg.slurm, SeqCst);
    tree::OWN_PID.store(sys::getpid(), SeqCst);
    find_writable_segment();
    find_rseq_offset();
    if !install(PARK_SIGNAL, park::on_park) || !install(cfg.request_sig, on_request) {
        sys::write_err(&[b"torpor: cannot install signal handlers; checkpointing disabled\n"]);
        return;
    }
    sigwrap::own_sigterm();
    manager::ROOT_SELF.store(sys::getpid(), SeqCst);
    tree::become_subreaper();
    fds::record_launch();
    let _ = tree::CFG.set(cfg.clone());
    tree::member::register_atfork();
    // Its fork children inherit the text ranges their lazy start checks.
    tree::lazy::init(cfg.request_sig, tree::member::lazy_start);
    spawn_manager(cfg, 0, sigwrap::TERM.load(SeqCst));
}

fn manager_main(mut cfg: Config) {
    let _ = manager::DIR.set(cfg.dir.clone());
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
    let mut seen_term = sigwrap::TERM.load(SeqCst);
    loop {
        let cur = manager::REQ.load(SeqCst);
        let now = sys::now_ns();
        let term = sigwrap::TERM.load(SeqCst);
        if term != seen_term {
            seen_term = term;
            manager::TERMINATING.store(true, SeqCst);
            let out = manager::checkpoint(&cfg);
            if matches!(out, Outcome::Restored) {
                root_restored();
            }
            report(&cfg, 0, &out);
            if !matches!(out, Outcome::Restored) {
                sigwrap::apply_program_sigterm();
                continue;
            }
        }
        if cur != seen || now >= next {
            let id = if cur != seen {
                manager::REQ_ID.load(SeqCst)
            } else {
                0
            };
            seen = cur;
            let out = manager::checkpoint(&cfg);
            if matches!(out, Outcome::Restored) {
                root_restored();
            }
            report(&cfg, id, &out);
            cfg.attempt = manager::ATTEMPT.load(SeqCst);
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

/// In a restored root: the attributes a restore does not carry over (the process is
/// a new one) and, with new pids, its own pid for the members it forks.
fn root_restored() {
    tree::become_subreaper();
    manager::ROOT_SELF.store(sys::getpid(), SeqCst);
}

/// Writes `status.json` next to the generations and logs failures on stderr.
fn report(cfg: &Config, request: i32, out: &Outcome) {
    if manager::EXITING.load(SeqCst) {
        return; // the program is ending normally; its images are being removed
    }
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
        Outcome::Restored => {
            let same = manager::IN_PIDNS.load(SeqCst) != 0;
            let mut v = serde_json::json!({
                "pid": sys::getpid(), "request": 0, "ok": true, "restored": true,
                "pids": if same { "original" } else { "new" },
            });
            if !same && !tree::descendants(sys::getpid()).is_empty() {
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "warning".into(),
                        torpor_engine::restore::NEW_PIDS_WARNING.into(),
                    );
                }
            }
            v
        }
    };
    let mut status = status;
    if let Some(o) = status.as_object_mut() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        o.insert("host".into(), host.trim().into());
        o.insert(
            "node".into(),
            std::env::var("SLURMD_NODENAME").unwrap_or_default().into(),
        );
        o.insert("time_unix".into(), sys::unix_time().into());
        o.insert("attempt".into(), manager::ATTEMPT.load(SeqCst).into());
    }
    let tmp = cfg.dir.join(format!(".status-{}", sys::getpid()));
    let body = status.to_string();
    let fin = cfg.dir.join("status.json");
    let write = |p: &std::path::Path| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)?
            .write_all(body.as_bytes())
    };
    if write(&tmp).is_ok() {
        let _ = std::fs::rename(&tmp, &fin);
    } else {
        // Disk full: the atomic copy may not fit; rewrite the old file in place (it fits
        // in the blocks the previous status held) so that the failure is still reported.
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = write(&fin) {
            eprintln!("torpor: cannot write {}: {e}", fin.display());
        }
    }
}
