//! Image container, validation: structural checks on the metadata of an image before
//! anything in it is trusted or mapped.

use super::{HEADER_LEN, MAX_COMPRESSED_CHUNK, MAX_FDS, MAX_REGIONS, MAX_THREADS, USER_SPACE_END};
use crate::meta::{Codec, ProcessMeta, RegionKind};
use crate::PAGE_SIZE;

/// Structural checks on metadata, before anything is trusted or mapped: `ImageReader`
/// applies them to every image; public for tools and the fuzz target. `data_end` is the
/// offset where the metadata starts (chunks must end before it).
pub fn validate_meta(m: &ProcessMeta, data_end: u64) -> Result<(), String> {
    validate(m, data_end)
}

pub(super) fn validate(m: &ProcessMeta, data_end: u64) -> Result<(), String> {
    if m.threads.is_empty() || m.threads.len() > MAX_THREADS {
        return Err(format!("{} threads", m.threads.len()));
    }
    if m.threads.iter().filter(|t| t.is_main).count() != 1 {
        return Err("not exactly one main thread".into());
    }
    if m.regions.len() > MAX_REGIONS || m.fds.len() > MAX_FDS {
        return Err(format!("{} regions, {} fds", m.regions.len(), m.fds.len()));
    }
    let mut prev_end = 0u64;
    for r in &m.regions {
        if r.start % PAGE_SIZE != 0
            || r.end % PAGE_SIZE != 0
            || r.start >= r.end
            || r.end > USER_SPACE_END
            || r.start < prev_end
        {
            return Err(format!("region {:#x}-{:#x} is malformed", r.start, r.end));
        }
        if r.pages_saved > (r.end - r.start) / PAGE_SIZE {
            return Err(format!("region {:#x} claims too many pages", r.start));
        }
        if r.inherit && m.parent.is_none() {
            return Err(format!(
                "region {:#x} inherits pages but the image names no parent",
                r.start
            ));
        }
        if !r.inherit && !r.written.is_empty() {
            return Err(format!(
                "region {:#x} lists written pages but is full",
                r.start
            ));
        }
        let mut w_end = r.start;
        for &[a, b] in &r.written {
            if a % PAGE_SIZE != 0 || b % PAGE_SIZE != 0 || a >= b || a < w_end || b > r.end {
                return Err(format!(
                    "region {:#x}: written range {a:#x}-{b:#x} is malformed",
                    r.start
                ));
            }
            w_end = b;
        }
        prev_end = r.end;
    }
    for c in &m.chunks {
        let stored_end = c.offset.saturating_add(c.stored_len);
        let pieces_ok = if c.runs.is_empty() {
            covered(m, c.vaddr, c.vaddr.saturating_add(c.len), false)
        } else {
            // Gathered: sorted, disjoint page runs adding up to `len`, each inside one
            // private region (a shared mapping's pages are never gathered).
            let mut prev = 0u64;
            let mut sum = 0u64;
            let mut ok = c.vaddr == c.runs[0][0] && c.runs.len() <= MAX_RUNS;
            for &[a, b] in &c.runs {
                ok = ok
                    && a % PAGE_SIZE == 0
                    && b % PAGE_SIZE == 0
                    && a < b
                    && a >= prev
                    && covered(m, a, b, true);
                prev = b;
                sum = sum.saturating_add(b.saturating_sub(a));
            }
            ok && sum == c.len
        };
        if !pieces_ok
            || c.len % PAGE_SIZE != 0
            || c.len == 0
            || c.offset < HEADER_LEN
            || stored_end > data_end
            || !match c.codec {
                Codec::Raw => c.stored_len == c.len && c.offset % PAGE_SIZE == 0,
                Codec::Lz4 => c.stored_len > 0 && c.stored_len < c.len,
            }
        {
            return Err(format!("chunk at {:#x}+{} is malformed", c.vaddr, c.len));
        }
    }
    for f in &m.fds {
        if f.fd < 0 || f.fd > 1 << 20 {
            return Err(format!("fd {} out of range", f.fd));
        }
    }
    let in_region = |a: u64| m.regions.iter().any(|r| r.start <= a && a < r.end);
    for t in &m.threads {
        // Stage 2 jumps into the saved context: it must lie in memory the image maps.
        if !in_region(t.ctx_addr) {
            return Err(format!(
                "thread {} context at {:#x} is outside the saved memory",
                t.tid, t.ctx_addr
            ));
        }
    }
    let mm = &m.mm;
    for (name, a) in [
        ("start_code", mm.start_code),
        ("end_code", mm.end_code),
        ("start_data", mm.start_data),
        ("end_data", mm.end_data),
        ("start_brk", mm.start_brk),
        ("brk", mm.brk),
        ("start_stack", mm.start_stack),
        ("arg_start", mm.arg_start),
        ("arg_end", mm.arg_end),
        ("env_start", mm.env_start),
        ("env_end", mm.env_end),
    ] {
        if a > USER_SPACE_END {
            return Err(format!("mm {name} {a:#x} is outside user space"));
        }
    }
    if m.auxv.len() > MAX_AUXV || m.sigactions.len() > 64 || m.locks.len() > MAX_FDS {
        return Err(format!(
            "{} auxv entries, {} signal actions, {} locks",
            m.auxv.len(),
            m.sigactions.len(),
            m.locks.len()
        ));
    }
    Ok(())
}

/// Whether the pages `[a, b)` lie inside one region of `m` (regions are sorted and
/// disjoint, checked before) and, for an inheriting region, inside one of its `written`
/// ranges; with `private`, the region must not be shared memory.
fn covered(m: &ProcessMeta, a: u64, b: u64, private: bool) -> bool {
    let i = m.regions.partition_point(|r| r.end <= a);
    let Some(r) = m.regions.get(i) else {
        return false;
    };
    if !(r.start <= a && b <= r.end) {
        return false;
    }
    if private && matches!(r.kind, RegionKind::SharedAnon | RegionKind::FileShared) {
        return false;
    }
    if !r.inherit {
        return true;
    }
    let j = r.written.partition_point(|w| w[1] <= a);
    r.written.get(j).is_some_and(|w| w[0] <= a && b <= w[1])
}

/// Most page runs in one gathered chunk (one per page of the largest chunk).
const MAX_RUNS: usize = MAX_COMPRESSED_CHUNK / PAGE_SIZE as usize;

/// Upper bound on auxiliary vector entries (the kernel writes about 20).
const MAX_AUXV: usize = 256;
