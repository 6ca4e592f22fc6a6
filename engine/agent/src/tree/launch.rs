//! The launch's stdio identity, handed from the root to the members for each round.

use super::*;

/// Name of the file where the root leaves the launch's stdio identity for the members.
const LAUNCH_FILE: &str = ".tree-stdio";

/// The root, before a round: publishes the launch's stdio identity (fds 0-2 as it got
/// them, or the new launch's after a restore).
pub fn write_launch(dir: &Path) {
    use std::sync::atomic::Ordering::SeqCst;
    let v: Vec<String> = crate::fds::LAUNCH
        .iter()
        .map(|a| a.load(SeqCst).to_string())
        .collect();
    let tmp = dir.join(format!("{LAUNCH_FILE}-{}", sys::getpid()));
    if std::fs::write(&tmp, v.join(" ")).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(LAUNCH_FILE));
    }
}

/// The root, after a round.
pub fn remove_launch(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(LAUNCH_FILE));
}

/// A member, before a round: takes the launch's stdio identity from the root.
pub fn read_launch(dir: &Path) {
    use std::sync::atomic::Ordering::SeqCst;
    let Ok(t) = std::fs::read_to_string(dir.join(LAUNCH_FILE)) else {
        return;
    };
    let v: Vec<u64> = t
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if v.len() == 6 {
        for (a, x) in crate::fds::LAUNCH.iter().zip(v) {
            a.store(x, SeqCst);
        }
        crate::fds::LAUNCH_SET.store(true, SeqCst);
    }
}
