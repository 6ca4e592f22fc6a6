//! The site policy for a task whose images are all invalid (plugstack `on_bad_image=`,
//! handed to tasks as `TORPOR_ON_BAD_IMAGE`), through the real `torpor-restore --slurm
//! DIR -- CMD` the agent runs in a Slurm task: `fail` (the default) ends the task with a
//! message naming what is wrong and never starts the program; `fresh` starts it from the
//! beginning after the same message; a task without any image always starts fresh.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use torpor_engine_suite::chaos::{self, Target};
use torpor_engine_suite::contract::RESTORE_BIN;
use torpor_engine_suite::process::{self, Finished, Proc};
use torpor_engine_suite::user::RunAs;

/// Two generations, then every image damaged (a flipped byte in the middle).
fn damaged_generations(t: &Target) -> Result<()> {
    let images = &t.ws.images;
    let run = t.start(images)?;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(100));
        let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
        if !f.status.success() {
            bail!("checkpoint failed\n{}", f.describe());
        }
    }
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20))?;
    let store = torpor_image::store::Store::new(images);
    for g in chaos::generations(images) {
        for e in std::fs::read_dir(store.gen_dir(g))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "img") {
                let mut b = std::fs::read(&p)?;
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                std::fs::write(&p, b)?;
            }
        }
    }
    Ok(())
}

/// `torpor-restore --slurm DIR -- fault_target ...` with the policy in the environment.
fn slurm_restore(t: &Target, dir: &Path, policy: Option<&str>) -> Result<Finished> {
    let mut args: Vec<OsString> = vec!["--slurm".into(), dir.into(), "--".into()];
    args.extend(t.argv.iter().cloned());
    let mut all: Vec<OsString> = vec![t.contract.dir.join(RESTORE_BIN).into()];
    all.extend(args);
    let mut c = t.runner.command(t.ws.bin.join("fdclean"), &all);
    c.current_dir(&t.ws.work);
    match policy {
        Some(p) => c.env("TORPOR_ON_BAD_IMAGE", p),
        None => c.env_remove("TORPOR_ON_BAD_IMAGE"),
    };
    let mut p = Proc::spawn(c, "torpor-restore --slurm")?;
    // A fresh start runs the whole program; stop it once it is clearly running.
    if p.wait_line(0, Duration::from_secs(20), |l| l.starts_with("READY"))
        .is_ok()
    {
        let _ = p.wait_line(0, Duration::from_secs(20), |l| l.starts_with("step 20"));
        process::kill_pid(p.pid())?;
    }
    p.finish(Duration::from_secs(30))
}

fn run() -> Result<()> {
    let t = Target::new("bad-image-policy", RunAs::Me, 400, 1)?;
    damaged_generations(&t)?;
    let images = &t.ws.images;

    for policy in [None, Some("fail")] {
        let f = slurm_restore(&t, images, policy)?;
        if f.status.code() != Some(126) || f.stdout.iter().any(|l| l.starts_with("READY")) {
            bail!(
                "policy {policy:?}: the task did not fail as it should\n{}",
                f.describe()
            );
        }
        for want in [
            "no valid generation",
            "generation 2:",
            ".img",
            "offset",
            "on_bad_image=fail",
        ] {
            if !f.stderr.contains(want) {
                bail!(
                    "policy {policy:?}: the message lacks {want:?}\n{}",
                    f.describe()
                );
            }
        }
        println!(
            "[policy] on_bad_image={}: task failed (126):\n{}",
            policy.unwrap_or("(unset)"),
            f.stderr.trim_end()
        );
    }

    let f = slurm_restore(&t, images, Some("fresh"))?;
    if !f.stdout.iter().any(|l| l.starts_with("READY")) || !f.stderr.contains("from the beginning")
    {
        bail!(
            "on_bad_image=fresh: the program did not start over\n{}",
            f.describe()
        );
    }
    if !f.stderr.contains("no valid generation") {
        bail!(
            "on_bad_image=fresh: no message about the invalid images\n{}",
            f.describe()
        );
    }
    println!(
        "[policy] on_bad_image=fresh: started over:\n{}",
        f.stderr.trim_end()
    );

    let f = slurm_restore(&t, images, Some("sometimes"))?;
    if f.status.code() != Some(126) || !f.stderr.contains("TORPOR_ON_BAD_IMAGE") {
        bail!(
            "a bad policy value must fail the task, naming the variable\n{}",
            f.describe()
        );
    }

    // No image at all (first run): fresh even when the site says fail.
    let empty = t.ws.root.join("empty");
    std::fs::create_dir_all(&empty)?;
    let f = slurm_restore(&t, &empty, Some("fail"))?;
    if !f.stdout.iter().any(|l| l.starts_with("READY")) {
        bail!(
            "without any image the program must start fresh\n{}",
            f.describe()
        );
    }
    Ok(())
}

#[test]
fn on_bad_image_fail_or_fresh() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}
