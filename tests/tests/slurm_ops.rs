//! Issue 5 against a real Slurm cluster: the operator verbs `torpor checkpoint JOBID`,
//! `torpor vacate JOBID`, `torpor drain NODE`, `torpor status --json` and `torpor inspect
//! --json`, run as the job's user (or root for drain) with the site configuration found
//! through Slurm (`scontrol show config` -> PlugStackConfig), as an operator would.
//!
//! One cluster for the whole file (nodes with 4 CPUs so that three jobs fit on n1).
//! Run: `cargo build --release --workspace && cargo test --release -p torpor-tests --test
//! slurm_ops -- --nocapture` (`TORPOR_CASES=checkpoint,...` picks cases).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use torpor_tests::cases::{self, Case};
use torpor_tests::cluster::{release_dir, start_or_skip};
use torpor_tests::resume::{
    build_counter, generations, latest_manifest, now_ms, reference_output, Checks, Event, Trace,
};
use torpor_tests::resume_checks::*;
use torpor_tests::scenario::{Ending, Ready, Running, Scenario, TraceCheck};
use torpor_tests::{ClusterOptions, Out};

/// `torpor ARGS` as the test user (its own jobs: Slurm authorizes it).
fn torpor_user(ctx: &Ctx, args: &[&str]) -> Out {
    let mut c = ctx
        .c
        .user_command(&release_dir().join("torpor").display().to_string());
    c.args(args);
    let out = ctx.c.run(c).expect("torpor runs");
    eprintln!(
        "  $ torpor {} -> exit {}\n{}{}",
        args.join(" "),
        out.status,
        indent(&out.stdout),
        indent(&out.stderr)
    );
    out
}

/// `torpor ARGS` as root (an administrator), talking to the test cluster.
fn torpor_root(ctx: &Ctx, args: &[&str]) -> Out {
    let out = ctx
        .c
        .root_cmd(&release_dir().join("torpor").display().to_string(), args)
        .expect("torpor runs");
    eprintln!(
        "  # torpor {} -> exit {}\n{}{}",
        args.join(" "),
        out.status,
        indent(&out.stdout),
        indent(&out.stderr)
    );
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    | {l}\n")).collect()
}

fn parse_json(out: &Out, what: &str) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {out:?}"))
}

