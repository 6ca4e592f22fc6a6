//! A tree member's agent: its start (from the constructor of an exec'd member, or the
//! atfork child handler of a fork child), its lazy manager start, and its manager's
//! loop, which answers the root's rounds.

use std::sync::atomic::Ordering::SeqCst;

use crate::manager::{self, Config, Outcome};
use crate::{
    alloc, find_rseq_offset, find_writable_segment, install, on_request, park, sigwrap,
    spawn_manager, sys, tree, PARK_SIGNAL,
};

/// Starts the agent of a tree member: handlers and a manager that answers tree rounds.
pub(crate) fn start_member(root: i32, cfg: Config) {
    tree::OWN_PID.store(sys::getpid(), SeqCst);
    tree::ROOT_PID.store(root, SeqCst);
    tree::MEMBER.store(true, SeqCst);
    let _ = tree::ROOT_DIR.set(cfg.dir.clone());
    manager::ATTEMPT.store(cfg.attempt, SeqCst);
    manager::SLURM.store(cfg.slurm, SeqCst);
    find_writable_segment();
    find_rseq_offset();
    if !install(PARK_SIGNAL, park::on_park) || !install(cfg.request_sig, on_request) {
        sys::write_err(&[b"torpor: cannot install signal handlers; checkpointing disabled\n"]);
        return;
    }
    sigwrap::own_sigterm();
    let _ = tree::CFG.set(cfg.clone());
    register_atfork();
    tree::lazy::init(cfg.request_sig, lazy_start);
    if tree::lazy::possible() {
        // No thread until a round (or a SIGTERM) needs one.
        tree::lazy::become_lazy(manager::REQ.load(SeqCst), sigwrap::TERM.load(SeqCst));
        return;
    }
    spawn_manager(cfg, 0, sigwrap::TERM.load(SeqCst));
}

/// Starts a lazy member's manager (from a signal handler at a safe point, see
/// `tree::lazy`): every request and SIGTERM since the member became lazy is new to it.
pub(crate) fn lazy_start() {
    let Some(cfg) = tree::CFG.get() else { return };
    spawn_manager(
        cfg.clone(),
        tree::lazy::SEEN_REQ.load(SeqCst),
        tree::lazy::SEEN_TERM.load(SeqCst),
    );
}

extern "C" fn atfork_prepare() {
    alloc::fork_prepare();
}

extern "C" fn atfork_parent() {
    alloc::fork_done();
}

/// In a fork child of a tree process: it becomes a member, lazy (no thread until a
/// round needs it) where possible.
extern "C" fn atfork_child() {
    tree::OWN_PID.store(sys::getpid(), SeqCst);
    alloc::fork_done();
    tree::close_round_fds();
    if !manager::ACTIVE.load(SeqCst) && !tree::lazy::LAZY.load(SeqCst) {
        return;
    }
    manager::ACTIVE.store(false, SeqCst);
    manager::BUSY.store(false, SeqCst);
    manager::WRITER_PIDFD.store(-1, SeqCst);
    if !tree::MEMBER.load(SeqCst) {
        tree::MEMBER.store(true, SeqCst);
        tree::ROOT_PID.store(manager::ROOT_SELF.load(SeqCst), SeqCst);
    }
    if tree::lazy::possible() {
        tree::lazy::become_lazy(manager::REQ.load(SeqCst), sigwrap::TERM.load(SeqCst));
        return;
    }
    let Some(cfg) = tree::CFG.get() else { return };
    let _ = std::panic::catch_unwind(|| {
        spawn_manager(
            cfg.clone(),
            manager::REQ.load(SeqCst),
            sigwrap::TERM.load(SeqCst),
        )
    });
}

pub(crate) fn register_atfork() {
    // SAFETY: registers plain extern "C" handlers.
    unsafe {
        libc::pthread_atfork(
            Some(atfork_prepare),
            Some(atfork_parent),
            Some(atfork_child),
        );
    }
}

/// Blocks every signal but the request for the calling thread (a member's manager): the
/// root asks this thread directly (a signal to a thread dies with it if the program
/// execs, where one to the process would meet the default action and kill it).
fn member_mask(request_sig: i32) {
    // SAFETY: sets this thread's own mask from a local set.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, request_sig);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
}

