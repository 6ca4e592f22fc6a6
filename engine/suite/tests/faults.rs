//! Fault injection: a running program (`fault_target`, a deterministic computation over a
//! 16 MiB buffer) is checkpointed again and again through the real CLI while SIGKILLs land
//! at random instants: on the program in the middle of a checkpoint, on its writer child
//! mid-write, and on `torpor-restore` (stage 1 or stage 2) at random delays. After every
//! kill: every generation that looks complete is fully valid (none half-written), the
//! next restore uses the newest complete one, and in the end the program finishes with
//! the same RESULT as an uninterrupted run. Prints how many kills landed where.
//! `TORPOR_FAULT_SEED=N` replays a run; `TORPOR_FAULT_KILLS=N` changes the count (>= 100).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torpor_engine_suite::chaos::{self, Rng, Target};
use torpor_engine_suite::process::{self, killed_by_sigkill, Proc};
use torpor_engine_suite::user::RunAs;

#[derive(Debug, Default)]
struct Counts {
    program_before_write: u32,
    program_mid_write: u32,
    program_after_commit: u32,
    writer_mid_write: u32,
    writer_after_commit: u32,
    restore_stage1: u32,
    restore_stage2: u32,
    restore_after: u32,
    checkpoints_ok: u32,
    restores_ok: u32,
}

impl Counts {
    fn kills(&self) -> u32 {
        self.program_before_write
            + self.program_mid_write
            + self.program_after_commit
            + self.writer_mid_write
            + self.writer_after_commit
            + self.restore_stage1
            + self.restore_stage2
            + self.restore_after
    }
}

/// Where a checkpoint stood when the kill landed.
fn phase(images: &Path, before: &[u64]) -> &'static str {
    if chaos::generations(images).last() != before.last() {
        "after commit"
    } else if !chaos::temporaries(images).is_empty() {
        "mid write"
    } else {
        "before write"
    }
}

/// The status.json identity (inode): the agent replaces it after each round and once a
/// restore is complete.
fn status_ino(images: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(images.join("status.json"))
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// Whether the agent of a restored program reported the restore complete since `ino`.
fn restore_reported(images: &Path, ino: u64) -> bool {
    status_ino(images) != ino
        && std::fs::read_to_string(images.join("status.json"))
            .is_ok_and(|s| s.contains("\"restored\":true"))
}

/// Where a restore stood: the deepest process of its tree runs stage 1 (the
/// torpor-restore binary) or stage 2 (exec'd from a memfd) until the restored agent
/// reports the restore complete.
fn restore_stage(tree: &[(u32, usize)], images: &Path, ino: u64) -> &'static str {
    if restore_reported(images, ino) {
        return "restored";
    }
    let Some(&(p, _)) = tree.iter().max_by_key(|&&(p, d)| (d, p)) else {
        return "gone";
    };
    let exe = std::fs::read_link(format!("/proc/{p}/exe"))
        .map(|e| e.display().to_string())
        .unwrap_or_default();
    if exe.contains("memfd") {
        "stage 2"
    } else {
        "stage 1"
    }
}

fn ema(old: Duration, new: Duration) -> Duration {
    (old * 3 + new) / 4
}

