//! A member that dies in the middle of a tree round never hangs the tree: the round's
//! barriers notice it (the futex waits check the processes they wait for) and the
//! round fails or is retried without it, well before the barrier timeout; the program
//! runs on to its end. Needs `cargo build --release` first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use torpor_engine_suite::contract::{Contract, TIMING};
use torpor_engine_suite::output::is_ready;
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
    let fdclean = PathBuf::from(env!("TORPOR_SUITE_PROGS_DIR")).join("fdclean");
    let mut run = Command::new(&fdclean);
    run.arg(&contract.torpor)
        .args(contract.run_args(
            &dir.join("images"),
            &["/usr/bin/python3".into(), prog.into()],
        ))
        .current_dir(&dir);
    let mut p = Proc::spawn(run, "torpor run").expect("program starts");
    let (_, first) = p
        .wait_line(0, TIMING.ready, is_ready)
        .expect("program prints READY");
    let pids: Vec<u32> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let (root, member) = (pids[0], pids[1]);
    std::thread::sleep(Duration::from_millis(500));

    // The member cannot answer (stopped); the round waits for it; then it dies.
    signal(member, "STOP");
    let mut ck = Command::new(&fdclean);
    ck.arg(&contract.torpor)
        .args(contract.checkpoint_args(root, Duration::from_secs(30)))
        .current_dir(&dir);
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
    let mut again = Command::new(&fdclean);
    again
        .arg(&contract.torpor)
        .args(contract.checkpoint_args(root, Duration::from_secs(30)))
        .current_dir(&dir);
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
