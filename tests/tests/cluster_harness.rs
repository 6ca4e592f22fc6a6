//! The cluster harness's own API, as issue 4/5 tests will use it: requeue, and killing and
//! restarting a node.

use std::time::Duration;

use torpor_tests::cases::{self, Case};
use torpor_tests::cluster::start_or_skip;
use torpor_tests::{Cluster, ClusterOptions};

const SLEEPER: &str = "#!/bin/sh\necho start $SLURM_RESTART_COUNT\nsleep 300\n";

fn requeue_keeps_job_id_and_counts_restarts(c: &Cluster) {
    let job = c.submit(&[], SLEEPER).expect("submit");
    c.wait_for_state(job, &["RUNNING"], Duration::from_secs(30))
        .expect("running");
    c.requeue(job).expect("requeue");
    // Eligible again after cred_expire (10 s) + 1.
    c.wait_for_state(job, &["RUNNING"], Duration::from_secs(60))
        .expect("running again");
    assert_eq!(
        c.job_field(job, "Restarts").expect("scontrol").as_deref(),
        Some("1")
    );
    c.cancel(job).expect("scancel");
    c.wait_finished(job, Duration::from_secs(30)).expect("ends");
}

fn killed_node_goes_down_and_comes_back(c: &Cluster) {
    let job = c
        .submit(&["-w", "n3", "--no-requeue"], SLEEPER)
        .expect("submit");
    c.wait_for_state(job, &["RUNNING"], Duration::from_secs(30))
        .expect("running");
    c.kill_node("n3").expect("kill n3");
    // SlurmdTimeout=20: the node is declared down and the job fails with it.
    let state = c
        .wait_finished(job, Duration::from_secs(90))
        .expect("job ends");
    assert_eq!(state, "NODE_FAIL");
    assert!(c.node_state("n3").expect("sinfo").starts_with("down"));
    c.start_node("n3").expect("restart n3");
    // ReturnToService=2: a node that registers again is usable.
    c.wait_nodes_idle(Duration::from_secs(60)).expect("n3 back");
}

#[test]
fn cluster_harness() {
    let Some(cluster) = start_or_skip(ClusterOptions::for_tests()) else {
        return;
    };
    let all: &[Case<'_, Cluster>] = &[
        (
            "requeue_keeps_job_id_and_counts_restarts",
            &requeue_keeps_job_id_and_counts_restarts,
        ),
        (
            "killed_node_goes_down_and_comes_back",
            &killed_node_goes_down_and_comes_back,
        ),
    ];
    cases::run(&cluster, all);
}
