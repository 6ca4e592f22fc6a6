//! The writer child: the single-threaded copy-on-write copy of the paused program that
//! the manager forks. It writes the process image (and, for a single process, commits
//! the generation) with raw syscalls and the agent's own allocator only.

use std::sync::atomic::{AtomicPtr, Ordering::SeqCst};

use torpor_engine::capture::{self, CaptureInput};
use torpor_engine::records::TimerSnap;
use torpor_image::store::{Manifest, Pending};

use crate::fds::{FDS, LOCKS};
use crate::manager::{IN_PIDNS, TORPOR_RESTORE_INFO, WSEG_END, WSEG_START};
use crate::park::THREADS;
use crate::{alloc, sys};

/// What the writer child needs, published through a pointer before the pause.
pub(crate) struct ChildArgs {
    pub(crate) pending: *const Pending,
    pub(crate) nthreads: usize,
    pub(crate) nfds: usize,
    pub(crate) timers: *const TimerSnap,
    pub(crate) ntimers: usize,
    pub(crate) nlocks: usize,
    pub(crate) itimers: [(u64, u64); 3],
    pub(crate) patch: *mut u8,
    pub(crate) patch_len: usize,
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) time_unix: f64,
    pub(crate) attempt: u32,
    pub(crate) err_fd: i32,
    pub(crate) capture_limit: u64,
    /// Commit the generation in the writer (single process); a tree's root commits
    /// after every process of the tree has been written.
    pub(crate) commit: bool,
    /// Tree rounds: pipe (read, write) the writer waits on until the tree is released
    /// (EOF), so that writers do not compete for the CPUs with the paused tree.
    pub(crate) gate: [i32; 2],
    /// Write an incremental image on this parent (null: full).
    pub(crate) incr: *const Parent,
}

/// The generation an incremental image builds on (prepared before the pause).
pub(crate) struct Parent {
    pub(crate) link: torpor_image::meta::ParentRef,
    pub(crate) image: std::path::PathBuf,
}
pub(crate) static CHILD_ARGS: AtomicPtr<ChildArgs> = AtomicPtr::new(std::ptr::null_mut());

/// The byte the writer child sends through its error pipe once the image is durable.
pub(crate) const DURABLE: u8 = 0x06;

/// The writer child: single-threaded copy of the paused program.
pub(crate) fn child_main() -> ! {
    let a = CHILD_ARGS.load(SeqCst);
    // SAFETY: published by the manager before the pause; the memory is our private copy.
    let a = unsafe { &*a };
    // A generation is committed only while its program lives: if the program is killed
    // mid-checkpoint, its writer dies with it and leaves an uncommitted temporary (cleaned
    // by the next round), never a generation that races with a restore of an older one.
    // A tree member's writer is the exception: the member was part of the round's cut
    // and may exit once released (a short-lived child); its writer finishes the image
    // and reports it (`.done`), and the root, which commits, still lives.
    let member = crate::tree::MEMBER.load(SeqCst);
    // SAFETY: prctl/getppid on ourselves.
    unsafe {
        if !member {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        }
        if libc::getppid() != a.pid {
            libc::syscall(libc::SYS_exit_group, 1);
        }
    }
    let (ws, we) = (WSEG_START.load(SeqCst), WSEG_END.load(SeqCst));
    // Keep the agent's data as it was at the pause, before we change any of it.
    if !a.patch.is_null() && we > ws && a.patch_len as u64 >= we - ws {
        // SAFETY: the writable segment is mapped readable; the buffer is big enough.
        unsafe { std::ptr::copy_nonoverlapping(ws as *const u8, a.patch, (we - ws) as usize) };
    }
    alloc::enter_child_mode();
    if a.gate[0] >= 0 {
        let mut b = [0u8; 1];
        // SAFETY: our copies of the gate pipe: drop the write end, wait for EOF.
        unsafe {
            libc::close(a.gate[1]);
            while libc::read(a.gate[0], b.as_mut_ptr() as *mut libc::c_void, 1) < 0
                && sys::errno() == libc::EINTR
            {}
            libc::close(a.gate[0]);
        }
    }
    // SAFETY: PR_SET_NAME with a NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"torpor-writer".as_ptr()) };
    let res = child_write(a, ws, we);
    if member {
        // SAFETY: published by the manager, alive in our copy of its frame.
        let pending = unsafe { &*a.pending };
        crate::tree::writer_report(
            pending.path(),
            a.pid,
            res.as_ref().err().map(String::as_str),
        );
    }
    let code = match res {
        Ok(()) => {
            // The image is durable (and committed when `a.commit`): tell the manager now
            // rather than by exiting, since tearing down this copy of a large address
            // space takes a while (~25 ms per GiB) and holds up nobody else.
            // SAFETY: err_fd is the write end of our pipe.
            unsafe { libc::write(a.err_fd, [DURABLE].as_ptr() as *const libc::c_void, 1) };
            0
        }
        Err(msg) => {
            // SAFETY: err_fd is the write end of our pipe.
            unsafe { libc::write(a.err_fd, msg.as_ptr() as *const libc::c_void, msg.len()) };
            1
        }
    };
    // SAFETY: ends this process without running any exit handlers.
    unsafe { libc::syscall(libc::SYS_exit_group, code) };
    unreachable!()
}