/// `torpor checkpoint JOBID` on a running job with a batch program and an srun step: each
/// program commits a new generation, the job keeps running (the batch shell and the srun
/// client survive the request signal) and ends like an uninterrupted run. `torpor status
/// --json` and `torpor inspect --json` show the generations meanwhile.
fn checkpoint_keeps_running(ctx: &Ctx) {
    let steps = 40;
    let (cmd, trace) = ctx.command(steps, "ckpt-batch");
    let (scmd, strace) = ctx.command(steps, "ckpt-step");
    let strace0 = PathBuf::from(format!("{}.0", strace.display()));
    let _ = std::fs::remove_file(&strace0);
    let step_out = ctx.c.work_dir().join("ckpt-step.out");
    // A long interval: every generation here comes from `torpor checkpoint`.
    let job = ctx.submit(
        &["-N1", "-n2", "--checkpoint=1h"],
        &format!(
            "#!/bin/bash\nsrun -n1 --output={} --error={}.err {scmd} &\n{cmd}\nwait\necho batch shell survived\n",
            step_out.display(),
            step_out.display()
        ),
    );
    let dirs = ctx.wait_running(job, &[&trace, &strace0], 6, 2);
    let mut ck = Checks::default();
    ck.check(
        dirs.iter().all(|d| generations(d).is_empty()),
        "no generation before the request (interval 1h)",
    );
    let t_req = now_ms();
    let out = torpor_user(ctx, &["checkpoint", &job.to_string(), "--json"]);
    let took = now_ms() - t_req;
    ck.check(
        out.ok(),
        format!("torpor checkpoint exits 0: {}", out.status),
    );
    let v = parse_json(&out, "torpor checkpoint --json");
    let progs = v["programs"].as_array().cloned().unwrap_or_default();
    ck.check(
        progs.len() == 2
            && progs
                .iter()
                .all(|p| p["result"] == "committed" && p["generation"] == 1),
        format!("both programs (batch and step 0) committed generation 1: {progs:?}"),
    );
    ck.check(
        dirs.iter().all(|d| generations(d) == vec![1]),
        format!(
            "generation 1 on disk in each program dir: {}",
            ctx.stores(job)
        ),
    );
    eprintln!("  checkpoint took {took} ms");
    let state = ctx.c.job_state(job).ok().flatten().unwrap_or_default();
    ck.check(
        state == "RUNNING",
        format!("job still running after the checkpoint: {state}"),
    );
    // Status and inspect while it runs.
    let st = torpor_user(ctx, &["status", &job.to_string(), "--json"]);
    ck.check(st.ok(), "torpor status exits 0");
    let sv = parse_json(&st, "torpor status --json");
    let sprogs = sv[0]["programs"].as_array().cloned().unwrap_or_default();
    ck.check(
        sv[0]["job"] == job.0 && sv[0]["checkpointing"] == true,
        format!("status names the job and says it checkpoints: {sv}"),
    );
    ck.check(
        sprogs.len() == 2
            && sprogs.iter().all(|p| {
                p["generations"][0]["generation"] == 1
                    && p["generations"][0]["bytes"].as_u64().unwrap_or(0) > 1 << 20
                    && p["running"] == true
                    && p["node"].as_str().is_some_and(|n| n.starts_with('n'))
            }),
        format!("status lists both programs with generation 1 (> 1 MiB), running, on a node: {sprogs:?}"),
    );
    let every = torpor_user(ctx, &["status", "--json"]);
    let ev = parse_json(&every, "torpor status --json (all jobs)");
    ck.check(
        every.ok()
            && ev.as_array().is_some_and(|a| {
                a.iter().any(|j| {
                    j["job"] == job.0 && j["programs"].as_array().is_some_and(|p| p.len() == 2)
                })
            }),
        format!("status without JOBID lists the job with its programs: {ev}"),
    );
    let human = torpor_user(ctx, &["status", &job.to_string()]);
    ck.check(
        human.ok() && human.stdout.starts_with("JOBID") && human.stdout.lines().count() == 3,
        "human status: a header and one line per program",
    );
    for d in &dirs {
        let ins = torpor_user(ctx, &["inspect", "--json", &d.display().to_string()]);
        let iv = parse_json(&ins, "torpor inspect --json");
        ck.check(
            ins.ok()
                && iv["manifest"]["generation"] == 1
                && iv["origin"]["generation"] == 1
                && iv["integrity"] == "ok",
            format!(
                "inspect --json of {} shows generation 1, integrity ok: manifest {} origin {}",
                d.display(),
                iv["manifest"]["generation"],
                iv["origin"]["generation"]
            ),
        );
    }
    // One step only: step 0's program commits generation 2, the batch program is left alone.
    let out = torpor_user(ctx, &["checkpoint", &format!("{job}.0"), "--json"]);
    let v = parse_json(&out, "torpor checkpoint JOB.0 --json");
    let batch_dir = dirs
        .iter()
        .find(|d| d.display().to_string().contains("/4294967291/"));
    let step_dir = dirs
        .iter()
        .find(|d| d.display().to_string().contains(&format!("/{job}/0/")));
    ck.check(
        out.ok()
            && v["steps"] == serde_json::json!(["0"])
            && v["programs"].as_array().is_some_and(|p| p.len() == 1)
            && v["programs"][0]["generation"] == 2
            && step_dir.is_some_and(|d| generations(d) == vec![1, 2])
            && batch_dir.is_some_and(|d| generations(d) == vec![1]),
        format!(
            "checkpoint {job}.0 reaches step 0 only: {v}; {}",
            ctx.stores(job)
        ),
    );
    let fin = ctx.wait_end(job);
    ck.check(fin == "COMPLETED", format!("job completed: {fin}"));
    ck.check(ctx.restarts(job) == 0, "never requeued");
    let expected = format!("{}batch shell survived\n", ctx.reference(steps));
    check_output(
        &mut ck,
        "batch output (then the shell's last line)",
        &expected,
        &ctx.c.read_output(job).unwrap_or_default(),
    );
    check_output(
        &mut ck,
        "srun step output",
        ctx.reference(steps),
        &std::fs::read_to_string(&step_out).unwrap_or_default(),
    );
    for t in [&trace, &strace0] {
        let tr = Trace::read(t);
        ck.check(
            tr.count(&Event::Start) == 1 && tr.count(&Event::End) == 1,
            format!("{}: one uninterrupted run: {}", t.display(), tr.summary()),
        );
    }
    ck.finish(&context(ctx, job, &[&trace, &strace0]));
}

