//! Child processes with captured output, timeouts, SIGKILL by pid, and the
//! /proc walk that finds a restored program below `torpor restore`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

#[derive(Debug, Default)]
struct Captured {
    lines: Vec<String>,
    stderr: String,
    open_pipes: usize,
}

/// A running child with stdout collected line by line and stderr collected
/// as text, both in background threads.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    cap: Arc<Mutex<Captured>>,
    readers: Vec<JoinHandle<()>>,
    reaped: Option<ExitStatus>,
}

/// What a finished child left.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Stdout, one entry per line.
    pub stdout: Vec<String>,
    /// Stderr.
    pub stderr: String,
}

impl Finished {
    /// Status, stdout and stderr in a form fit for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            status_text(self.status),
            self.stdout.join("\n"),
            self.stderr.trim_end()
        )
    }
}

/// "exit code N" or "killed by signal N".
pub fn status_text(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// Whether the status says SIGKILL, directly or passed through as 128+9.
pub fn killed_by_sigkill(s: ExitStatus) -> bool {
    s.signal() == Some(9) || s.code() == Some(128 + 9)
}

fn lock(cap: &Mutex<Captured>) -> std::sync::MutexGuard<'_, Captured> {
    match cap.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Proc {
    /// Starts `cmd` with stdin from /dev/null and stdout/stderr captured.
    pub fn spawn(mut cmd: Command, label: &str) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // ETXTBSY: another test thread's fork may briefly hold a write fd of
        // a binary this test just copied.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(26) && tries < 200 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                r => break r.with_context(|| format!("{label}: cannot start {cmd:?}"))?,
            }
        };
        let cap = Arc::new(Mutex::new(Captured {
            open_pipes: 2,
            ..Captured::default()
        }));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let cap = Arc::clone(&cap);
            readers.push(thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            let line = line.strip_suffix('\n').unwrap_or(&line).to_string();
                            lock(&cap).lines.push(line);
                        }
                    }
                }
                lock(&cap).open_pipes -= 1;
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let cap = Arc::clone(&cap);
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => lock(&cap)
                            .stderr
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
                lock(&cap).open_pipes -= 1;
            }));
        }
        Ok(Proc {
            label: label.to_string(),
            child,
            cap,
            readers,
            reaped: None,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.cap).lines.clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.cap).stderr.clone()
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self
                .child
                .try_wait()
                .with_context(|| format!("{}: wait", self.label))?;
        }
        Ok(self.reaped)
    }

    /// Waits for the first stdout line at index >= `from` that satisfies
    /// `pred`; fails if the child exits first or on timeout.
    pub fn wait_line(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let find = |lines: &[String]| {
            lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| pred(l))
                .map(|(i, l)| (i, l.clone()))
        };
        loop {
            if let Some(found) = find(&lock(&self.cap).lines) {
                return Ok(found);
            }
            if let Some(st) = self.poll_exit()? {
                // Give the readers a moment to drain the pipe.
                thread::sleep(Duration::from_millis(100));
                let cap = lock(&self.cap);
                if let Some(found) = find(&cap.lines) {
                    return Ok(found);
                }
                bail!(
                    "{} ended ({}) before the expected line\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.label,
                    status_text(st),
                    cap.lines.join("\n"),
                    cap.stderr.trim_end()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no expected line within {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.label,
                    timeout,
                    self.lines().join("\n"),
                    self.stderr().trim_end()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the child to exit (killing its whole tree on timeout), then
    /// for its output pipes to close (other processes may hold them: give up
    /// after a few seconds and keep what was read).
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.poll_exit()? {
                break st;
            }
            if Instant::now() >= deadline {
                kill_tree(self.child.id());
                let _ = self.child.wait();
                bail!(
                    "{} did not end within {:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.label,
                    timeout,
                    self.lines().join("\n"),
                    self.stderr().trim_end()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let drain = Instant::now() + Duration::from_secs(5);
        while lock(&self.cap).open_pipes > 0 && Instant::now() < drain {
            thread::sleep(Duration::from_millis(10));
        }
        let mut stderr = self.stderr();
        if lock(&self.cap).open_pipes > 0 {
            stderr.push_str("\n[harness: output pipe still held open by another process]");
        } else {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
        Ok(Finished {
            status,
            stdout: self.lines(),
            stderr,
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_tree(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion with a time limit.
pub fn run(cmd: Command, label: &str, timeout: Duration) -> Result<Finished> {
    Proc::spawn(cmd, label)?.finish(timeout)
}

/// Sends SIGKILL to one pid (not necessarily our child).
pub fn kill_pid(pid: u32) -> Result<()> {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -KILL {pid} failed ({})", status_text(st));
    }
    Ok(())
}

/// Kills `pid` and all its descendants (best effort, for cleanup).
pub fn kill_tree(pid: u32) {
    let mut all = descendants(pid);
    all.push((pid, 0));
    for (p, _) in all {
        let _ = kill_pid(p);
    }
}

/// Every pid below `root` (not `root` itself) with its depth, from /proc.
pub fn descendants(root: u32) -> Vec<(u32, usize)> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([(root, 0usize)]);
    while let Some((p, d)) = queue.pop_front() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push((c, d + 1));
            queue.push_back((c, d + 1));
        }
    }
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn environ_has(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| raw.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        .unwrap_or(false)
}

/// A process's argv from /proc/PID/cmdline.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut v: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if v.last().is_some_and(String::is_empty) {
        v.pop();
    }
    Some(v)
}

/// The host pid of the program restored by the `torpor restore` process
/// `restore_pid`, for a second checkpoint. The restored program is that
/// process itself (new pids) or one of its descendants (original pids in a
/// pid namespace). The program's argv is restored with its memory, so the
/// deepest process in that tree whose cmdline equals the program's argv is
/// it; if none matches (cmdline not restored), the deepest one whose
/// environment holds `TORPOR_DIR=<images>`, else the deepest leaf, which is
/// the restore process itself when it has no children.
pub fn find_restored_program(
    restore_pid: u32,
    argv: &[String],
    images: &Path,
    is_tree: bool,
) -> Result<(u32, String)> {
    let marker = format!("TORPOR_DIR={}", images.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut tree = descendants(restore_pid);
        tree.push((restore_pid, 0));
        let mut matching: Vec<(u32, usize)> = tree
            .iter()
            .copied()
            .filter(|&(p, _)| cmdline(p).as_deref() == Some(argv))
            .collect();
        matching.sort_by_key(|&(p, d)| (d, p));
        // A process tree: its root is the shallowest process running the program.
        let pick = if is_tree {
            matching.first()
        } else {
            matching.last()
        };
        if let Some(&(p, d)) = pick {
            return Ok((p, format!("pid {p}: cmdline matches, depth {d}")));
        }
        if Instant::now() >= deadline {
            let mut marked: Vec<(u32, usize)> = tree
                .iter()
                .copied()
                .filter(|&(p, _)| environ_has(p, &marker))
                .collect();
            marked.sort_by_key(|&(p, d)| (d, p));
            if let Some(&(p, d)) = marked.last() {
                return Ok((p, format!("pid {p}: environment has {marker}, depth {d}")));
            }
            let parents: Vec<u32> = tree.iter().filter_map(|&(p, _)| parent_of(p)).collect();
            let mut leaves: Vec<(u32, usize)> = tree
                .iter()
                .copied()
                .filter(|(p, _)| !parents.contains(p))
                .collect();
            leaves.sort_by_key(|&(p, d)| (d, p));
            return leaves
                .last()
                .map(|&(p, d)| {
                    (
                        p,
                        format!(
                            "pid {p}: no cmdline equals {argv:?}; took the deepest leaf (depth {d}), cmdline {:?}",
                            cmdline(p)
                        ),
                    )
                })
                .ok_or_else(|| anyhow!("restore process {restore_pid} is gone"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}
