//! Issue 4 against a real Slurm cluster: checkpointed jobs resume after `scontrol requeue`
//! (batch step and srun with 2 tasks), preemption and node failure with the output and result
//! of an uninterrupted run; jobs without `--checkpoint` are untouched; a stale attempt is fenced.
//!
//! One cluster for the whole file; each case is reported by name (see `torpor_tests::cases`).
//! The program is `tests/progs/counter.c`: it knows nothing about torpor; its side trace (with
//! wall-clock times) tells what really ran in each run of the job.
//! Run: `cargo build --release && cargo test --release -p torpor-tests --test slurm_resume -- --nocapture`
//! (`TORPOR_CASES=requeue_batch,...` picks cases).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use torpor_image::store::{Manifest, Store};
use torpor_tests::cases::{self, Case};
use torpor_tests::cluster::{release_dir, start_or_skip};
use torpor_tests::resume::{
    describe_store, job_image_dir, latest_manifest, now_ms, Checks, Event, Trace,
};
use torpor_tests::resume_checks::*;
use torpor_tests::scenario::{Ending, Ready, Scenario, TraceCheck};
use torpor_tests::ClusterOptions;

/// Scenario 1b: the batch script runs perl, which runs the program as its child
/// (`system`, fork + exec): perl and the program are one process tree, checkpointed
/// together (engine.md §3a); `scontrol requeue` in the middle, and the tree resumes
/// with the program still perl's child.
fn requeue_tree(ctx: &Ctx) {
    Scenario::new(ctx, "requeue-tree", 50, &["--checkpoint=5s"])
        .script(|cmd| format!("#!/bin/bash\n/usr/bin/perl -e 'exit(system(@ARGV) >> 8)' {cmd}\n"))
        .ready(Ready::Checkpointed(14))
        .ending(Ending::Resumed {
            after: "after the requeue",
            trace: TraceCheck::Runs,
        })
        .run(|r| {
            let tree_gen = latest_manifest(&r.dirs[0]).is_some_and(|m| m.processes.len() == 2);
            r.ck.check(
                tree_gen,
                format!(
                    "the newest generation holds perl and the program: {:?}",
                    latest_manifest(&r.dirs[0]).map(|m| m.processes)
                ),
            );
            r.requeue_with_final_checkpoint("one program directory (perl's, the tree's root)");
        });
}

/// Scenario 2: `srun -n2` inside a batch job; both tasks resume after `scontrol requeue`.
fn requeue_srun_two_tasks(ctx: &Ctx) {
    let steps = 50;
    let (cmd, trace) = ctx.command(steps, "requeue-srun");
    let traces: Vec<PathBuf> = (0..2)
        .map(|t| PathBuf::from(format!("{}.{t}", trace.display())))
        .collect();
    for t in &traces {
        let _ = std::fs::remove_file(t);
    }
    let job = ctx.submit(
        &["-n2", "--checkpoint=5s"],
        &format!("#!/bin/bash\nsrun -l {cmd}\n"),
    );
    let trace_refs: Vec<&Path> = traces.iter().map(PathBuf::as_path).collect();
    let dirs = ctx.wait_progress(job, &trace_refs, 14, 2);
    eprintln!("  before requeue: {}", ctx.stores(job));
    let t_req = now_ms();
    ctx.c.requeue(job).expect("scontrol requeue");
    let (state, t_stop) = ctx.wait_stopped(job);
    eprintln!(
        "  after requeue: {state} after {} ms; {}",
        t_stop - t_req,
        ctx.stores(job)
    );
    let mut ck = Checks::default();
    ck.check(
        dirs.len() == 2
            && dirs
                .iter()
                .all(|d| !d.display().to_string().contains("4294967291")),
        format!("two program directories, one per task of step 0 (not the batch step): {dirs:?}"),
    );
    check_final_checkpoint(&mut ck, &dirs, &trace_refs, Some(t_req), "requeue");
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
    ck.check(
        fin == "COMPLETED",
        format!("job completed after the requeue: {fin}"),
    );
    let out = ctx.c.read_output(job).unwrap_or_default();
    for (t, tr) in traces.iter().enumerate() {
        check_resumed_trace(&mut ck, &format!("task {t}"), &Trace::read(tr), steps);
        let mine: String = out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{t}: ")))
            .map(|l| format!("{l}\n"))
            .collect();
        check_output(
            &mut ck,
            &format!("task {t}'s lines in the job output (srun -l)"),
            ctx.reference(steps),
            &mine,
        );
    }
    check_images_removed(&mut ck, &dirs);
    ck.finish(&context(ctx, job, &trace_refs));
}