fn child_write(a: &ChildArgs, ws: u64, we: u64) -> Result<(), String> {
    // SAFETY: published by the manager, alive in our copy of its frame.
    let pending = unsafe { &*a.pending };
    // SAFETY: all threads were parked at the fork; the records are complete.
    let threads = unsafe { THREADS.first(a.nthreads) };
    // SAFETY: filled during the pause; nobody writes it here.
    let fds = unsafe { &(&*FDS.0.get())[..a.nfds] };
    let patch = if a.patch.is_null() {
        None
    } else {
        // SAFETY: the buffer holds the copy made at the top of child_main.
        Some((ws, unsafe {
            std::slice::from_raw_parts(a.patch, (we - ws) as usize)
        }))
    };
    // SAFETY: plain struct in agent memory.
    let ri = TORPOR_RESTORE_INFO.0.get() as u64;
    let timers = if a.timers.is_null() {
        &[][..]
    } else {
        // SAFETY: the manager's vector, alive in our copy of its frame.
        unsafe { std::slice::from_raw_parts(a.timers, a.ntimers) }
    };
    let input = CaptureInput {
        pid: a.pid,
        ppid: a.ppid,
        threads,
        fds,
        timers,
        // SAFETY: filled during the pause; nobody writes it here.
        locks: unsafe { &(&*LOCKS.0.get())[..a.nlocks] },
        itimers: a.itimers,
        restore_info_addr: ri,
        skip: &alloc::is_child_region,
        scratch: &crate::dirty::own_ranges(),
        patch,
        generation: pending.generation(),
        attempt: a.attempt,
        time_unix: a.time_unix,
        in_restore_pidns: IN_PIDNS.load(SeqCst) != 0,
        capture_limit: a.capture_limit,
        incremental: if a.incr.is_null() {
            None
        } else {
            // SAFETY: the manager's value, alive in our copy of its frame.
            let p = unsafe { &*a.incr };
            let (clean, dirty) = crate::dirty::last_scan();
            Some(capture::Incremental {
                parent: p.link.clone(),
                parent_image: &p.image,
                clean,
                // SAFETY: PageRegion is three u64 fields, repr(C).
                dirty: unsafe {
                    std::slice::from_raw_parts(dirty.as_ptr() as *const [u64; 3], dirty.len())
                },
            })
        },
    };
    let cap = capture::write_process_image(pending, &input).map_err(|e| e.to_string())?;
    if !a.commit {
        return Ok(());
    }
    // A single process: its pipes and socket pairs must have both ends in it.
    crate::tree::check_images(&[(a.pid, pending.path().join(&cap.process.image))], &[])?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    pending
        .commit(Manifest {
            generation: 0,
            attempt: a.attempt,
            time_unix: a.time_unix,
            hostname: host.trim().to_string(),
            processes: vec![cap.process],
            bytes: cap.bytes,
            parent: cap.parent,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
