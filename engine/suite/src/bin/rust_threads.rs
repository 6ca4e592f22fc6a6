//! rust_threads: an ordinary Rust program with four long-lived std threads
//! fed through channels; each step every worker advances its own xorshift and
//! FNV-1a state and the main thread prints a numbered line with the combined
//! value. Output after the READY line is deterministic, so the output of a
//! checkpointed, killed and restored run must equal an uninterrupted one.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const WORKERS: u64 = 4;

fn advance(mut state: u64, rounds: u32) -> u64 {
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..rounds {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for b in state.to_le_bytes() {
            fnv ^= u64::from(b);
            fnv = fnv.wrapping_mul(0x0100_0000_01b3);
        }
    }
    state ^ fnv
}

fn main() {
    let steps: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let (done_tx, done_rx) = mpsc::channel::<(u64, u64)>();
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for k in 0..WORKERS {
        let (tx, rx) = mpsc::channel::<Option<u32>>();
        let done = done_tx.clone();
        senders.push(tx);
        handles.push(thread::spawn(move || {
            let mut state = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(k + 1);
            while let Ok(Some(rounds)) = rx.recv() {
                state = advance(state, rounds);
                if done.send((k, state)).is_err() {
                    return;
                }
            }
        }));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: String| {
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(2);
        }
    };
    say(&mut out, format!("READY {}", std::process::id()));
    let mut total: u64 = 0;
    for step in 0..steps {
        for tx in &senders {
            if tx.send(Some(20_000)).is_err() {
                std::process::exit(3);
            }
        }
        let mut results: Vec<(u64, u64)> = (0..WORKERS)
            .map(|_| done_rx.recv().unwrap_or((u64::MAX, 0)))
            .collect();
        results.sort_unstable();
        for (k, v) in results {
            total = total.rotate_left(7) ^ v ^ k;
        }
        say(&mut out, format!("step {step} {total:016x}"));
        thread::sleep(Duration::from_millis(100));
    }
    for tx in &senders {
        let _ = tx.send(None);
    }
    for h in handles {
        if h.join().is_err() {
            std::process::exit(4);
        }
    }
    say(&mut out, format!("done {total:016x}"));
}