/// A member's manager: answers the root's tree rounds; forwards requests sent to it
/// directly to the root; applies the program's SIGTERM disposition at once.
pub(crate) fn member_main(cfg: Config, mut seen: u32, mut seen_term: u32) {
    member_mask(cfg.request_sig);
    // The round this process last joined: the root asks again until a member answers,
    // and a late copy of its request is not a new one.
    let mut joined: i32 = 0;
    manager::MANAGER_TID.store(sys::gettid(), SeqCst);
    let mut root = tree::ROOT_PID.load(SeqCst);
    // SIGTERM arrived (and is held) since this time.
    let mut term_since: Option<u64> = None;
    loop {
        let term = sigwrap::TERM.load(SeqCst);
        if term != seen_term {
            seen_term = term;
            term_since.get_or_insert(sys::now_ns());
        }
        if let Some(t0) = term_since {
            // Held for a moment: in a preemption the root got the same SIGTERM and takes
            // a final checkpoint of the whole tree, which needs this process alive.
            // SAFETY: kill with signal 0 only checks existence.
            let root_gone = unsafe { libc::kill(root, 0) } != 0;
            if root_gone || sys::now_ns() - t0 > TERM_HOLD_NS {
                term_since = None;
                sigwrap::apply_program_sigterm();
                continue;
            }
        }
        let cur = manager::REQ.load(SeqCst);
        if cur == seen {
            let wait = if term_since.is_some() {
                10_000_000
            } else {
                60_000_000_000
            };
            sys::futex_wait(&manager::REQ, cur, wait);
            continue;
        }
        seen = cur;
        let id = manager::REQ_ID.load(SeqCst);
        if id == joined {
            continue;
        }
        match tree::read_round(&cfg.dir) {
            Some((rid, tmp)) if rid == id => {
                joined = id;
                let out = manager::member_checkpoint(&cfg, id, &tmp);
                if matches!(out, Outcome::Restored) {
                    // A restored thread starts with every signal blocked.
                    member_mask(cfg.request_sig);
                    if manager::IN_PIDNS.load(SeqCst) == 0 {
                        // New pids: the root's pid changed too.
                        if let Some(r) = tree::root_after_restore(cfg.park_sig) {
                            root = r;
                            tree::ROOT_PID.store(r, SeqCst);
                        }
                    }
                    // The image may have been taken on SIGTERM; this run was not asked
                    // to stop.
                    term_since = None;
                    seen_term = sigwrap::TERM.load(SeqCst);
                }
                if let Outcome::Failed(e) = &out {
                    if cfg.verbose && e != tree::NOT_LISTED {
                        eprintln!(
                            "torpor: process {}: tree checkpoint failed: {e}",
                            sys::getpid()
                        );
                    }
                }
                if term_since.is_some() && !matches!(out, Outcome::Restored) {
                    // The root commits after every writer is done: stay until it
                    // closed the round (our exit could end the root's wait(), and the
                    // root with it, before the commit).
                    let t0 = sys::now_ns();
                    while tree::read_round(&cfg.dir).is_some_and(|(r, _)| r == rid)
                        // SAFETY: kill with signal 0 only checks existence.
                        && unsafe { libc::kill(root, 0) } == 0
                        && sys::now_ns() - t0 < 30_000_000_000
                    {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    term_since = None;
                    sigwrap::apply_program_sigterm();
                }
            }
            // A tree round's request that came late (the round is over): nothing to do.
            _ if tree::is_round_id(id) => {}
            _ if cfg.slurm && manager::REQ_CODE.load(SeqCst) != libc::SI_QUEUE => {
                // A job-wide request (`scancel --signal`, what `torpor checkpoint JOBID`
                // sends) reaches every process of the step, the root included: forwarding
                // it too would give the root a second request and a second generation.
            }
            _ => {
                // A request meant for the tree: the root takes it.
                let val = libc::sigval {
                    sival_ptr: id as usize as *mut libc::c_void,
                };
                // SAFETY: sigqueue with a plain value to the root of our tree.
                unsafe { libc::sigqueue(root, cfg.request_sig, val) };
            }
        }
    }
}

/// How long a member holds a SIGTERM for the root's final checkpoint to begin.
const TERM_HOLD_NS: u64 = 500_000_000;
