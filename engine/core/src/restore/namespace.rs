//! Restore stage 1, pids: a user+pid+mount namespace in which the program gets its
//! original pid back, and the waiting processes that forward signals and mirror its exit.

use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

use super::{fds_open, my_uid};
use crate::plan::CloneArgs;

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: i32) {
    let pid = FORWARD_TO.load(SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The request signal: forwarded only when it was queued to this process (`torpor
/// checkpoint --pid`, with its request id). Sent with kill/killpg (Slurm's `scancel
/// --signal`), it reaches the restored program directly, being in the same process group
/// and cgroup; forwarding it too would ask for a checkpoint once per waiting process.
extern "C" fn forward_request(sig: i32, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let pid = FORWARD_TO.load(SeqCst);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, value) = unsafe { ((*info).si_code, (*info).si_value()) };
    if pid > 0 && code == libc::SI_QUEUE {
        // SAFETY: sigqueue is async-signal-safe; passes the request id on.
        unsafe { libc::sigqueue(pid, sig, value) };
    }
}

/// Waits for `child` while forwarding signals to it, then exits the way it did.
fn wait_and_mirror(child: i32, reap_all: bool) -> ! {
    FORWARD_TO.store(child, SeqCst);
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGCONT,
        libc::SIGALRM,
    ] {
        // SAFETY: installs a handler that only calls kill.
        unsafe { libc::signal(sig, forward as *const () as usize) };
    }
    let request = std::env::var("TORPOR_SIGNAL")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s: &i32| (34..=64).contains(&s) && s != 61 || s == 10 || s == 12)
        .unwrap_or(38);
    // SAFETY: installs a handler that only calls sigqueue; a zeroed sigaction is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = forward_request as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(request, &sa, std::ptr::null_mut());
    }
    let mut child_status: Option<i32> = None;
    loop {
        let mut st = 0;
        // SAFETY: waits for our children.
        let w = unsafe { libc::waitpid(if reap_all { -1 } else { child }, &mut st, libc::__WALL) };
        if w < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                // Pid 1 of the namespace: the program and every orphan of its tree
                // have ended; end the way the program did.
                Some(libc::ECHILD) if child_status.is_some() => {
                    st = child_status.unwrap_or(0);
                }
                _ => std::process::exit(127),
            }
        } else if w == child && reap_all && !libc::WIFSIGNALED(st) {
            // Exited normally: orphans of its tree run on until they end too.
            child_status = Some(st);
            continue;
        } else if w != child {
            continue;
        }
        {
            if libc::WIFSIGNALED(st) {
                let sig = libc::WTERMSIG(st);
                // SAFETY: re-raise the same signal with its default action.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::kill(libc::getpid(), sig);
                }
                std::process::exit(128 + sig);
            }
            std::process::exit(libc::WEXITSTATUS(st));
        }
    }
}

fn write_file(path: &str, s: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(s.as_bytes())
}

/// Environment knob, for tests and diagnosis: behave as if unprivileged user
/// namespaces were not available (restore with new pids).
pub const NO_USERNS_VAR: &str = "TORPOR_NO_USERNS";

/// Why user namespaces cannot be used here, when that is known before trying:
/// [`NO_USERNS_VAR`], `user.max_user_namespaces` 0, or (not root)
/// `kernel.apparmor_restrict_unprivileged_userns` 1. A failing `unshare` (EPERM,
/// ENOSPC, EINVAL) is the other way to find out.
pub fn userns_unavailable() -> Option<String> {
    if std::env::var_os(NO_USERNS_VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        return Some(format!("{NO_USERNS_VAR} is set"));
    }
    let num = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if num("/proc/sys/user/max_user_namespaces") == Some(0) {
        return Some("user.max_user_namespaces is 0".into());
    }
    if my_uid() != 0 && num("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        return Some("kernel.apparmor_restrict_unprivileged_userns is 1".into());
    }
    None
}

