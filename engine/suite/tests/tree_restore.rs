//! A process tree is restored whole or not at all: when one process of the tree
//! cannot be restored (a file it had open is gone), no process of the tree runs and
//! the restore fails naming the cause; with the file back, the same generation
//! restores and the program finishes. Needs `cargo build --release` first.

use std::path::PathBuf;
use std::time::Duration;

use torpor_engine_suite::contract::{Contract, TIMING};
use torpor_engine_suite::process::{self, Proc};

/// Pids of the processes whose command line mentions `what`.
fn running_with(what: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process::cmdline(pid).is_some_and(|c| c.iter().any(|a| a.contains(what))))
        .collect()
}

#[test]
fn one_failing_process_fails_the_whole_tree() {
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("torpor-tree-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("held.txt"), "only the child has this open\n").expect("file");
    let prog = dir.join("prog.py");
    std::fs::write(
        &prog,
        r#"
import os, time
p = os.fork()
if p == 0:
    f = open("held.txt")
    while True:
        time.sleep(0.05)
print("READY", os.getpid(), p, flush=True)
for i in range(1, 60):
    time.sleep(0.1)
    print("tick", i, flush=True)
os.kill(p, 9)
os.waitpid(p, 0)
print("done", flush=True)
"#,
    )
    .expect("script written");
    let prog_s = prog.to_string_lossy().into_owned();
    let images = dir.join("images");
    let (p, pids) = contract
        .run_until_ready(&dir, &images, &["/usr/bin/python3".into(), prog.into()])
        .expect("program prints READY");
    std::thread::sleep(Duration::from_millis(500));
    let ck = contract.command(
        &dir,
        contract.checkpoint_args(pids[0], Duration::from_secs(30)),
    );
    let f = process::run(ck, "torpor checkpoint", TIMING.command).expect("checkpoint runs");
    assert!(f.status.success(), "checkpoint failed\n{}", f.describe());
    process::kill_tree(pids[0]);
    let _ = p.finish(TIMING.exit);

    // The child's file is gone: the child cannot be restored, so nothing may run.
    std::fs::rename(dir.join("held.txt"), dir.join("away.txt")).expect("move the file away");
    let rs = contract.command(&dir, contract.restore_args(&images));
    let failed = Proc::spawn(rs, "torpor restore")
        .expect("restore starts")
        .finish(TIMING.exit)
        .expect("failed restore ends");
    assert!(
        !failed.status.success(),
        "a tree with a process that cannot be restored must fail to restore\n{}",
        failed.describe()
    );
    assert!(
        failed
            .stdout
            .iter()
            .all(|l| !l.starts_with("tick") && l != "done"),
        "part of the tree ran although one of its processes could not be restored\n{}",
        failed.describe()
    );
    assert!(
        failed.stderr.contains("held.txt"),
        "the restore must name what it could not restore\n{}",
        failed.describe()
    );
    std::thread::sleep(Duration::from_millis(300));
    let left = running_with(&prog_s);
    assert!(
        left.is_empty(),
        "processes of the failed restore are left running: {left:?}"
    );

    // The same generation restores once the file is back.
    std::fs::rename(dir.join("away.txt"), dir.join("held.txt")).expect("file back");
    let rs = contract.command(&dir, contract.restore_args(&images));
    let ok = Proc::spawn(rs, "torpor restore")
        .expect("restore starts")
        .finish(TIMING.exit)
        .expect("restored tree ends");
    assert!(
        ok.status.success() && ok.stdout.last().map(String::as_str) == Some("done"),
        "with the file back the tree restores and finishes\n{}",
        ok.describe()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
