//! This machine's limits that the figures are judged against: disk bandwidth (`dd`) and
//! memory bandwidth (memcpy).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::MIB;

/// Bytes per second of `dd` writing `mib` MiB of zeros with `flag` (e.g. oflag=direct).
pub fn dd(dir: &Path, mib: u64, flag: &str) -> Result<f64> {
    let f = dir.join("dd.tmp");
    let _ = std::fs::remove_file(&f);
    let t = Instant::now();
    let st = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", f.display()))
        .arg("bs=8M")
        .arg(format!("count={}", mib / 8))
        .arg(flag)
        .arg("status=none")
        .status()
        .context("running dd")?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&f);
    if !st.success() {
        bail!("dd {flag} failed");
    }
    Ok((mib * MIB) as f64 / secs)
}

/// Bytes per second of memcpy between two 256 MiB buffers (best of 5).
pub fn memcpy_bw() -> f64 {
    let n = 256 * MIB as usize;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    n as f64 / best
}