/// `torpor vacate JOBID`: checkpoint, requeue; the job resumes (not from step 0, no step
/// skipped, at most one redone) and ends with an uninterrupted run's output.
fn vacate_resumes(ctx: &Ctx) {
    Scenario::new(ctx, "vacate", 50, &["--checkpoint=1h"])
        .ready(Ready::Running(10))
        .ending(Ending::Resumed {
            after: "after vacate",
            trace: TraceCheck::Counts,
        })
        .run(|r| {
            let (job, trace) = (r.job, r.trace.clone());
            let t_req = now_ms();
            let out = torpor_user(ctx, &["vacate", &job.to_string(), "--json"]);
            r.ck.check(out.ok(), format!("torpor vacate exits 0: {}", out.status));
            let v = parse_json(&out, "torpor vacate --json");
            r.ck.check(
                v["requeued"] == true && v["checkpoint"]["programs"][0]["result"] == "committed",
                format!("vacate checkpointed and requeued: {v}"),
            );
            let (state, t_stop) = ctx.wait_stopped(job);
            eprintln!("  stopped ({state}) {} ms after vacate", t_stop - t_req);
            let stopped_at = Trace::read(&trace).max_step().unwrap_or(0);
            // Once restored: one request gives exactly one new generation (the restorer's
            // waiting processes must not pass Slurm's signal on a second time).
            let res = ctx.c.wait_for("the job to resume", WAIT, || {
                Ok(ctx.restarts(job) == 1
                    && Trace::read(&trace)
                        .max_step()
                        .is_some_and(|s| s >= stopped_at + 3))
            });
            r.ck.check(res.is_ok(), format!("resumed and progressing: {res:?}"));
            one_request_one_generation(
                r,
                "after the restore",
                Duration::from_millis(1500),
                "restored program",
            );
        });
}

/// `torpor checkpoint JOBID --json` once, then, after `settle` (time for a second round,
/// should the request reach the program twice), checks that it gave exactly one new
/// generation in the first program directory. `what` ends the JSON label ("torpor
/// checkpoint --json WHAT"), `who` starts the check's message.
fn one_request_one_generation(r: &mut Running<'_>, what: &str, settle: Duration, who: &str) {
    let before = generations(&r.dirs[0]);
    let out = torpor_user(r.ctx, &["checkpoint", &r.job.to_string(), "--json"]);
    let v = parse_json(&out, &format!("torpor checkpoint --json {what}"));
    std::thread::sleep(settle);
    let after = generations(&r.dirs[0]);
    let prev = v["programs"][0]["previous_generation"]
        .as_u64()
        .unwrap_or(0);
    r.ck.check(
        out.ok()
            && v["programs"][0]["generation"].as_u64() == Some(prev + 1)
            && after.last().copied() == Some(prev + 1),
        format!("{who}: one request, one generation: {before:?} -> {after:?}, {v}"),
    );
}

/// `torpor checkpoint JOBID` on a process tree (perl running the counter with `system`):
/// Slurm's signal reaches perl (the tree's root) and the counter (a member) alike; one
/// request must give exactly one generation holding both (a member passing the job-wide
/// signal on to the root made it two), and the job ends like an uninterrupted run.
fn checkpoint_tree(ctx: &Ctx) {
    Scenario::new(ctx, "checkpoint-tree", 40, &["--checkpoint=1h"])
        .script(|cmd| format!("#!/bin/bash\n/usr/bin/perl -e 'exit(system(@ARGV) >> 8)' {cmd}\n"))
        .ready(Ready::Running(5))
        .ending(Ending::Uninterrupted)
        .run(|r| {
            let dirs = r.dirs.clone();
            r.ck.check(
                dirs.len() == 1,
                format!("one program directory (perl's, the tree's root): {dirs:?}"),
            );
            // A second, forwarded request would start its round right after the first one.
            one_request_one_generation(r, "of a tree", Duration::from_millis(2000), "tree");
            let procs = latest_manifest(&dirs[0]).map(|m| m.processes.len());
            r.ck.check(
                procs == Some(2),
                format!("the generation holds perl and the counter: {procs:?} processes"),
            );
        });
}

