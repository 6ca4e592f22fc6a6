//! Restore stage 1, plan: serializes the flat plan that stage 2 follows.

use torpor_image::meta::*;

use super::my_uid;
use crate::plan::*;

fn push<T: Copy>(buf: &mut Vec<u8>, v: &T) {
    // SAFETY: T is one of the plain repr(C) plan records (integers only, no padding
    // with undefined contents that matters to the reader, which reads the same layout).
    let b =
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) };
    buf.extend_from_slice(b);
}

fn kind_code(k: RegionKind) -> u32 {
    match k {
        RegionKind::Anon | RegionKind::Heap | RegionKind::DeletedFile => KIND_ANON,
        RegionKind::Stack => KIND_STACK,
        RegionKind::FilePrivate => KIND_FILE_PRIVATE,
        RegionKind::FileShared => KIND_FILE_SHARED,
        RegionKind::SharedAnon => KIND_SHARED_ANON,
    }
}

/// Threads stage 2 uses to fill memory: 2 when this process may run on 2 or more CPUs;
/// `TORPOR_RESTORE_THREADS=1` forces one (for comparisons).
fn fill_threads() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = std::env::var("TORPOR_RESTORE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2);
    want.clamp(1, 2).min(cpus) as u64
}

/// Serializes the plan that stage 2 follows.
pub fn build_plan(meta: &ProcessMeta, image_fd: i32, plan_fd: i32, same_pids: bool) -> Vec<u8> {
    build_plan_closing(meta, image_fd, plan_fd, same_pids, &[])
}

/// [`build_plan`], with fds that stage 2 closes after mapping the regions.
pub fn build_plan_closing(
    meta: &ProcessMeta,
    image_fd: i32,
    plan_fd: i32,
    same_pids: bool,
    close: &[i32],
) -> Vec<u8> {
    build_plan_chain(meta, image_fd, &[], plan_fd, same_pids, close)
}

