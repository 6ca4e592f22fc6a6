//! Restores without user namespaces (`TORPOR_NO_USERNS=1`, what a host without
//! unprivileged user namespaces gets): a process tree comes back with new pids, says so
//! once on stderr and in status.json, and a tree whose output does not depend on pids
//! finishes as uninterrupted; a single process keeps working. Needs `cargo build
//! --release` first.

use std::path::PathBuf;
use std::time::Duration;

use torpor_engine_suite::cases;
use torpor_engine_suite::contract::{Contract, TIMING};
use torpor_engine_suite::process::{self, Proc};
use torpor_engine_suite::scenario::Outcome;
use torpor_engine_suite::{run_case, Variant};

/// The start of the warning torpor-restore prints (and status.json holds).
const WARNING: &str = "the process tree is restored with NEW pids";

fn without_userns() {
    // SAFETY: set before this test process starts any thread of its own; every
    // command it runs (torpor restore among them) inherits it.
    unsafe { std::env::set_var("TORPOR_NO_USERNS", "1") };
}

fn passes(name: &str, variant: Variant) {
    without_userns();
    let case = cases::Case {
        // The point of this test: no namespace is needed.
        needs_original_pids: false,
        ..cases::named(name).expect("known case")
    };
    match run_case(&case, variant) {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => panic!("{name} was skipped: {why}"),
        Err(e) => panic!("{name} {variant:?} with new pids failed: {e:#}"),
    }
}

/// Checkpointed, restored with new pids, checkpointed again (the members find their
/// root's new pid), restored again: output as uninterrupted.
#[test]
fn tree_double() {
    passes("tree_orphan", Variant::Double);
}

#[test]
fn tree_nonroot() {
    passes("tree_orphan", Variant::Nonroot);
}

/// A single process restored without namespaces (new pids, as before trees).
#[test]
fn single_process_double() {
    passes("counter_threads", Variant::Double);
}

/// The warning: once on the restore's stderr, and in the restored root's status.json.
#[test]
fn warning_is_printed_once() {
    without_userns();
    let contract = Contract::locate().expect("engine built (cargo build --release)");
    let dir: PathBuf = std::env::temp_dir().join(format!("torpor-newpids-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let images = dir.join("images");
    let progs = PathBuf::from(env!("TORPOR_SUITE_PROGS_DIR"));
    let (p, pids) = contract
        .run_until_ready(
            &dir,
            &images,
            &[progs.join("tree_orphan").into(), "30".into()],
        )
        .expect("program prints READY");
    let pid = *pids.first().expect("READY pid");
    std::thread::sleep(Duration::from_millis(500));
    let ck = contract.command(&dir, contract.checkpoint_args(pid, Duration::from_secs(30)));
    let f = process::run(ck, "torpor checkpoint", TIMING.command).expect("checkpoint runs");
    assert!(f.status.success(), "checkpoint failed\n{}", f.describe());
    process::kill_tree(pid);
    let _ = p.finish(TIMING.exit);

    let rs = contract.command(&dir, contract.restore_args(&images));
    let restored = Proc::spawn(rs, "torpor restore").expect("restore starts");
    let fin = restored.finish(TIMING.exit).expect("restored tree ends");
    assert!(
        fin.status.success() && fin.stdout.last().map(String::as_str) == Some("PASS"),
        "the tree restored with new pids did not finish\n{}",
        fin.describe()
    );
    assert_eq!(
        fin.stderr.matches(WARNING).count(),
        1,
        "the new-pids warning must be printed once\n{}",
        fin.describe()
    );
    let status = std::fs::read_to_string(images.join("status.json")).unwrap_or_default();
    // The program ended normally after the restore: its last status is the restore's
    // unless a later round replaced it (none: no interval).
    assert!(
        status.contains("\"pids\":\"new\"") && status.contains(WARNING),
        "status.json does not say the tree has new pids: {status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