/// A statically linked program in a checkpointed batch step never loads the agent, so the
/// job-wide request signal of `torpor checkpoint JOBID` would kill it (ADR 0007). Started
/// with the signal ignored (`trap '' "$TORPOR_SIGNAL"; exec`, as slurm.md advises) it
/// survives the request and exits 0, while the counter commits a generation and ends like
/// an uninterrupted run. The same program started plainly shows what the trap prevents:
/// it dies of the request.
fn checkpoint_spares_ignoring_static(ctx: &Ctx) {
    let dir = ctx.c.work_dir();
    let static_bin = build_static_sleeper(&dir);
    let script = move |cmd: &str| {
        format!(
            "#!/bin/bash\n\
             ( trap '' \"$TORPOR_SIGNAL\"; exec {s} 25 ) &\n\
             p1=$!\n\
             {s} 25 &\n\
             p2=$!\n\
             {cmd}\n\
             wait $p1; echo \"ignoring static exit $?\"\n\
             wait $p2; echo \"plain static killed by the request: $(( $? == 128 + TORPOR_SIGNAL ))\"\n",
            s = static_bin.display()
        )
    };
    Scenario::new(ctx, "static", 40, &["--checkpoint=1h"])
        .script(script)
        .ready(Ready::Running(5))
        .ending(Ending::Uninterrupted)
        .output_tail("ignoring static exit 0\nplain static killed by the request: 1\n")
        .run(|r| {
            let out = torpor_user(ctx, &["checkpoint", &r.job.to_string(), "--json"]);
            let v = parse_json(&out, "torpor checkpoint --json");
            r.ck.check(
                out.ok()
                    && v["programs"].as_array().is_some_and(|p| p.len() == 1)
                    && v["programs"][0]["result"] == "committed",
                format!("the counter (the only program) committed: {v}"),
            );
            let state = ctx.c.job_state(r.job).ok().flatten().unwrap_or_default();
            r.ck.check(
                state == "RUNNING",
                format!("job still running after the checkpoint: {state}"),
            );
        });
}

