//! Capture, process attributes: memory-descriptor fields, auxv, signal actions, rlimits.

use torpor_image::meta::*;

use super::{read_file, CaptureError};

/// The auxiliary vector as (type, value) pairs, up to AT_NULL.
pub(super) fn auxv() -> Result<Vec<(u64, u64)>, CaptureError> {
    let auxv_raw = read_file("/proc/self/auxv")?;
    let mut auxv = Vec::new();
    for c in auxv_raw.chunks_exact(16) {
        let k = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
        let val = u64::from_le_bytes(c[8..16].try_into().unwrap_or_default());
        auxv.push((k, val));
        if k == 0 {
            break;
        }
    }
    Ok(auxv)
}

pub(super) fn stat_fields() -> Result<Vec<u64>, CaptureError> {
    let s = String::from_utf8_lossy(&read_file("/proc/self/stat")?).into_owned();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    // Field 3 is the first after the command name; index so that f[n] is field n.
    let mut f = vec![0u64; 3];
    f.extend(
        rest.split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0)),
    );
    f.resize(64, 0);
    Ok(f)
}

pub(super) fn sigactions() -> Vec<SigAction> {
    let mut v = Vec::new();
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = [0u64; 4];
        // SAFETY: rt_sigaction with a null new action only writes the old action into
        // `old`, which has the size of the kernel's struct sigaction on x86_64.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                8usize,
            )
        };
        if r == 0 && (old[0] != 0 || old[1] != 0 || old[3] != 0) {
            v.push(SigAction {
                signo: sig,
                handler: old[0],
                flags: old[1],
                restorer: old[2],
                mask: old[3],
            });
        }
    }
    v
}

pub(super) fn rlimits() -> Vec<(u32, u64, u64)> {
    let mut v = Vec::new();
    for r in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 on ourselves with a null new limit only writes `old`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                r,
                std::ptr::null::<libc::rlimit64>(),
                &mut old as *mut libc::rlimit64,
            )
        };
        if rc == 0 {
            v.push((r, old.rlim_cur, old.rlim_max));
        }
    }
    v
}

pub(super) fn hostname() -> String {
    read_file("/proc/sys/kernel/hostname")
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default()
}