fn run() -> Result<()> {
    let target_kills: u32 = std::env::var("TORPOR_FAULT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
        .max(100);
    let t = Target::new("faults", RunAs::Me, 4000, 16)?;
    let images = t.ws.images.clone();
    let argv = t.argv_text();
    let mut rng = Rng::from_env("TORPOR_FAULT_SEED");
    let started = Instant::now();
    let (reference, outcome) = thread::scope(|s| {
        let reference = s.spawn(|| t.reference());
        let outcome = inject(&t, &images, &argv, &mut rng, target_kills);
        (reference.join(), outcome)
    });
    let (result, c) = outcome?;
    let reference = match reference {
        Ok(r) => r?,
        Err(_) => bail!("reference thread panicked"),
    };
    println!(
        "[faults] {} SIGKILLs in {:.1}s: {} during checkpoints (program killed: {} before the \
         write began, {} mid-write, {} after the commit; writer killed: {} mid-write, {} after \
         the commit), {} during restores ({} in stage 1, {} in stage 2, {} just after); \
         {} checkpoints and {} restores completed",
        c.kills(),
        started.elapsed().as_secs_f64(),
        c.program_before_write
            + c.program_mid_write
            + c.program_after_commit
            + c.writer_mid_write
            + c.writer_after_commit,
        c.program_before_write,
        c.program_mid_write,
        c.program_after_commit,
        c.writer_mid_write,
        c.writer_after_commit,
        c.restore_stage1 + c.restore_stage2 + c.restore_after,
        c.restore_stage1,
        c.restore_stage2,
        c.restore_after,
        c.checkpoints_ok,
        c.restores_ok,
    );
    if result != reference {
        bail!("the program ended with RESULT {result}, an uninterrupted run gives {reference}");
    }
    println!("[faults] RESULT {result} equals the uninterrupted run's");
    if c.program_mid_write + c.writer_mid_write < 20 || c.restore_stage1 + c.restore_stage2 < 10 {
        bail!("too few kills landed inside a checkpoint write or a restore: {c:?}");
    }
    Ok(())
}

/// A running program: the process we spawned (torpor run or torpor restore) and the
/// program's pid.
struct Running {
    proc: Proc,
    pid: u32,
}

fn restored_pid(r: &Proc, argv: &[String]) -> Option<u32> {
    let mut tree = process::descendants(r.pid());
    tree.push((r.pid(), 0));
    tree.iter()
        .map(|&(p, _)| p)
        .find(|&p| process::cmdline(p).as_deref() == Some(argv))
}

fn inject(
    t: &Target,
    images: &Path,
    argv: &[String],
    rng: &mut Rng,
    target_kills: u32,
) -> Result<(String, Counts)> {
    let mut c = Counts::default();
    let first = t.start(images)?;
    let pid = first.pid();
    let mut cur = Some(Running { proc: first, pid });
    let mut write_window = Duration::from_millis(60);
    let mut restore_window = Duration::from_millis(150);
    let mut warmup: u32 = 3;
    while c.kills() < target_kills || cur.is_none() {
        let Some(run) = cur.take() else {
            // ---- restore ----
            chaos::check_all_complete_valid(images)?;
            let before = chaos::generations(images);
            let newest = *before.last().context("no generation to restore")?;
            let ino = status_ino(images);
            let r = t.restore(images)?;
            let t0 = Instant::now();
            if c.kills() < target_kills && warmup == 0 && rng.chance(45) {
                thread::sleep(rng.upto(restore_window));
                let mut tree = process::descendants(r.pid());
                tree.push((r.pid(), 0));
                let stage = restore_stage(&tree, images, ino);
                tree.sort_by_key(|&(p, d)| std::cmp::Reverse((d, p)));
                for &(p, _) in &tree {
                    let _ = process::kill_pid(p);
                }
                let f = r.finish(Duration::from_secs(20))?;
                match stage {
                    "stage 1" => c.restore_stage1 += 1,
                    "stage 2" => c.restore_stage2 += 1,
                    "restored" => c.restore_after += 1,
                    _ => {
                        if f.status.success() {
                            bail!("the restored program finished before it was killed");
                        }
                        c.restore_stage1 += 1;
                    }
                }
                if !chaos::poll(Duration::from_secs(5), || restored_pid_any(argv).is_none()) {
                    bail!(
                        "a process of the killed restore ({stage}) survived: {:?}",
                        restored_pid_any(argv)
                    );
                }
                if chaos::generations(images) != before {
                    bail!(
                        "a killed restore changed the generations: {before:?} -> {:?}",
                        chaos::generations(images)
                    );
                }
                continue;
            }
            let mut pid = None;
            chaos::poll(Duration::from_secs(20), || {
                restore_reported(images, ino) && {
                    pid = restored_pid(&r, argv);
                    pid.is_some()
                }
            });
            let pid = pid.with_context(|| {
                let mut tree = process::descendants(r.pid());
                tree.push((r.pid(), 0));
                let seen: Vec<String> = tree
                    .iter()
                    .map(|&(p, d)| {
                        format!(
                            "{p} depth {d} comm {:?} cmdline {:?}",
                            chaos::comm(p),
                            process::cmdline(p)
                        )
                    })
                    .collect();
                format!(
                    "restore did not bring the program back (tree: {seen:?})\n{}",
                    r.stderr()
                )
            })?;
            restore_window = ema(restore_window, t0.elapsed());
            let used = chaos::used_generation(&r.stderr());
            let want = torpor_image::store::Store::new(images).gen_dir(newest);
            if used.as_deref() != Some(want.as_path()) {
                bail!(
                    "restore used {used:?}, the newest complete generation is {}\n{}",
                    want.display(),
                    r.stderr()
                );
            }
            c.restores_ok += 1;
            cur = Some(Running { proc: r, pid });
            continue;
        };
        // ---- running: checkpoint, maybe kill ----
        thread::sleep(Duration::from_millis(20) + rng.upto(Duration::from_millis(80)));
        if !Path::new(&format!("/proc/{}", run.pid)).exists() {
            let f = run.proc.finish(Duration::from_secs(5))?;
            bail!(
                "the program ended before the test was done (raise its steps)\n{}",
                f.describe()
            );
        }
        let before = chaos::generations(images);
        let action = if warmup > 0 || c.kills() >= target_kills {
            0
        } else {
            rng.below(100)
        };
        let cp = t.checkpoint(run.pid)?;
        let began = chaos::poll(Duration::from_secs(10), || {
            !chaos::temporaries(images).is_empty() || chaos::generations(images) != before
        });
        let t_tmp = Instant::now();
        if action < 20 || !began {
            // A checkpoint left alone: it must commit the next generation, and nothing
            // temporary may remain.
            chaos::poll(Duration::from_secs(10), || {
                chaos::generations(images).last() > before.last()
            });
            write_window = ema(write_window, t_tmp.elapsed());
            let f = cp.finish(Duration::from_secs(30))?;
            if !f.status.success() {
                bail!("an undisturbed checkpoint failed\n{}", f.describe());
            }
            let left = chaos::temporaries(images);
            if !left.is_empty() {
                bail!("temporaries left after a successful checkpoint: {left:?}");
            }
            chaos::check_all_complete_valid(images)?;
            c.checkpoints_ok += 1;
            warmup = warmup.saturating_sub(1);
            cur = Some(run);
        } else if action < 65 {
            // SIGKILL the program while its checkpoint is being written.
            thread::sleep(rng.upto(write_window * 6 / 5));
            let ph = phase(images, &before);
            process::kill_pid(run.pid)?;
            let f = run.proc.finish(Duration::from_secs(20))?;
            if !killed_by_sigkill(f.status) {
                bail!("the program was not killed by SIGKILL\n{}", f.describe());
            }
            let _ = cp.finish(Duration::from_secs(30))?;
            chaos::wait_writers_gone(argv, Duration::from_secs(5))?;
            chaos::check_all_complete_valid(images)?;
            match ph {
                "after commit" => c.program_after_commit += 1,
                "mid write" => c.program_mid_write += 1,
                _ => c.program_before_write += 1,
            }
        } else {
            // SIGKILL the writer child mid-write: the program must keep running.
            let mut w = None;
            chaos::poll(Duration::from_secs(5), || {
                w = chaos::writer_of(run.pid);
                w.is_some() || chaos::generations(images) != before
            });
            if let Some(w) = w {
                thread::sleep(rng.upto(write_window));
                let ph = phase(images, &before);
                let _ = process::kill_pid(w);
                match ph {
                    "after commit" => c.writer_after_commit += 1,
                    _ => c.writer_mid_write += 1,
                }
            }
            let f = cp.finish(Duration::from_secs(30))?;
            if !Path::new(&format!("/proc/{}", run.pid)).exists() {
                bail!("the program died with its writer\n{}", f.describe());
            }
            let left = chaos::temporaries(images);
            if !left.is_empty() {
                bail!(
                    "the failed round left temporaries: {left:?}\n{}",
                    f.describe()
                );
            }
            chaos::check_all_complete_valid(images)?;
            cur = Some(run);
        }
    }
    // Run to the end.
    let Some(run) = cur else {
        bail!("no program running at the end");
    };
    let f = run.proc.finish(Duration::from_secs(120))?;
    let result = chaos::result_of(&f).with_context(|| format!("final run\n{}", f.describe()))?;
    Ok((result, c))
}

/// Any live process that is the program under torpor (after its restore tree was
/// killed); the uninterrupted reference run has the same argv but no `TORPOR_DIR`.
fn restored_pid_any(argv: &[String]) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&p| {
            process::cmdline(p).as_deref() == Some(argv)
                && std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                    env.split(|&b| b == 0)
                        .any(|kv| kv.starts_with(b"TORPOR_DIR="))
                })
        })
}

#[test]
fn sigkill_during_checkpoints_and_restores() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}