/// Enters a new user+pid+mount namespace and becomes `orig_pid` in it. Returns in the
/// process that will become the restored program; the others wait and mirror its exit.
pub(super) fn enter_pid_namespace(orig_pid: i32) -> Result<(), String> {
    if orig_pid <= 1 {
        return Err("original pid 1 cannot be restored in a namespace".into());
    }
    if let Some(why) = userns_unavailable() {
        return Err(format!("user namespaces are not available ({why})"));
    }
    let (uid, gid) = (my_uid(), {
        // SAFETY: getgid cannot fail.
        unsafe { libc::getgid() }
    });
    // SAFETY: unshare affects only this (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    // From here on a failure cannot fall back to new pids: this process already has a
    // pending pid namespace (no threads can be created in it).
    let fatal = |what: &str, e: std::io::Error| -> ! {
        eprintln!("torpor-restore: entering the restore namespace: {what}: {e}");
        std::process::exit(127);
    };
    // A single mapping of our own ids is what an unprivileged process may write itself.
    if let Err(e) = write_file("/proc/self/setgroups", "deny") {
        fatal("setgroups", e);
    }
    if let Err(e) = write_file("/proc/self/uid_map", &format!("{uid} {uid} 1")) {
        fatal("uid_map", e);
    }
    if let Err(e) = write_file("/proc/self/gid_map", &format!("{gid} {gid} 1")) {
        fatal("gid_map", e);
    }
    // A handle on ourselves, for the child to tell whether we died before its
    // PR_SET_PDEATHSIG took effect.
    // SAFETY: pidfd_open of our own pid.
    let me = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32;
    // SAFETY: fork in a single-threaded process.
    let init = unsafe { libc::fork() };
    if init < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if init > 0 {
        close_all_but_stdio();
        wait_and_mirror(init, false);
    }
    // Pid 1 of the new namespace: if the waiting task process is killed (Slurm kills the
    // pid it tracks), take the namespace down with it.
    // SAFETY: prctl on ourselves; poll on the pidfd opened before the fork.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if me >= 0 {
            let mut p = libc::pollfd {
                fd: me,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut p, 1, 0) > 0 {
                libc::_exit(137); // the waiting task process is already gone
            }
            libc::close(me);
        }
    }
    // Give it its own /proc so tids read there are ours.
    // SAFETY: mount calls with NUL-terminated strings, in our own mount namespace.
    unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
    }
    let want = orig_pid;
    let ca = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: &want as *const i32 as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    // SAFETY: fork-like clone3 (no CLONE_VM, no new stack) with set_tid.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &ca as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        eprintln!(
            "torpor-restore: cannot create pid {orig_pid}: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(127);
    }
    if pid > 0 {
        close_all_but_stdio();
        wait_and_mirror(pid as i32, true);
    }
    if uid != 0 {
        keep_checkpoint_restore_cap();
    }
    Ok(())
}

/// A non-root user loses its namespace capabilities at execve. Stage 2 needs
/// CAP_CHECKPOINT_RESTORE to create threads with their original tids: keep that one
/// capability across the exec as an ambient capability. Stage 2 drops it in every
/// thread before the program resumes.
fn keep_checkpoint_restore_cap() {
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    #[repr(C)]
    struct Hdr {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Hdr {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with the v3 header and two data words.
    unsafe {
        libc::syscall(libc::SYS_capget, &mut h as *mut Hdr, d.as_mut_ptr());
        d[1].inheritable |= 1 << (CAP_CHECKPOINT_RESTORE - 32);
        libc::syscall(libc::SYS_capset, &mut h as *mut Hdr, d.as_ptr());
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            CAP_CHECKPOINT_RESTORE as libc::c_ulong,
            0,
            0,
        );
    }
}

pub(super) fn close_all_but_stdio() {
    // Not through /proc/self/fd: the outer process shares its mount namespace with the
    // namespace's pid 1, whose fresh /proc (mounted at any moment) does not show it.
    // SAFETY: close_range(3, ~0, 0) closes our own fds above stdio.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0 {
        return;
    }
    for fd in fds_open() {
        if fd > 2 {
            // SAFETY: closing fds in a process that only waits from now on.
            unsafe { libc::close(fd) };
        }
    }
}