/// Scenario 3: A low-priority job on n2 is preempted by an exclusive high-priority job on n2.
fn preemption(ctx: &Ctx) {
    let steps = 60;
    let (cmd, trace) = ctx.command(steps, "preempt");
    let job = ctx.submit(
        &["-p", "low", "-w", "n2", "--checkpoint=5s"],
        &format!("#!/bin/bash\n{cmd}\n"),
    );
    let dirs = ctx.wait_progress(job, &[&trace], 12, 1);
    eprintln!("  before preemption: {}", ctx.stores(job));
    let t_pre = now_ms();
    let high = ctx.submit(
        &["-p", "high", "-w", "n2", "--exclusive"],
        "#!/bin/bash\nsleep 20\n",
    );
    let (state, t_stop) = ctx.wait_stopped(job);
    let stop_ms = t_stop - t_pre;
    eprintln!(
        "  low job {state} {stop_ms} ms after the high job was submitted; {}",
        ctx.stores(job)
    );
    let mut ck = Checks::default();
    // Slurm 22.05 signals a batch-only job only when GraceTime (20 s) is over, with the
    // requeue; the final checkpoint must then fit in KillWait (10 s).
    ck.check(
        stop_ms < 20_000 + 10_000,
        format!("the preempted program stopped within GraceTime + KillWait: {stop_ms} ms"),
    );
    check_final_checkpoint(&mut ck, &dirs, &[&trace], None, "preemption");
    let mut t_high_done = 0;
    let _ = ctx.c.wait_for("high job to end", WAIT, || {
        let s = ctx.c.job_state(high)?.unwrap_or_default();
        t_high_done = now_ms();
        Ok(s == "COMPLETED" || s == "FAILED" || s == "CANCELLED")
    });
    let high_state = ctx.c.job_state(high).ok().flatten();
    ck.check(
        high_state.as_deref() == Some("COMPLETED"),
        format!("high-priority job completed: {high_state:?}"),
    );
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
    ck.check(
        fin == "COMPLETED",
        format!("preempted job completed after requeue: {fin}"),
    );
    let tr = Trace::read(&trace);
    check_resumed_trace(&mut ck, "counter", &tr, steps);
    if let Some(run2) = tr.runs().get(1) {
        let t2 = run2.first().map(|r| r.1).unwrap_or(0);
        ck.check(
            t2 + 1_000 >= t_high_done,
            format!(
                "resumed after the high-priority job ended (run 2 at {t2}, high seen done at {t_high_done})"
            ),
        );
    }
    check_output(
        &mut ck,
        "job output file",
        ctx.reference(steps),
        &ctx.c.read_output(job).unwrap_or_default(),
    );
    check_images_removed(&mut ck, &dirs);
    ck.finish(&format!(
        "{}\nhigh job {high}: {high_state:?}",
        context(ctx, job, &[&trace])
    ));
}

/// Scenario 5: Without `--checkpoint`: no TORPOR_ variables, no agent, no images; a requeued job
/// starts over from step 0 and its output is one full run's.
fn untouched_without_checkpoint(ctx: &Ctx) {
    let steps = 40;
    let (cmd, trace) = ctx.command(steps, "plain");
    let env_file = ctx.c.work_dir().join("env-plain.txt");
    let job = ctx.submit(
        &[],
        &format!(
            "#!/bin/bash\n/usr/bin/env > {}\n{cmd}\n",
            env_file.display()
        ),
    );
    let _ = ctx.c.wait_for("plain job progress", WAIT, || {
        Ok(Trace::read(&trace).max_step().is_some_and(|s| s >= 8))
    });
    let env1 = std::fs::read_to_string(&env_file).unwrap_or_default();
    ctx.c.requeue(job).expect("scontrol requeue");
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
    let env2 = std::fs::read_to_string(&env_file).unwrap_or_default();
    let mut ck = Checks::default();
    ck.check(fin == "COMPLETED", format!("job completed: {fin}"));
    for (k, env) in [(1, &env1), (2, &env2)] {
        let bad: Vec<&str> = env
            .lines()
            .filter(|l| l.starts_with("TORPOR_") || l.starts_with("LD_PRELOAD="))
            .collect();
        ck.check(
            !env.is_empty() && bad.is_empty(),
            format!("run {k}: no TORPOR_* and no LD_PRELOAD in the batch environment: {bad:?}"),
        );
    }
    ck.check(
        !job_image_dir(&ctx.c, job).exists(),
        format!(
            "no image directory {}",
            job_image_dir(&ctx.c, job).display()
        ),
    );
    let tr = Trace::read(&trace);
    let runs = tr.runs();
    ck.check(
        runs.len() == 2 && tr.count(&Event::Start) == 2 && tr.count(&Event::Step(0)) == 2,
        format!(
            "started over from step 0 after the requeue: {}",
            tr.summary()
        ),
    );
    check_output(
        &mut ck,
        "job output file",
        ctx.reference(steps),
        &ctx.c.read_output(job).unwrap_or_default(),
    );
    ck.finish(&context(ctx, job, &[&trace]));
}