/// Compiles a statically linked program that sleeps ARGV[1] seconds, prints nothing and
/// exits 0 (it cannot load the agent).
fn build_static_sleeper(dir: &Path) -> PathBuf {
    let src = dir.join("static_sleep.c");
    std::fs::write(
        &src,
        "#include <stdlib.h>\n#include <unistd.h>\n\
         int main(int c, char **v) { int n = c > 1 ? atoi(v[1]) : 1; \
         while (n-- > 0) sleep(1); return 0; }\n",
    )
    .expect("write static_sleep.c");
    let bin = dir.join("static_sleep");
    let out = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc runs");
    assert!(out.status.success(), "cc -static failed: {out:?}");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// Refusals are Slurm's, reported with the command and Slurm's words; a job without
/// checkpointing is never signalled by `torpor checkpoint`.
fn refusals(ctx: &Ctx) {
    let mut ck = Checks::default();
    let out = torpor_user(ctx, &["drain", "n3", "--reason", "not allowed"]);
    ck.check(
        !out.ok() && out.stderr.contains("scontrol update") && out.stderr.contains("refused"),
        format!(
            "a user's drain is refused, naming the command: {:?}",
            out.stderr
        ),
    );
    let st = ctx.c.node_state("n3").unwrap_or_default();
    ck.check(!st.contains("DRAIN"), format!("n3 not drained: {st}"));
    let out = torpor_user(ctx, &["checkpoint", "999999"]);
    ck.check(
        !out.ok() && out.stderr.contains("999999") && out.stderr.contains("not known"),
        format!("unknown job reported: {:?}", out.stderr),
    );
    let (cmd, trace) = ctx.command(20, "plain");
    let job = ctx.submit(&[], &format!("#!/bin/bash\n{cmd}\n"));
    let r = ctx.c.wait_for("plain job to run", WAIT, || {
        Ok(Trace::read(&trace).max_step().is_some_and(|s| s >= 2))
    });
    ck.check(r.is_ok(), "plain job runs");
    let out = torpor_user(ctx, &["checkpoint", &job.to_string()]);
    ck.check(
        !out.ok() && out.stderr.contains("does not run with checkpointing"),
        format!(
            "checkpoint of a job without checkpointing refused: {:?}",
            out.stderr
        ),
    );
    let fin = ctx.wait_end(job);
    ck.check(
        fin == "COMPLETED",
        format!("the plain job was not signalled and completed: {fin}"),
    );
    ck.finish(&context(ctx, job, &[&trace]));
}

/// `torpor drain n1` with two checkpointed jobs and one without on n1: n1 is drained, the
/// two are checkpointed, requeued and resume elsewhere with correct results; the third is
/// reported, left running and completes on n1; the exit status says not everything moved.
fn drain_node(ctx: &Ctx) {
    let c = &ctx.c;
    // Put all three jobs on n1 without pinning them (a pinned job could not move).
    c.root_cmd(
        "scontrol",
        &["update", "nodename=n2,n3", "state=drain", "reason=fill-n1"],
    )
    .expect("drain n2,n3");
    let mut cmds = Vec::new();
    let mut jobs = Vec::new();
    for (i, (steps, ckpt)) in [(50, true), (60, true), (70, false)].iter().enumerate() {
        let (cmd, trace) = ctx.command(*steps, &format!("drain-{i}"));
        let args: &[&str] = if *ckpt { &["--checkpoint=1h"] } else { &[] };
        jobs.push((
            ctx.submit(args, &format!("#!/bin/bash\n{cmd}\n")),
            *steps,
            *ckpt,
        ));
        cmds.push(trace);
    }
    let traces: Vec<&Path> = cmds.iter().map(PathBuf::as_path).collect();
    let r = c.wait_for("three jobs running on n1", WAIT, || {
        Ok(traces
            .iter()
            .all(|t| Trace::read(t).max_step().is_some_and(|s| s >= 6)))
    });
    c.root_cmd("scontrol", &["update", "nodename=n2,n3", "state=resume"])
        .expect("resume n2,n3");
    let mut ck = Checks::default();
    ck.check(r.is_ok(), format!("three jobs running: {r:?}"));
    for (j, _, _) in &jobs {
        let n = c
            .job_field(*j, "NodeList")
            .ok()
            .flatten()
            .unwrap_or_default();
        ck.check(n == "n1", format!("job {j} runs on n1: {n}"));
    }
    let out = torpor_root(ctx, &["drain", "n1", "--reason", "torpor test", "--json"]);
    let v = parse_json(&out, "torpor drain --json");
    ck.check(
        out.status == 1,
        format!("exit status 1: a job was left running ({})", out.status),
    );
    let st = c.node_state("n1").unwrap_or_default();
    ck.check(
        st == "drng"
            && v["nodes"][0]["state"]
                .as_str()
                .is_some_and(|s| s.contains("DRAIN")),
        format!(
            "n1 draining right after (sinfo {st}, torpor drain says {})",
            v["nodes"][0]["state"]
        ),
    );
    let by_job: BTreeMap<u64, Value> = v["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|j| (j["job"].as_u64().unwrap_or(0), j))
        .collect();
    for (j, _, ckpt) in &jobs {
        let r = &by_job.get(&(j.0 as u64)).cloned().unwrap_or(Value::Null);
        if *ckpt {
            ck.check(
                r["checkpointing"] == true && r["requeued"] == true && r["ok"] == true,
                format!("checkpointed job {j} checkpointed and requeued: {r}"),
            );
        } else {
            ck.check(
                r["checkpointing"] == false
                    && r["requeued"] == false
                    && r["ok"] == false
                    && r["action"]
                        .as_str()
                        .is_some_and(|a| a.contains("left running")),
                format!("job {j} without checkpointing reported and left running: {r}"),
            );
            let s = c.job_state(*j).ok().flatten().unwrap_or_default();
            ck.check(s == "RUNNING", format!("job {j} still running: {s}"));
        }
    }
    for (i, (j, steps, ckpt)) in jobs.iter().enumerate() {
        let fin = if *ckpt {
            ctx.wait_done_after_restart(*j, Duration::from_secs(150))
        } else {
            ctx.wait_end(*j)
        };
        ck.check(fin == "COMPLETED", format!("job {j} completed: {fin}"));
        let node = c
            .job_field(*j, "NodeList")
            .ok()
            .flatten()
            .unwrap_or_default();
        let tr = Trace::read(traces[i]);
        if *ckpt {
            ck.check(
                node != "n1" && !node.is_empty(),
                format!("job {j} resumed elsewhere: {node}"),
            );
            check_resumed_once(&mut ck, &format!("job {j}"), &tr, *steps);
        } else {
            ck.check(
                node == "n1"
                    && ctx.restarts(*j) == 0
                    && tr.count(&Event::Start) == 1
                    && tr.count(&Event::End) == 1,
                format!("job {j} ran on n1 uninterrupted: {node}, {}", tr.summary()),
            );
        }
        check_output(
            &mut ck,
            &format!("job {j} output"),
            ctx.reference(*steps),
            &c.read_output(*j).unwrap_or_default(),
        );
    }
    let st = c.node_state("n1").unwrap_or_default();
    ck.check(st == "drain", format!("n1 ends drained (sinfo: {st})"));
    let ctx_text = jobs
        .iter()
        .enumerate()
        .map(|(i, (j, _, _))| context(ctx, *j, &[traces[i]]))
        .collect::<Vec<_>>()
        .join("\n");
    let _ = c.root_cmd("scontrol", &["update", "nodename=n1", "state=resume"]);
    ck.finish(&ctx_text);
}

/// `torpor drain n3 --force`: a job without checkpointing is requeued anyway, and the
/// operator is told its work is lost; it starts over elsewhere.
fn drain_force(ctx: &Ctx) {
    let c = &ctx.c;
    c.root_cmd(
        "scontrol",
        &["update", "nodename=n1,n2", "state=drain", "reason=fill-n3"],
    )
    .expect("drain n1,n2");
    let (cmd, trace) = ctx.command(20, "force");
    let job = ctx.submit(&[], &format!("#!/bin/bash\n{cmd}\n"));
    let r = c.wait_for("plain job running", WAIT, || {
        Ok(Trace::read(&trace).max_step().is_some_and(|s| s >= 3))
    });
    c.root_cmd("scontrol", &["update", "nodename=n1,n2", "state=resume"])
        .expect("resume n1,n2");
    let mut ck = Checks::default();
    ck.check(r.is_ok(), format!("plain job running: {r:?}"));
    let out = torpor_root(ctx, &["drain", "n3", "--reason", "force test", "--force"]);
    ck.check(
        out.ok(),
        format!("exit 0: every job handled ({})", out.status),
    );
    ck.check(
        out.stdout.starts_with("JOBID")
            && out.stdout.contains(&format!("{job} "))
            && out.stdout.contains("WITHOUT checkpoint")
            && out.stdout.contains("NODELIST")
            && out.stderr.contains("work so far is lost"),
        "human output: the job's line says requeued without checkpoint, the node table, and the warning",
    );
    let fin = ctx.wait_done_after_restart(job, Duration::from_secs(120));
    ck.check(
        fin == "COMPLETED",
        format!("job completed after starting over: {fin}"),
    );
    let tr = Trace::read(&trace);
    ck.check(
        tr.count(&Event::Start) == 2,
        format!("started over (two starts): {}", tr.summary()),
    );
    let node = c
        .job_field(job, "NodeList")
        .ok()
        .flatten()
        .unwrap_or_default();
    ck.check(node != "n3", format!("ran again elsewhere: {node}"));
    let _ = c.root_cmd("scontrol", &["update", "nodename=n3", "state=resume"]);
    ck.finish(&context(ctx, job, &[&trace]));
}

#[test]
fn slurm_ops() {
    let t0 = Instant::now();
    let Some(c) = start_or_skip(ClusterOptions {
        cpus_per_node: 4,
        ..ClusterOptions::for_tests()
    }) else {
        return;
    };
    eprintln!("cluster up in {:.1}s", t0.elapsed().as_secs_f64());
    let counter = build_counter(&c.work_dir()).expect("counter builds");
    let mut reference = BTreeMap::new();
    for n in [20, 40, 50, 60, 70] {
        reference.insert(n, reference_output(&counter, n).expect("reference run"));
    }
    let ctx = Ctx {
        c,
        counter,
        reference,
    };
    let all: &[Case<'_, Ctx>] = &[
        ("checkpoint_keeps_running", &checkpoint_keeps_running),
        ("checkpoint_tree", &checkpoint_tree),
        (
            "checkpoint_spares_ignoring_static",
            &checkpoint_spares_ignoring_static,
        ),
        ("vacate_resumes", &vacate_resumes),
        ("refusals", &refusals),
        ("drain_node", &drain_node),
        ("drain_force", &drain_force),
    ];
    cases::run(&ctx, all);
    eprintln!("slurm_ops: {:.1}s in all", t0.elapsed().as_secs_f64());
}
