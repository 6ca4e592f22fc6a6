//! `torpor gc` on a real cluster: the images of a job that ended for good (scancel) are
//! removed; the images of a requeued job that will run again (held) are kept; nothing is
//! removed without `--yes`.

use std::path::Path;
use std::time::Duration;

use torpor_tests::cluster::{release_dir, start_or_skip};
use torpor_tests::{Cluster, ClusterOptions, JobId};

const SCRIPT: &str = "#!/bin/bash
#SBATCH --checkpoint=5s
python3 -c 'import time
while True: time.sleep(0.2)'
";

fn has_generation(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        (name.starts_with("gen-") && p.is_dir()) || (p.is_dir() && has_generation(&p))
    })
}

fn job_dir(c: &Cluster, job: JobId) -> std::path::PathBuf {
    c.images_dir().join(&c.user().name).join(job.to_string())
}

fn gc(c: &Cluster, extra: &[&str]) -> String {
    let torpor = release_dir().join("torpor");
    let root = c.images_dir().display().to_string();
    let mut args = vec!["gc", "--root", root.as_str(), "--min-age", "0"];
    args.extend_from_slice(extra);
    let out = c
        .root_cmd(&torpor.display().to_string(), &args)
        .expect("running torpor gc");
    assert!(out.ok(), "torpor gc failed: {}", out.stderr);
    out.stdout
}

#[test]
fn gc_removes_only_jobs_that_ended_for_good() {
    let Some(c) = start_or_skip(ClusterOptions::for_tests()) else {
        return;
    };
    let ended = c.submit(&[], SCRIPT).unwrap();
    let again = c.submit(&[], SCRIPT).unwrap();
    for job in [ended, again] {
        c.wait_for("a checkpoint of each job", Duration::from_secs(90), || {
            Ok(has_generation(&job_dir(&c, job)))
        })
        .unwrap();
    }
    c.cancel(ended).unwrap();
    let out = c
        .root_cmd("scontrol", &["requeuehold", &again.to_string()])
        .unwrap();
    assert!(out.ok(), "requeuehold: {}", out.stderr);
    c.wait_for_state(ended, &["CANCELLED"], Duration::from_secs(60))
        .unwrap();
    c.wait_for_state(again, &["PENDING"], Duration::from_secs(60))
        .unwrap();
    // Give the final checkpoints (taken on SIGTERM) time to land.
    std::thread::sleep(Duration::from_secs(3));

    let dry = gc(&c, &[]);
    println!("{dry}");
    assert!(job_dir(&c, ended).exists(), "dry run removed something");
    assert!(dry.contains("would remove"), "{dry}");

    let real = gc(&c, &["--yes", "--json"]);
    println!("{real}");
    let v: serde_json::Value = serde_json::from_str(&real).unwrap();
    let action = |job: JobId| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["job"] == job.0)
            .map(|r| r["action"].as_str().unwrap().to_owned())
    };
    assert_eq!(action(ended).as_deref(), Some("removed"));
    assert_eq!(action(again).as_deref(), Some("keep"));
    assert!(
        !job_dir(&c, ended).exists(),
        "cancelled job's images remain"
    );
    assert!(
        has_generation(&job_dir(&c, again)),
        "the held job's images were touched"
    );
    c.cancel(again).unwrap();
}