/// Scenario 6: A stale writer of attempt 0 cannot replace the generations of attempt 1: directly
/// through the store, and as a real agent checkpointing into the same directory.
fn stale_attempt_is_fenced(ctx: &Ctx) {
    let steps = 60;
    let (cmd, trace) = ctx.command(steps, "fence");
    let job = ctx.submit(&["--checkpoint=5s"], &format!("#!/bin/bash\n{cmd}\n"));
    let dirs = ctx.wait_progress(job, &[&trace], 10, 1);
    ctx.c.requeue(job).expect("scontrol requeue");
    let mut ck = Checks::default();
    let Some(dir) = dirs.first().cloned() else {
        panic!("no program directory")
    };
    let got_attempt1 = ctx.c.wait_for(
        "a generation committed by attempt 1",
        Duration::from_secs(60),
        || Ok(latest_manifest(&dir).is_some_and(|m| m.attempt == 1)),
    );
    eprintln!("  after the restart: {}", describe_store(&dir));
    ck.check(
        got_attempt1.is_ok(),
        format!(
            "the resumed program committed a generation recording attempt 1 (restarts {}): {}",
            ctx.restarts(job),
            describe_store(&dir)
        ),
    );
    if got_attempt1.is_ok() {
        let store = Store::new(&dir);
        let before = store.latest();
        // The store itself, as root: begin(0) + commit must be refused.
        let r = store.begin(0).and_then(|p| {
            p.commit(Manifest {
                generation: 0,
                attempt: 0,
                time_unix: now_ms() as f64 / 1000.0,
                hostname: "stale".into(),
                processes: vec![],
                bytes: 0,
                ..Default::default()
            })
        });
        ck.check(
            matches!(r, Err(torpor_image::store::StoreError::Fenced { .. })),
            format!("store: commit of attempt 0 refused: {r:?}"),
        );
        ck.check(
            store.latest() == before,
            format!(
                "store: latest unchanged ({before:?} -> {:?})",
                store.latest()
            ),
        );
        // A real agent of attempt 0 checkpointing every second into the same directory (as
        // a partitioned old instance would): standalone mode, so it writes exactly there.
        let mut stale = ctx.c.user_command(&ctx.counter.display().to_string());
        let agent = release_dir().join("libtorpor_agent.so");
        stale
            .args(["8", "500"])
            .env("LD_PRELOAD", &agent)
            .env("TORPOR_DIR", &dir)
            .env("TORPOR_INTERVAL_SECS", "1")
            .env("TORPOR_ATTEMPT", "0")
            .env("TORPOR_KEEP", "2")
            .env("TORPOR_VERBOSE", "1");
        // Only stdio: descriptors the test runner leaks (e.g. a pipe) would make the agent
        // refuse to checkpoint at all, which is not what this case is about.
        // SAFETY: between fork and exec the closure only calls close(2), which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            stale.pre_exec(|| {
                for fd in 3..1024 {
                    let _ = nix::unistd::close(fd);
                }
                Ok(())
            });
        }
        let out = ctx.c.run(stale).expect("stale writer runs");
        eprintln!(
            "  stale writer: status {}, stderr: {}",
            out.status,
            out.stderr.trim()
        );
        ck.check(
            out.stderr.contains("may not commit over it"),
            format!(
                "stale agent's checkpoints were fenced: {}",
                out.stderr.trim()
            ),
        );
        let latest = latest_manifest(&dir);
        ck.check(
            latest.as_ref().is_some_and(|m| m.attempt == 1),
            format!(
                "latest still records attempt 1 after the stale writer: {}",
                describe_store(&dir)
            ),
        );
        let s = Store::new(&dir);
        let newest1 = s
            .generations()
            .unwrap_or_default()
            .into_iter()
            .filter(|&n| s.manifest(n).is_ok_and(|m| m.attempt == 1))
            .max();
        let stale_gens: Vec<u64> = s
            .generations()
            .unwrap_or_default()
            .into_iter()
            .filter(|&n| s.manifest(n).is_ok_and(|m| m.attempt == 0) && Some(n) > newest1)
            .collect();
        ck.check(
            stale_gens.is_empty(),
            format!("no attempt-0 generation above attempt 1's: {stale_gens:?}"),
        );
    }
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
    ck.check(fin == "COMPLETED", format!("job completed: {fin}"));
    check_resumed_trace(&mut ck, "counter", &Trace::read(&trace), steps);
    check_output(
        &mut ck,
        "job output file",
        ctx.reference(steps),
        &ctx.c.read_output(job).unwrap_or_default(),
    );
    ck.finish(&context(ctx, job, &[&trace]));
}