/// [`build_plan_closing`] for an incremental image: `chain` are its parent, grandparent,
/// ... back to a full image, each with the fd stage 2 reads it from. Every page comes
/// from the newest image of the chain that describes it (chain::resolve).
pub fn build_plan_chain(
    meta: &ProcessMeta,
    image_fd: i32,
    chain: &[(&ProcessMeta, i32)],
    plan_fd: i32,
    same_pids: bool,
    close: &[i32],
) -> Vec<u8> {
    let mut close_fds = [-1i64; 8];
    for (slot, &fd) in close_fds.iter_mut().zip(close) {
        *slot = fd as i64;
    }
    let mut chain_fds = [-1i64; MAX_CHAIN];
    for (slot, (_, fd)) in chain_fds.iter_mut().zip(chain) {
        *slot = *fd as i64;
    }
    let all: Vec<(&ProcessMeta, i32)> = std::iter::once((meta, image_fd))
        .chain(chain.iter().copied())
        .collect();
    let mut strings = vec![0u8];
    let mut regions = Vec::new();
    let mut extents = Vec::new();
    let sorted: Vec<Vec<super::chain::Piece>> = all
        .iter()
        .map(|(m, _)| super::chain::pieces_of(&m.chunks))
        .collect();
    for r in &meta.regions {
        let first = extents.len() as u64;
        super::chain::resolve(r, &all, &sorted, &mut extents);
        let kind = kind_code(r.kind);
        let path_off = if matches!(kind, KIND_FILE_PRIVATE | KIND_FILE_SHARED) {
            let off = strings.len() as u64;
            strings.extend_from_slice(r.name.as_bytes());
            strings.push(0);
            off
        } else {
            0
        };
        regions.push(PlanRegion {
            start: r.start,
            end: r.end,
            prot: r.prot,
            kind,
            path_off,
            file_offset: r.offset,
            first_extent: first,
            nextents: extents.len() as u64 - first,
        });
    }
    let threads: Vec<PlanThread> = meta
        .threads
        .iter()
        .map(|t| PlanThread {
            tid: t.tid as i64,
            is_main: t.is_main as u64,
            ctx_addr: t.ctx_addr,
            fs_base: t.fs_base,
            gs_base: t.gs_base,
            clear_tid: t.clear_tid,
            robust_head: t.robust_head,
            robust_len: t.robust_len,
            rseq_addr: t.rseq_addr,
            rseq_len: t.rseq_len as u64,
            rseq_sig: t.rseq_sig as u64,
        })
        .collect();
    let sigs: Vec<PlanSig> = meta
        .sigactions
        .iter()
        .map(|s| PlanSig {
            signo: s.signo as u64,
            handler: s.handler,
            flags: s.flags,
            restorer: s.restorer,
            mask: s.mask,
        })
        .collect();
    let fds: Vec<PlanFd> = meta
        .fds
        .iter()
        .filter(|f| f.kind != FdKind::Stdio)
        .map(|f| PlanFd {
            fd: f.fd as i64,
            cloexec: f.cloexec as u64,
        })
        .collect();
    let timers: Vec<PlanTimer> = meta
        .timers
        .iter()
        .map(|t| PlanTimer {
            id: t.id as i64,
            clock: t.clock as i64,
            signo: t.signo as i64,
            notify: t.notify as i64,
            tid: t.tid as i64,
            value: t.value,
            interval_ns: t.interval_ns,
            value_ns: t.value_ns,
        })
        .collect();
    let mut itimers = [[0u64; 2]; 3];
    for (i, &(a, b)) in meta.itimers.iter().take(3).enumerate() {
        itimers[i] = [a, b];
    }
    let sz = |n: usize, each: usize| (n * each) as u64;
    let thp = std::env::var("TORPOR_RESTORE_THP").as_deref() == Ok("1");
    // TORPOR_RESTORE_COPY=0 turns UFFDIO_COPY off (for comparisons, or a kernel where
    // it misbehaves). Huge pages come from page faults, which UFFDIO_COPY does not take.
    let copy = !thp && std::env::var("TORPOR_RESTORE_COPY").as_deref() != Ok("0");
    let mut h = PlanHeader {
        magic: PLAN_MAGIC,
        nregions: regions.len() as u64,
        nextents: extents.len() as u64,
        nthreads: threads.len() as u64,
        nsigs: sigs.len() as u64,
        nfds: fds.len() as u64,
        auxv_len: 0,
        image_fd: image_fd as i64,
        plan_fd: plan_fd as i64,
        same_pids: same_pids as u64,
        mm: [
            meta.mm.start_code,
            meta.mm.end_code,
            meta.mm.start_data,
            meta.mm.end_data,
            meta.mm.start_brk,
            meta.mm.brk,
            meta.mm.start_stack,
            meta.mm.arg_start,
            meta.mm.arg_end,
            meta.mm.env_start,
            meta.mm.env_end,
        ],
        vvar_start: meta.vdso.vvar_start,
        vvar_len: meta.vdso.vvar_len,
        vdso_start: meta.vdso.vdso_start,
        vdso_len: meta.vdso.vdso_len,
        restore_info: meta.agent.restore_info,
        ntimers: timers.len() as u64,
        itimers,
        drop_caps: (same_pids && my_uid() != 0) as u64,
        fill_threads: fill_threads(),
        // Off by default: on the VMs measured, clearing fresh 2 MiB pages (handed back
        // to the host by free page reporting) cost ~9x 4 KiB pages (ADR 0010).
        thp: thp as u64,
        scratch_len: extents
            .iter()
            .filter(|e| e.codec != CODEC_RAW)
            .map(|e| e.stored_len.next_multiple_of(4096))
            .max()
            .unwrap_or(0),
        // While copying (stage 2 copy.rs) every compressed chunk is decoded aside.
        dec_len: extents
            .iter()
            .filter(|e| e.codec != CODEC_RAW && (copy || e.skip != 0 || e.dec_len != e.len))
            .map(|e| e.dec_len.next_multiple_of(4096))
            .max()
            .unwrap_or(0),
        chain_fds,
        copy: copy as u64,
        attempt_plus1: std::env::var("TORPOR_ATTEMPT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|a| a + 1)
            .unwrap_or(0),
        close_fds,
        ..Default::default()
    };
    let mut off = std::mem::size_of::<PlanHeader>() as u64;
    h.regions_off = off;
    off += sz(regions.len(), std::mem::size_of::<PlanRegion>());
    h.extents_off = off;
    off += sz(extents.len(), std::mem::size_of::<PlanExtent>());
    h.threads_off = off;
    off += sz(threads.len(), std::mem::size_of::<PlanThread>());
    h.sigs_off = off;
    off += sz(sigs.len(), std::mem::size_of::<PlanSig>());
    h.fds_off = off;
    off += sz(fds.len(), std::mem::size_of::<PlanFd>());
    h.timers_off = off;
    off += sz(timers.len(), std::mem::size_of::<PlanTimer>());
    h.auxv_off = off;
    h.strings_off = off;
    off += strings.len() as u64;
    h.total_len = off;
    let mut buf = Vec::with_capacity(off as usize);
    push(&mut buf, &h);
    regions.iter().for_each(|x| push(&mut buf, x));
    extents.iter().for_each(|x| push(&mut buf, x));
    threads.iter().for_each(|x| push(&mut buf, x));
    sigs.iter().for_each(|x| push(&mut buf, x));
    fds.iter().for_each(|x| push(&mut buf, x));
    timers.iter().for_each(|x| push(&mut buf, x));
    buf.extend_from_slice(&strings);
    buf
}
