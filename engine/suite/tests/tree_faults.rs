//! A member that dies in the middle of a tree round never hangs the tree: the round's
//! barriers notice it (the waits check the processes they wait for) and the round goes
//! on without it (it is recorded as the zombie it is then), well before the barrier
//! timeout; the program runs on to its end. A tree whose children come and go all the
//! time loses no round. Needs `cargo build --release` first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use torpor_engine_suite::contract::{Contract, TIMING};
use torpor_engine_suite::process::{self, Proc};

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(st.success(), "kill -{sig} {pid}");
}

#[test]
fn member_killed_during_a_round() {
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("torpor-tree-fault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"
import os, time
p = os.fork()
if p == 0:
    while True:
        time.sleep(0.05)
print("READY", os.getpid(), p, flush=True)
end = time.time() + 60
while time.time() < end and not os.path.exists("stop"):
    time.sleep(0.05)
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pass
print("done", flush=True)
"#,
    )
    .expect("script written");
    let (p, pids) = contract
        .run_until_ready(
            &dir,
            &dir.join("images"),
            &["/usr/bin/python3".into(), prog.into()],
        )
        .expect("program prints READY");
    let (root, member) = (pids[0], pids[1]);
    std::thread::sleep(Duration::from_millis(500));

    // The member cannot answer (stopped); the round waits for it; then it dies.
    signal(member, "STOP");
    let ck = contract.command(
        &dir,
        contract.checkpoint_args(root, Duration::from_secs(30)),
    );
    let round = Proc::spawn(ck, "torpor checkpoint").expect("checkpoint starts");
    std::thread::sleep(Duration::from_millis(700));
    signal(member, "KILL");
    let f = round.finish(TIMING.command).expect("checkpoint ends");
    let text = format!("{}\n{}", f.stdout.join("\n"), f.stderr);
    assert!(
        !text.contains("did not answer"),
        "the round waited for the barrier timeout instead of noticing the dead member\n{}",
        f.describe()
    );
    // Failed (the member exited) or retried without it: either way the tree runs on
    // and a later round succeeds.
    let again = contract.command(
        &dir,
        contract.checkpoint_args(root, Duration::from_secs(30)),
    );
    let g =
        process::run(again, "torpor checkpoint (again)", TIMING.command).expect("checkpoint runs");
    assert!(
        g.status.success(),
        "the next round failed\n{}",
        g.describe()
    );
    println!("first round: {}", f.describe());
    std::fs::write(dir.join("stop"), "").expect("stop file");
    let fin = p.finish(TIMING.exit).expect("program ends");
    assert!(
        fin.status.success() && fin.stdout.last().map(String::as_str) == Some("done"),
        "the program did not run on to its end\n{}",
        fin.describe()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tree that never holds still (`tree_churn.sh`: background loops fork, exec and reap
/// short-lived children all the time): every round must succeed. Children that exit
/// during a round are recorded as what they are at the cut (zombies with their status,
/// or nothing once reaped), children forked during it join it; before, such a round
/// failed as "the process tree changed" and was retried until it gave up.
#[test]
fn rounds_succeed_while_children_come_and_go() {
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("torpor-tree-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let script = PathBuf::from(env!("TORPOR_SUITE_SCRIPTS_DIR")).join("tree_churn.sh");
    let (p, pids) = contract
        .run_until_ready(
            &dir,
            &dir.join("images"),
            &["/bin/bash".into(), script.into(), "1000".into()],
        )
        .expect("program prints READY");
    let root = pids[0];
    std::thread::sleep(Duration::from_millis(500));
    let rounds = 10;
    let mut failures = Vec::new();
    for _ in 0..rounds {
        let ck = contract.command(
            &dir,
            contract.checkpoint_args(root, Duration::from_secs(30)),
        );
        let f = process::run(ck, "torpor checkpoint", TIMING.command).expect("checkpoint runs");
        if !f.status.success() {
            failures.push(f.describe());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = std::fs::read_to_string(dir.join("images/status.json")).unwrap_or_default();
    let newest: u64 = serde_json::from_str::<serde_json::Value>(&status)
        .ok()
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0);
    process::kill_tree(root);
    let _ = p.finish(TIMING.exit);
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds failed while children came and went:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        newest, rounds,
        "every round should be one generation: the newest is {newest} after {rounds} rounds\n{status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
