//! Before the pause (allocation allowed): what the round must also save or refuse —
//! POSIX timers, shared writable file mappings, and state the engine cannot capture.

use torpor_engine::capture;
use torpor_engine::records::TimerSnap;

/// POSIX timers listed in /proc/self/timers (times are read later, in the pause).
pub(crate) fn scan_timers() -> Vec<TimerSnap> {
    let text = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    let mut v: Vec<TimerSnap> = Vec::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("ID: ") {
            v.push(TimerSnap {
                id: id.trim().parse().unwrap_or(-1),
                ..TimerSnap::default()
            });
        } else if let Some(t) = v.last_mut() {
            if let Some(sig) = line.strip_prefix("signal: ") {
                let (n, val) = sig.split_once('/').unwrap_or((sig, "0"));
                t.signo = n.trim().parse().unwrap_or(0);
                t.value = u64::from_str_radix(val.trim(), 16).unwrap_or(0);
            } else if let Some(n) = line.strip_prefix("notify: ") {
                // "signal/pid.N", "signal/tid.N" (SIGEV_THREAD_ID), "none/pid.N".
                let (kind, who) = n.split_once('/').unwrap_or((n, ""));
                t.notify = match kind {
                    "none" => 1,
                    _ if who.starts_with("tid.") => 4,
                    _ => 0,
                };
                t.tid = who
                    .rsplit_once('.')
                    .and_then(|x| x.1.parse().ok())
                    .unwrap_or(0);
            } else if let Some(c) = line.strip_prefix("ClockID: ") {
                t.clock = c.trim().parse().unwrap_or(0);
            }
        }
    }
    v.retain(|t| t.id >= 0);
    v
}

/// Shared writable mappings of regular files: (path, name in files/), NUL-terminated.
pub(crate) fn scan_shared_maps() -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for v in torpor_engine::procmaps::parse(&text) {
        let n = v.name.as_str();
        if !(v.shared && v.write && n.starts_with('/'))
            || n.ends_with(" (deleted)")
            || n.starts_with("/dev/")
            || n.starts_with("/SYSV")
            || n.starts_with("/memfd:")
        {
            continue;
        }
        let full = capture::shared_map_name(v.dev_major, v.dev_minor, v.inode);
        let mut name = full.trim_start_matches("files/").as_bytes().to_vec();
        name.push(0);
        if out.iter().any(|(_, m)| *m == name) {
            continue;
        }
        let mut path = n.as_bytes().to_vec();
        path.push(0);
        out.push((path, name));
    }
    out
}

fn ts_ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Reads every timer's remaining time. Runs in the pause: no allocation.
pub(crate) fn snapshot_timers(timers: &mut [TimerSnap]) -> [(u64, u64); 3] {
    for t in timers.iter_mut() {
        // SAFETY: timer_gettime with a kernel timer id into a local struct.
        unsafe {
            let mut its: libc::itimerspec = std::mem::zeroed();
            if libc::syscall(
                libc::SYS_timer_gettime,
                t.id,
                &mut its as *mut libc::itimerspec,
            ) == 0
            {
                t.interval_ns = ts_ns(&its.it_interval);
                t.value_ns = ts_ns(&its.it_value);
            }
        }
    }
    let mut it = [(0u64, 0u64); 3];
    for (which, slot) in it.iter_mut().enumerate() {
        // SAFETY: getitimer into a local struct.
        unsafe {
            let mut v: libc::itimerval = std::mem::zeroed();
            if libc::syscall(
                libc::SYS_getitimer,
                which as i64,
                &mut v as *mut libc::itimerval,
            ) == 0
            {
                let ns =
                    |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
                *slot = (ns(v.it_interval), ns(v.it_value));
            }
        }
    }
    it
}

/// State the forked writer cannot see or the restorer cannot recreate: refuse the
/// checkpoint, naming it, rather than write an image that restores wrong.
pub(crate) fn unsupported_state() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(v) = status.lines().find_map(|l| l.strip_prefix("Seccomp:")) {
        if v.trim() != "0" {
            return Some("the process runs under a seccomp filter, which cannot be saved".into());
        }
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut current = "";
    for line in smaps.lines() {
        if line
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_hexdigit())
            && line.contains('-')
        {
            current = line;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let f: Vec<&str> = flags.split_whitespace().collect();
            let what = if f.contains(&"dc") {
                "MADV_DONTFORK"
            } else if f.contains(&"wf") {
                "MADV_WIPEONFORK"
            } else {
                continue;
            };
            return Some(format!(
                "memory marked {what} is not supported yet: {current}"
            ));
        }
    }
    None
}
