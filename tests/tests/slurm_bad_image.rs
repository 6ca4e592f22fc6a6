//! Issue 6 against a real Slurm cluster: a checkpointed job is requeued (held), every image
//! of it is damaged, the job is released. With the default site policy (`on_bad_image`
//! unset = fail) the task fails and the job's error file says which generation is damaged
//! where; with `on_bad_image=fresh` in plugstack.conf the program starts over and the job
//! completes.
//! Run: `cargo build --release && cargo test --release -p torpor-tests --test slurm_bad_image -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use torpor_tests::cases::{self, Case};
use torpor_tests::cluster::{start_or_skip, Cluster};
use torpor_tests::resume::{build_counter, reference_output, Checks, Event, Trace};
use torpor_tests::resume_checks::*;
use torpor_tests::{ClusterOptions, JobId};

/// Flips a byte in the middle of every image file under `dir`; returns how many.
fn damage_images(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        // Not through `latest` (a symlink to a generation: it would undo the flip).
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            n += damage_images(&p);
        } else if p.extension().is_some_and(|x| x == "img") {
            if let Ok(mut b) = std::fs::read(&p) {
                let mid = b.len() / 2;
                b[mid] ^= 0x5a;
                if std::fs::write(&p, b).is_ok() {
                    eprintln!("  damaged {} at offset {mid}", p.display());
                    n += 1;
                }
            }
        }
    }
    n
}

/// Whether a `counter` process exists anywhere (the nodes' pid namespaces are visible
/// from the host).
fn counter_running() -> bool {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "counter")
            })
        })
        .unwrap_or(false)
}

/// Submits the counter, waits for a generation, requeues and holds the job, damages every
/// image, releases it; returns the job, its final state and its error file.
fn run_with_damaged_images(ctx: &Ctx, tag: &str) -> (JobId, String, String, PathBuf) {
    let (cmd, trace) = ctx.command(40, tag);
    let job = ctx.submit(&["--checkpoint=5s"], &format!("#!/bin/bash\n{cmd}\n"));
    let dirs = ctx.wait_progress(job, &[&trace], 6, 1);
    ctx.c
        .root_cmd("scontrol", &["requeuehold", &job.to_string()])
        .expect("scontrol requeuehold");
    let _ = ctx.wait_stopped(job);
    // The job is PENDING at once; its program may still be writing the final checkpoint.
    ctx.c
        .wait_for("the counter to be gone", Duration::from_secs(60), || {
            Ok(!counter_running())
        })
        .expect("the program ends after the requeue");
    let damaged: usize = dirs.iter().map(|d| damage_images(d)).sum();
    eprintln!("  damaged {damaged} image file(s); releasing job {job}");
    assert!(damaged > 0, "no image to damage in {dirs:?}");
    ctx.c.release(job).expect("scontrol release");
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
    let err = ctx.stderr_of(job);
    eprintln!(
        "  job {job} ended {fin}; stderr:\n    {}",
        err.trim().replace('\n', "\n    ")
    );
    (job, fin, err, trace)
}

fn default_policy_fails_the_task(ctx: &Ctx) {
    let (job, fin, err, _) = run_with_damaged_images(ctx, "bad-fail");
    let mut ck = Checks::default();
    ck.check(fin == "FAILED", format!("the job failed: {fin}"));
    ck.check(
        err.contains("no checkpoint image of this task is valid"),
        "the error file says no image is valid",
    );
    ck.check(
        err.contains(".img") && err.contains("offset"),
        "the error file names the damaged file and offset",
    );
    ck.finish(&format!("job {job}\n{err}"));
}

fn fresh_policy_starts_over(ctx: &Ctx) {
    let mut args = Cluster::default_plugin_args(ctx.c.dir());
    args.push("on_bad_image=fresh".into());
    ctx.c.set_plugin_args(&args).expect("plugstack.conf");
    let (job, fin, err, trace) = run_with_damaged_images(ctx, "bad-fresh");
    let t = Trace::read(&trace);
    let mut ck = Checks::default();
    ck.check(fin == "COMPLETED", format!("the job completed: {fin}"));
    ck.check(
        err.contains("from the beginning"),
        "the error file says the program starts over",
    );
    ck.check(
        t.count(&Event::Start) == 2 && t.count(&Event::End) == 1,
        format!("the program started twice and ended once: {}", t.summary()),
    );
    ck.finish(&format!("job {job}\n{err}\n{}", t.summary()));
}

#[test]
fn slurm_bad_image() {
    let t0 = Instant::now();
    let Some(c) = start_or_skip(ClusterOptions::for_tests()) else {
        return;
    };
    let counter = build_counter(&c.work_dir()).expect("counter builds");
    let mut reference = BTreeMap::new();
    reference.insert(40, reference_output(&counter, 40).expect("reference run"));
    let ctx = Ctx {
        c,
        counter,
        reference,
    };
    let all: &[Case<'_, Ctx>] = &[
        (
            "default_policy_fails_the_task",
            &default_policy_fails_the_task,
        ),
        ("fresh_policy_starts_over", &fresh_policy_starts_over),
    ];
    cases::run(&ctx, all);
    eprintln!("slurm_bad_image: {:.1}s in all", t0.elapsed().as_secs_f64());
}
