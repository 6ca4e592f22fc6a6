//! Lazy member managers (ADR 0006, the default; `TORPOR_LAZY_MEMBERS=0` turns them off): a member gets its manager thread only when a round,
//! a SIGTERM or the start timer needs it. With the timer pushed out of the way
//! (`TORPOR_LAZY_START_MS`), every round of the tree cases starts the managers of the
//! members from the request signal's handler. Needs `cargo build --release` first.

use std::time::Duration;

use torpor_engine_suite::cases;
use torpor_engine_suite::contract::{Contract, TIMING};
use torpor_engine_suite::process::{self, Proc};
use torpor_engine_suite::scenario::Outcome;
use torpor_engine_suite::{run_case, Variant};

fn started_by_rounds_only() {
    // SAFETY: set before this test process starts any thread of its own; every
    // command it runs inherits it.
    unsafe { std::env::set_var("TORPOR_LAZY_START_MS", "3600000") };
    // SAFETY: as above. Lazy managers are the default; said explicitly all the same.
    unsafe { std::env::set_var("TORPOR_LAZY_MEMBERS", "1") };
}

fn passes(name: &str) {
    started_by_rounds_only();
    let case = cases::named(name).expect("known case");
    match run_case(&case, Variant::Double) {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => println!("SKIP {name}: {why}"),
        Err(e) => panic!("{name} with managers started by the round failed: {e:#}"),
    }
}

#[test]
fn tree_pipes_started_by_round() {
    passes("tree_pipes");
}

#[test]
fn python_pool_started_by_round() {
    passes("python_pool");
}

#[test]
fn shell_pipeline_started_by_round() {
    passes("shell_pipeline");
}

/// The names of `pid`'s threads.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a parent with two sleeping children (forked, and forked+exec'd) under torpor
/// run; returns the program, the parent's pid and the children's.
fn start(dir: &std::path::Path, contract: &Contract) -> (Proc, u32, Vec<u32>) {
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"
import os, subprocess, sys, time
r, w = os.pipe()
p = os.fork()
if p == 0:
    os.read(r, 1)
    os._exit(0)
q = subprocess.Popen(["/bin/sleep", "30"])
print("READY", os.getpid(), p, q.pid, flush=True)
time.sleep(30)
"#,
    )
    .expect("script written");
    let (p, pids) = contract
        .run_until_ready(
            dir,
            &dir.join("images"),
            &["/usr/bin/python3".into(), prog.into()],
        )
        .expect("program prints READY");
    assert_eq!(pids.len(), 3, "bad READY line: pids {pids:?}");
    (p, pids[0], pids[1..].to_vec())
}

/// Members have no manager thread until the first round; the round starts them and
/// succeeds. Without the knob, the start timer gives them one soon after they start.
#[test]
fn no_thread_until_needed() {
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir = std::env::temp_dir().join(format!("torpor-lazy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");

    // The default: started by the timer.
    let (p, root, kids) = start(&dir, &contract);
    std::thread::sleep(Duration::from_millis(1000));
    for &k in &kids {
        assert!(
            threads(k).iter().any(|t| t == "torpor-agent"),
            "member {k} has no manager 1 s after it started: {:?}",
            threads(k)
        );
    }
    process::kill_tree(root);
    let _ = p.finish(TIMING.exit);

    // Timer out of the way: no thread until the round.
    started_by_rounds_only();
    let _ = std::fs::remove_dir_all(dir.join("images"));
    let (p, root, kids) = start(&dir, &contract);
    std::thread::sleep(Duration::from_millis(500));
    for &k in &kids {
        assert_eq!(
            threads(k).len(),
            1,
            "member {k} should have no thread of the agent before a round: {:?}",
            threads(k)
        );
    }
    let ck = contract.command(
        &dir,
        contract.checkpoint_args(root, Duration::from_secs(30)),
    );
    let f = process::run(ck, "torpor checkpoint", TIMING.command).expect("checkpoint runs");
    assert!(f.status.success(), "the round failed\n{}", f.describe());
    for &k in &kids {
        assert!(
            threads(k).iter().any(|t| t == "torpor-agent"),
            "the round did not start member {k}'s manager: {:?}",
            threads(k)
        );
    }
    process::kill_tree(root);
    let _ = p.finish(TIMING.exit);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Busy loops on every core (a loaded node), killed when dropped.
struct Load(Vec<std::process::Child>);

impl Load {
    fn start() -> Load {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Load(
            (0..n)
                .map(|_| {
                    std::process::Command::new("/bin/sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("busy loop starts")
                })
                .collect(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Bash subshells pacing themselves with `read -t` spend nearly all their time inside
/// `read` with SIGCHLD (which bash catches) blocked. The safe-point test used to take
/// a blocked caught signal for "inside one of the program's handlers" and refused to
/// start the manager there, so on a loaded node the first round waited for them until
/// the barrier timeout and failed. Now it looks for a signal frame on the interrupted
/// stack instead, and the rounds start the subshells' managers and succeed.
#[test]
fn read_t_subshells_under_load() {
    started_by_rounds_only();
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir = std::env::temp_dir().join(format!("torpor-lazy-readt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let prog = dir.join("prog.sh");
    std::fs::write(
        &prog,
        r#"
rm -f idle.fifo
mkfifo idle.fifo
exec 7<>idle.fifo
pace() { while [ ! -e stop ]; do read -r -t 1 -u 7; done; }
pace & a=$!
pace & b=$!
pace & c=$!
echo "READY $$ $a $b $c"
while [ ! -e stop ]; do sleep 0.1; done
wait
echo done
"#,
    )
    .expect("script written");
    let _load = Load::start();
    let (p, pids) = contract
        .run_until_ready(
            &dir,
            &dir.join("images"),
            &["/bin/bash".into(), prog.into()],
        )
        .expect("program prints READY");
    assert_eq!(pids.len(), 4, "bad READY line: {pids:?}");
    let (root, kids) = (pids[0], &pids[1..]);
    std::thread::sleep(Duration::from_millis(500));
    for &k in kids {
        assert_eq!(
            threads(k).len(),
            1,
            "subshell {k} should be a lazy member (no agent thread) before a round: {:?}",
            threads(k)
        );
    }
    let mut failures = Vec::new();
    for _ in 0..3 {
        let ck = contract.command(
            &dir,
            contract.checkpoint_args(root, Duration::from_secs(30)),
        );
        let f = process::run(ck, "torpor checkpoint", TIMING.command).expect("checkpoint runs");
        if !f.status.success() {
            failures.push(f.describe());
        }
    }
    std::fs::write(dir.join("stop"), "").expect("stop file");
    let fin = p.finish(TIMING.exit);
    assert!(
        failures.is_empty(),
        "rounds failed with read -t subshells on a loaded node:\n{}",
        failures.join("\n")
    );
    let fin = fin.expect("program ends");
    assert!(
        fin.status.success() && fin.stdout.last().map(String::as_str) == Some("done"),
        "the program did not run on to its end\n{}",
        fin.describe()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