/// Scenario 4: The node running the job dies (no signal); the job is requeued elsewhere and resumes
/// from its last periodic image.
fn node_failure(ctx: &Ctx) {
    let steps = 70;
    let (cmd, trace) = ctx.command(steps, "nodefail");
    let job = ctx.submit(&["--checkpoint=5s"], &format!("#!/bin/bash\n{cmd}\n"));
    let dirs = ctx.wait_progress(job, &[&trace], 16, 1);
    let node = ctx
        .c
        .job_field(job, "NodeList")
        .ok()
        .flatten()
        .expect("job has a node");
    let before = latest_manifest(&dirs[0]);
    eprintln!(
        "  job {job} on {node}; before the kill: {}",
        ctx.stores(job)
    );
    let t_kill = now_ms();
    ctx.c.kill_node(&node).expect("kill node");
    let mut ck = Checks::default();
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(180));
    eprintln!("  ended {fin} {} ms after the kill", now_ms() - t_kill);
    let node2 = ctx.c.job_field(job, "NodeList").ok().flatten();
    ck.check(
        fin == "COMPLETED",
        format!("job completed after the node failure: {fin}"),
    );
    ck.check(
        node2.as_deref().is_some_and(|n| n != node),
        format!("ran again on another node: {node} -> {node2:?}"),
    );
    ck.check(
        before.is_some_and(|m| (m.time_unix * 1000.0) as i64 <= t_kill),
        "a periodic generation existed before the kill",
    );
    let tr = Trace::read(&trace);
    let (last1, first2) = check_resumed_trace(&mut ck, "counter", &tr, steps);
    eprintln!(
        "  node failure: lost {} step(s)",
        (last1 + 1).saturating_sub(first2)
    );
    check_output(
        &mut ck,
        "job output file",
        ctx.reference(steps),
        &ctx.c.read_output(job).unwrap_or_default(),
    );
    check_images_removed(&mut ck, &dirs);
    let ctx_text = context(ctx, job, &[&trace]);
    let restarted = ctx
        .c
        .start_node(&node)
        .and_then(|()| ctx.c.wait_nodes_idle(Duration::from_secs(60)));
    ck.check(
        restarted.is_ok(),
        format!("{node} back in service: {restarted:?}"),
    );
    ck.finish(&ctx_text);
}

#[test]
fn slurm_resume() {
    let t0 = Instant::now();
    let Some(c) = start_or_skip(ClusterOptions::for_tests()) else {
        return;
    };
    eprintln!("cluster up in {:.1}s", t0.elapsed().as_secs_f64());
    let ctx = Ctx::new(c, &[40, 50, 60, 70]);
    let all: &[Case<'_, Ctx>] = &[
        // Scenario 1 (shared with slurm_installed): requeue of a batch job.
        ("requeue_batch", &requeue_batch),
        ("requeue_tree", &requeue_tree),
        ("requeue_srun_two_tasks", &requeue_srun_two_tasks),
        ("preemption", &preemption),
        (
            "untouched_without_checkpoint",
            &untouched_without_checkpoint,
        ),
        ("stale_attempt_is_fenced", &stale_attempt_is_fenced),
        ("node_failure", &node_failure),
    ];
    cases::run(&ctx, all);
    eprintln!("slurm_resume: {:.1}s in all", t0.elapsed().as_secs_f64());
}
