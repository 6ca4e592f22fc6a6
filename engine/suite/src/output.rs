//! Output checks: the expected lines of a self-checking program, and the
//! stitching of the outputs of a checkpointed run and its restores against
//! the uninterrupted output.

/// The full output of a self-checking program after its READY line.
pub fn self_check_lines(ticks: u32) -> Vec<String> {
    (0..ticks)
        .map(|i| format!("tick {i}"))
        .chain(std::iter::once("PASS".to_string()))
        .collect()
}

/// Whether a line is the start-up line (pid inside, never compared).
pub fn is_ready(line: &str) -> bool {
    line.starts_with("READY ")
}

/// The first segment without its READY line.
pub fn strip_ready(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| !is_ready(l)).cloned().collect()
}

/// Checks that `segments` (the output of the first run up to its SIGKILL,
/// of each restore up to its SIGKILL, and of the last restore to its end)
/// stitch into `full`: segment 0 starts at line 0; each later segment starts
/// somewhere between the start and the end of the previous one (the restored
/// process resumes at the checkpoint, which lies in the previous run, and
/// repeats the lines written after it); the last one ends exactly at the end
/// of `full`. Returns the start of each segment.
pub fn stitch(full: &[String], segments: &[Vec<String>]) -> Result<Vec<usize>, String> {
    fn matches_at(full: &[String], seg: &[String], at: usize) -> bool {
        full.get(at..at + seg.len()) == Some(seg)
    }
    fn go(
        full: &[String],
        segs: &[Vec<String>],
        i: usize,
        lo: usize,
        hi: usize,
    ) -> Option<Vec<usize>> {
        let seg = &segs[i];
        let last = i + 1 == segs.len();
        for at in lo..=hi.min(full.len()) {
            if !matches_at(full, seg, at) || (last && at + seg.len() != full.len()) {
                continue;
            }
            if last {
                return Some(vec![at]);
            }
            if let Some(mut rest) = go(full, segs, i + 1, at, at + seg.len()) {
                rest.insert(0, at);
                return Some(rest);
            }
        }
        None
    }
    if segments.is_empty() {
        return Err("no output segments".into());
    }
    if let Some(starts) = go(full, segments, 0, 0, 0) {
        return Ok(starts);
    }
    // Explain the first segment that cannot be placed.
    let mut msg = String::from("outputs do not stitch into the uninterrupted output:\n");
    let first = &segments[0];
    if !matches_at(full, first, 0) {
        let bad = first
            .iter()
            .zip(full)
            .position(|(a, b)| a != b)
            .unwrap_or(first.len().min(full.len()));
        msg += &format!(
            "  the first run's output is not a prefix: line {bad} is {:?}, expected {:?}\n",
            first.get(bad),
            full.get(bad)
        );
    }
    for (i, seg) in segments.iter().enumerate() {
        msg += &format!(
            "  segment {i}: {} lines, first {:?}, last {:?}\n",
            seg.len(),
            seg.first(),
            seg.last()
        );
    }
    msg += &format!(
        "  uninterrupted: {} lines, first {:?}, last {:?}",
        full.len(),
        full.first(),
        full.last()
    );
    Err(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stitches_overlapping_segments() {
        let full = l(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            stitch(&full, &[l(&["a", "b", "c"]), l(&["b", "c", "d", "e"])]),
            Ok(vec![0, 1])
        );
        assert_eq!(
            stitch(
                &full,
                &[l(&["a", "b"]), l(&["b", "c", "d"]), l(&["d", "e"])]
            ),
            Ok(vec![0, 1, 3])
        );
        assert_eq!(
            stitch(&full, &[l(&["a", "b"]), l(&["c", "d", "e"])]),
            Ok(vec![0, 2])
        );
    }

    #[test]
    fn rejects_gaps_restarts_and_short_endings() {
        let full = l(&["a", "b", "c", "d", "e"]);
        // lost line c
        assert!(stitch(&full, &[l(&["a", "b"]), l(&["d", "e"])]).is_err());
        // restarted from scratch is fine by lines only if it starts inside
        // segment 0's range; starting before segment 0's start is impossible
        assert!(stitch(&full, &[l(&["x"]), l(&["a", "b", "c", "d", "e"])]).is_err());
        // did not reach the end
        assert!(stitch(&full, &[l(&["a", "b"]), l(&["b", "c"])]).is_err());
        // resumed before the previous restore's start
        assert!(stitch(
            &full,
            &[
                l(&["a", "b", "c"]),
                l(&["c", "d"]),
                l(&["b", "c", "d", "e"])
            ]
        )
        .is_err());
        // extra line at the end
        assert!(stitch(&full, &[l(&["a"]), l(&["a", "b", "c", "d", "e", "f"])]).is_err());
    }
}
