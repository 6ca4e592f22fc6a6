//! The restore plan: a flat, fixed-layout description that stage 1 of `torpor-restore`
//! (full Rust, validates everything) hands to stage 2 (freestanding, no libc, rebuilds the
//! address space). This file is also compiled into stage 2, so it uses `core` only.
//!
//! ```text
//! PlanHeader | regions[nregions] | extents[nextents] | threads[nthreads]
//!            | sigs[nsigs] | fds[nfds] | timers[ntimers] | strings (NUL-terminated)
//! ```
//! Stage 2 maps the plan read-only at [`PLAN_ADDR`].

/// "TPLAN001"
pub const PLAN_MAGIC: u64 = 0x3130_304e_414c_5054;
/// Where stage 2 is linked.
pub const STAGE2_BASE: u64 = 0x3f00_0000_0000;
/// Where stage 2 maps the plan.
pub const PLAN_ADDR: u64 = 0x3f40_0000_0000;
/// Where stage 2 puts the small stacks of the threads it clones.
pub const STACKS_ADDR: u64 = 0x3f50_0000_0000;
/// Size of each of those stacks.
pub const THREAD_STACK: u64 = 64 * 1024;
/// Where stage 2 maps its scratch buffer for compressed chunks (`scratch_len` bytes).
pub const SCRATCH_ADDR: u64 = 0x3f60_0000_0000;
/// Parking spot for the vdso/vvar while they move.
pub const PARK_ADDR: u64 = 0x3f80_0000_0000;
/// End of the address range the restorer occupies; image regions must not overlap
/// `[STAGE2_BASE, RESTORER_END)`.
pub const RESTORER_END: u64 = 0x3f90_0000_0000;

pub const KIND_ANON: u32 = 0;
pub const KIND_FILE_PRIVATE: u32 = 1;
pub const KIND_FILE_SHARED: u32 = 2;
pub const KIND_SHARED_ANON: u32 = 3;
pub const KIND_STACK: u32 = 4;

/// `PlanExtent::codec`: the stored bytes are the pages.
pub const CODEC_RAW: u64 = 0;
/// `PlanExtent::codec`: one LZ4 block that decodes to exactly `len` bytes.
pub const CODEC_LZ4: u64 = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanHeader {
    pub magic: u64,
    pub total_len: u64,
    pub nregions: u64,
    pub nextents: u64,
    pub nthreads: u64,
    pub nsigs: u64,
    pub nfds: u64,
    pub auxv_len: u64,
    pub regions_off: u64,
    pub extents_off: u64,
    pub threads_off: u64,
    pub sigs_off: u64,
    pub fds_off: u64,
    pub auxv_off: u64,
    pub strings_off: u64,
    /// fd of the image file, open in stage 2.
    pub image_fd: i64,
    /// fd of the plan itself.
    pub plan_fd: i64,
    /// 1: threads get their original tids (we are in a fresh pid namespace).
    pub same_pids: u64,
    /// start_code, end_code, start_data, end_data, start_brk, brk, start_stack,
    /// arg_start, arg_end, env_start, env_end.
    pub mm: [u64; 11],
    pub vvar_start: u64,
    pub vvar_len: u64,
    pub vdso_start: u64,
    pub vdso_len: u64,
    /// Address of the agent's `RestoreInfo` in the restored memory.
    pub restore_info: u64,
    pub ntimers: u64,
    pub timers_off: u64,
    /// setitimer values: (interval_ns, value_ns) for REAL, VIRTUAL, PROF.
    pub itimers: [[u64; 2]; 3],
    /// 1: drop all capabilities in every thread before resuming (non-root restore).
    pub drop_caps: u64,
    /// Job attempt of the restoring run plus one (0 = unknown), handed to the agent.
    pub attempt_plus1: u64,
    /// Size of the scratch buffer for compressed chunks (largest stored length of a
    /// compressed extent, page aligned); 0: no compressed extent.
    pub scratch_len: u64,
    /// Threads that fill memory in stage 2 (1 or 2).
    pub fill_threads: u64,
    /// 1: back fully saved, 2 MiB-aligned stretches of private anonymous regions with
    /// transparent huge pages (`MADV_HUGEPAGE` on exactly those stretches).
    pub thp: u64,
    /// fds stage 2 closes once the regions are mapped (shared memory of a process tree
    /// opened through /proc/self/fd); -1 for none.
    pub close_fds: [i64; 8],
    /// Largest decoded length of a compressed extent only part of which is used (an
    /// incremental chain: newer images hold the rest); 0: none. Each fill thread's
    /// scratch is `scratch_len` bytes for stored data then `dec_len` for decoding.
    pub dec_len: u64,
    /// The older images of an incremental chain (extents read from them); stage 2
    /// closes them with `image_fd`. -1 for none.
    pub chain_fds: [i64; MAX_CHAIN],
    /// 1: raw pages of private anonymous regions are copied into place with
    /// `UFFDIO_COPY` where the kernel allows it (stage 2 copy.rs); 0: `pread` only.
    pub copy: u64,
}

/// Longest incremental chain (images, newest included) a restore accepts.
pub const MAX_CHAIN: usize = 16;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanTimer {
    pub id: i64,
    pub clock: i64,
    pub signo: i64,
    pub notify: i64,
    pub tid: i64,
    pub value: u64,
    pub interval_ns: u64,
    pub value_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanRegion {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub kind: u32,
    /// Offset of the file path in the strings area (file kinds), else 0.
    pub path_off: u64,
    pub file_offset: u64,
    pub first_extent: u64,
    pub nextents: u64,
}

/// Bytes to read from an image file into memory: `len` bytes at `vaddr` from
/// `stored_len` bytes at `file_off` of file `fd`, decoded by `codec`. A compressed
/// extent decodes to `dec_len` bytes of which the `len` from `skip` on are used (both
/// equal the whole chunk unless newer images of a chain hold the rest).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanExtent {
    pub vaddr: u64,
    pub len: u64,
    pub file_off: u64,
    pub stored_len: u64,
    pub codec: u64,
    pub fd: i64,
    pub skip: u64,
    pub dec_len: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanThread {
    pub tid: i64,
    pub is_main: u64,
    pub ctx_addr: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub clear_tid: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq_addr: u64,
    pub rseq_len: u64,
    pub rseq_sig: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanSig {
    pub signo: u64,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanFd {
    pub fd: i64,
    pub cloexec: u64,
}

/// The kernel's `struct clone_args` (clone3), used by stage 1 to create the program with
/// its original pid and by stage 2 to create threads with their original tids.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}
