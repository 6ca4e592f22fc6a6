//! `torpor checkpoint --pid`: asks a running program for a checkpoint through the request
//! signal and waits for the agent to report the durable generation in `status.json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The agent's default request signal (SIGRTMIN+4); `TORPOR_SIGNAL` overrides it.
pub const REQUEST_SIGNAL: i32 = 38;

fn env_of(pid: i32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0).find_map(|kv| {
        kv.strip_prefix(prefix.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

fn torpor_dir_of(pid: i32) -> Option<PathBuf> {
    env_of(pid, "TORPOR_DIR").map(PathBuf::from)
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The process that runs the agent: `pid` itself, or the first descendant that does
/// (for `torpor restore`, which waits for the restored program in a pid namespace).
pub fn find_target(pid: i32) -> Result<(i32, PathBuf)> {
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        if let Some(d) = torpor_dir_of(p) {
            return Ok((p, d));
        }
        queue.extend(children(p));
    }
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process {pid}");
    }
    bail!("process {pid} is not running under torpor (no TORPOR_DIR in its environment, or not yours)")
}

fn send(pid: i32, id: i32) -> Result<()> {
    // Only USR1, USR2 or a real-time signal other than the agent's park signal (61).
    let sig = env_of(pid, "TORPOR_SIGNAL")
        .and_then(|s| s.parse().ok())
        .filter(|&s: &i32| (34..=64).contains(&s) && s != 61 || s == 10 || s == 12)
        .unwrap_or(REQUEST_SIGNAL);
    let val = libc::sigval {
        sival_ptr: id as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue with a plain value; no memory is shared with the target.
    let r = unsafe { libc::sigqueue(pid, sig, val) };
    if r != 0 {
        bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs the verb; returns the exit code.
pub fn checkpoint(pid: i32, timeout: u64, json: bool) -> Result<i32> {
    let (target, dir) = find_target(pid)?;
    let status = dir.join("status.json");
    let before = std::fs::read(&status).ok();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1);
    let id = ((nanos as i64 ^ std::process::id() as i64) & 0x3fff_ffff) as i32 | 1;
    send(target, id)?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        if let Ok(now) = std::fs::read(&status) {
            if Some(&now) != before.as_ref() {
                let v: serde_json::Value =
                    serde_json::from_slice(&now).context("status.json does not parse")?;
                let req = v["request"].as_i64().unwrap_or(-1);
                if (req == id as i64 || req == 0) && v["restored"].is_null() {
                    if json {
                        println!("{v}");
                    }
                    if v["ok"].as_bool() == Some(true) {
                        if !json {
                            println!("{}", v["path"].as_str().unwrap_or_default());
                        }
                        return Ok(0);
                    }
                    if !json {
                        eprintln!(
                            "torpor: checkpoint of {target} failed: {}",
                            v["error"].as_str().unwrap_or("unknown error")
                        );
                    }
                    return Ok(1);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout} s waiting for process {target} to checkpoint");
        }
        if !std::path::Path::new(&format!("/proc/{target}")).exists() {
            bail!("process {target} exited before its checkpoint was durable");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
