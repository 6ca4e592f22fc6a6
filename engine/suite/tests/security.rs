//! Security rules with two unprivileged users (A = torpor-test, B = torpor-test2; needs
//! root to switch users, skipped otherwise):
//! - A's images are 0600 in 0700 directories: B can neither read nor restore them, and the
//!   restorer refuses images A owns even when B can read them (owner check);
//! - a symlink or a directory planted by B in a shared 1777 image root, where A's images
//!   will go, is never followed or used, neither by `torpor run` nor by the agent in a
//!   Slurm-style task (nothing lands in B's directory);
//! - an image that claims memory, threads or fds outside sane bounds is refused by the
//!   restorer's selection, before anything is mapped.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use torpor_engine_suite::chaos::{self, Target};
use torpor_engine_suite::contract::{AGENT_LIB, RESTORE_BIN};
use torpor_engine_suite::process::{self, Finished, Proc};
use torpor_engine_suite::user::RunAs;

fn users() -> Result<Option<(RunAs, RunAs)>> {
    match RunAs::second()? {
        Some(b) => Ok(Some((RunAs::unprivileged()?, b))),
        None => {
            println!("SKIP: switching between two test users needs root");
            Ok(None)
        }
    }
}

fn as_user(who: &RunAs, t: &Target, prog: impl Into<OsString>, args: &[&str]) -> Result<Finished> {
    let mut all: Vec<OsString> = vec![prog.into()];
    all.extend(args.iter().map(OsString::from));
    let mut c = who.command(t.ws.bin.join("fdclean"), &all);
    c.current_dir("/");
    process::run(c, "as user", Duration::from_secs(60))
}

fn uid_of(r: &RunAs) -> u32 {
    r.ids().map(|(u, _)| u).unwrap_or(0)
}

/// Every directory under `dir` is 0700 and every file 0600, all owned by `uid`.
fn check_private(dir: &Path, uid: u32) -> Result<()> {
    let md = std::fs::symlink_metadata(dir)?;
    if md.is_dir() {
        if md.permissions().mode() & 0o777 != 0o700 || md.uid() != uid {
            bail!(
                "{}: mode {:o} uid {}",
                dir.display(),
                md.permissions().mode() & 0o777,
                md.uid()
            );
        }
        for e in std::fs::read_dir(dir)?.flatten() {
            check_private(&e.path(), uid)?;
        }
    } else if md.is_file() && (md.permissions().mode() & 0o777 != 0o600 || md.uid() != uid) {
        bail!(
            "{}: mode {:o} uid {}",
            dir.display(),
            md.permissions().mode() & 0o777,
            md.uid()
        );
    }
    Ok(())
}

fn owner_and_modes() -> Result<()> {
    let Some((a, b)) = users()? else {
        return Ok(());
    };
    let t = Target::new("sec-owner", a.clone(), 2000, 1)?;
    let images = t.ws.images.clone();
    let run = t.start(&images)?;
    let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
    if !f.status.success() {
        bail!("checkpoint as A failed\n{}", f.describe());
    }
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20))?;
    check_private(&images, uid_of(&a))?;
    println!("[security] A's image directory: directories 0700, files 0600, all A's");

    let store = torpor_image::store::Store::new(&images);
    let gen = store.gen_dir(
        *chaos::generations(&images)
            .last()
            .context("no generation")?,
    );
    let image = std::fs::read_dir(&gen)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "img"))
        .context("no image")?;
    let f = as_user(&b, &t, "cat", &[image.to_str().unwrap_or_default()])?;
    if f.status.success() || !f.stderr.contains("Permission denied") {
        bail!("B could read A's image\n{}", f.describe());
    }
    let torpor = t.contract.torpor.clone();
    let f = as_user(
        &b,
        &t,
        torpor.clone(),
        &["restore", images.to_str().unwrap_or_default()],
    )?;
    if f.status.success() || f.stdout.iter().any(|l| l.starts_with("step")) {
        bail!("B restored A's image\n{}", f.describe());
    }
    println!("[security] B reading A's image: {}", f.stderr.trim());

    // Even readable (copied by root, still A's), the restorer refuses A's image to B.
    let open = t.ws.root.join("readable-copy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&images)
        .arg(&open)
        .status()?;
    let st2 = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&open)
        .status()?;
    if !st.success() || !st2.success() {
        bail!("cannot prepare the readable copy");
    }
    let f = as_user(
        &b,
        &t,
        torpor,
        &["restore", open.to_str().unwrap_or_default()],
    )?;
    let a_uid = uid_of(&a).to_string();
    if f.status.success()
        || f.stdout.iter().any(|l| l.starts_with("step"))
        || !f.stderr.contains(&format!("owned by uid {a_uid}"))
    {
        bail!(
            "the restorer did not refuse A's readable image to B\n{}",
            f.describe()
        );
    }
    println!(
        "[security] B restoring a readable copy of A's image: {}",
        f.stderr.trim()
    );
    Ok(())
}

/// A shared image root like a site's `/scratch/torpor` (1777, root's).
fn shared_root(t: &Target) -> Result<PathBuf> {
    let r = t.ws.root.join("shared");
    std::fs::create_dir_all(&r)?;
    std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o1777))?;
    Ok(r)
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut r| r.next().is_none())
        .unwrap_or(false)
}

/// A's program under the agent as a Slurm task would run it (no Slurm needed: the
/// variables the plugin sets), with `root` as the image root.
fn slurm_style_task(t: &Target, a: &RunAs, root: &Path) -> Result<Finished> {
    // The variables are set by `env` after the switch to A: the preload must not reach
    // setpriv itself (a root process that changes its uid).
    let mut args: Vec<OsString> = vec![
        format!("LD_PRELOAD={}", t.contract.dir.join(AGENT_LIB).display()).into(),
        format!("TORPOR_DIR={}", root.display()).into(),
        "TORPOR_CONTEXT=slurm".into(),
        "TORPOR_JOB_ID=77".into(),
        "TORPOR_STEP_ID=0".into(),
        "TORPOR_TASK_ID=0".into(),
        "TORPOR_INTERVAL_SECS=0".into(),
        format!(
            "TORPOR_RESTORER={}",
            t.contract.dir.join(RESTORE_BIN).display()
        )
        .into(),
        t.ws.bin.join("fdclean").into(),
    ];
    args.extend(t.argv.iter().cloned());
    let mut c = a.command("/usr/bin/env", &args);
    c.current_dir("/");
    let mut p = Proc::spawn(c, "slurm-style task")?;
    p.wait_line(0, Duration::from_secs(30), |l| l.starts_with("READY"))?;
    std::thread::sleep(Duration::from_millis(300));
    process::kill_pid(p.pid())?;
    p.finish(Duration::from_secs(20))
}

fn planted() -> Result<()> {
    let Some((a, b)) = users()? else {
        return Ok(());
    };
    let t = Target::new("sec-planted", a.clone(), 2000, 1)?;
    let root = shared_root(&t)?;
    let a_name = "torpor-test";
    let a_dir = root.join(a_name);
    // B's trap: a directory B owns and anyone may write.
    let trap = t.ws.root.join("b-trap");
    std::fs::create_dir_all(&trap)?;
    std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o777))?;
    if let Some((uid, gid)) = b.ids() {
        std::os::unix::fs::chown(&trap, Some(uid), Some(gid))?;
    }
    let torpor = t.contract.torpor.clone();
    let job_dir = a_dir.join("job1");
    let run_a = |what: &str| -> Result<Finished> {
        let mut args: Vec<OsString> = vec![
            torpor.clone().into(),
            "run".into(),
            "--dir".into(),
            job_dir.clone().into(),
            "--".into(),
        ];
        args.extend(t.argv.iter().cloned());
        let mut c = a.command(t.ws.bin.join("fdclean"), &args);
        c.current_dir("/");
        let f = process::run(c, what, Duration::from_secs(30))?;
        Ok(f)
    };

    // 1. B plants a symlink where A's directory will be.
    let f = as_user(
        &b,
        &t,
        "ln",
        &[
            "-s",
            trap.to_str().unwrap_or_default(),
            a_dir.to_str().unwrap_or_default(),
        ],
    )?;
    if !f.status.success() {
        bail!("B could not plant the symlink\n{}", f.describe());
    }
    let f = run_a("torpor run (symlink planted)")?;
    if f.status.success() || f.stdout.iter().any(|l| l.starts_with("READY")) || !empty(&trap) {
        bail!("torpor run followed B's symlink\n{}", f.describe());
    }
    println!(
        "[security] B's symlink in the shared root: {}",
        f.stderr.trim()
    );
    let f = slurm_style_task(&t, &a, &a_dir)?;
    if !f.stderr.contains("cannot use image directory") || !empty(&trap) {
        bail!("the agent followed B's symlink\n{}", f.describe());
    }
    println!("[security] agent, same trap: {}", f.stderr.trim());

    // 2. B plants a directory of its own there instead.
    std::fs::remove_file(&a_dir)?;
    let f = as_user(
        &b,
        &t,
        "mkdir",
        &["-m", "0777", a_dir.to_str().unwrap_or_default()],
    )?;
    if !f.status.success() {
        bail!("B could not plant the directory\n{}", f.describe());
    }
    let f = run_a("torpor run (directory planted)")?;
    if f.status.success() || !empty(&a_dir) {
        bail!("torpor run used B's directory\n{}", f.describe());
    }
    println!(
        "[security] B's directory in the shared root: {}",
        f.stderr.trim()
    );
    let f = slurm_style_task(&t, &a, &a_dir)?;
    if !f.stderr.contains("cannot use image directory") || !empty(&a_dir) {
        bail!("the agent used B's directory\n{}", f.describe());
    }

    // 3. Without B's plants, A gets a private chain, and B cannot plant inside it.
    std::fs::remove_dir_all(&a_dir)?;
    let f = slurm_style_task(&t, &a, &a_dir)?;
    if f.stderr.contains("cannot use image directory") {
        bail!("the agent refused a clean root\n{}", f.describe());
    }
    check_private(&a_dir, uid_of(&a))?;
    let inside = a_dir.join("77").join("x");
    let f = as_user(
        &b,
        &t,
        "ln",
        &[
            "-s",
            trap.to_str().unwrap_or_default(),
            inside.to_str().unwrap_or_default(),
        ],
    )?;
    if f.status.success() {
        bail!("B could plant a symlink inside A's image directory");
    }
    println!("[security] clean root: A's chain is private (0700, A's); B cannot plant inside it");
    Ok(())
}

/// A real image's metadata rewritten with absurd claims must be refused by selection.
fn absurd_claims() -> Result<()> {
    use torpor_image::{ImageReader, ImageWriter};
    let t = Target::new("sec-bounds", RunAs::Me, 2000, 1)?;
    let images = t.ws.images.clone();
    let run = t.start(&images)?;
    let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
    if !f.status.success() {
        bail!("checkpoint failed\n{}", f.describe());
    }
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20))?;
    let sel = torpor_engine::restore::select(&images)?;
    let meta = sel.reader.meta().clone();
    let mut base = serde_json::to_value(&meta)?;
    base["chunks"] = serde_json::json!([]);
    let write = |v: &serde_json::Value, name: &str| -> Result<PathBuf> {
        let mut m: torpor_image::ProcessMeta = serde_json::from_value(v.clone())?;
        let p = t.ws.root.join(name);
        let w = ImageWriter::new(std::fs::File::create(&p)?, &p)?;
        w.finish(&mut m)?;
        Ok(p)
    };
    // The unmodified metadata passes: the cases below fail for their claim alone.
    let ok = write(&base, "base.img")?;
    ImageReader::open(&ok).context("the unmodified metadata should pass")?;
    let nreg = base["regions"].as_array().map(Vec::len).unwrap_or(0);
    let last = nreg.saturating_sub(1);
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "memory beyond user space",
            Box::new(move |v| v["regions"][last]["end"] = (0x8000_0000_0000u64).into()),
        ),
        (
            "unaligned region",
            Box::new(|v| {
                let s = v["regions"][0]["start"].as_u64().unwrap_or(0);
                v["regions"][0]["start"] = (s + 1).into();
            }),
        ),
        (
            "overlapping regions",
            Box::new(|v| {
                let s = v["regions"][0]["start"].clone();
                v["regions"][1]["start"] = s;
            }),
        ),
        (
            "more pages saved than the region has",
            Box::new(|v| v["regions"][0]["pages_saved"] = (1u64 << 40).into()),
        ),
        (
            "fd number out of range",
            Box::new(|v| {
                if let Some(a) = v["fds"].as_array_mut() {
                    if let Some(mut f) = a.first().cloned() {
                        f["fd"] = (1i64 << 24).into();
                        a.push(f);
                    }
                }
            }),
        ),
        ("negative fd", Box::new(|v| v["fds"][0]["fd"] = (-3).into())),
        (
            "no thread",
            Box::new(|v| v["threads"] = serde_json::json!([])),
        ),
        (
            "no main thread",
            Box::new(|v| {
                if let Some(a) = v["threads"].as_array_mut() {
                    for t in a {
                        t["is_main"] = false.into();
                    }
                }
            }),
        ),
        (
            "thread context outside saved memory",
            Box::new(|v| v["threads"][0]["ctx_addr"] = (0x10u64).into()),
        ),
        (
            "brk outside user space",
            Box::new(|v| v["mm"]["brk"] = (u64::MAX).into()),
        ),
    ];
    let n = cases.len();
    for (what, edit) in cases {
        let mut v = base.clone();
        edit(&mut v);
        let p = write(&v, "absurd.img")?;
        match torpor_engine::restore::select(&p) {
            Ok(_) => bail!("an image with {what} was accepted"),
            Err(e) => println!("[security] {what}: refused: {e}"),
        }
    }
    // The same through the real restorer: refused, nothing runs.
    let mut v = base.clone();
    v["regions"][last]["end"] = (0x8000_0000_0000u64).into();
    let p = write(&v, "absurd.img")?;
    let f = process::run(
        t.torpor(vec!["restore".into(), p.into()]),
        "torpor restore",
        Duration::from_secs(30),
    )?;
    if f.status.success() || !f.stderr.contains("invalid image") {
        bail!("torpor restore accepted an absurd image\n{}", f.describe());
    }
    println!("[security] {n} kinds of absurd claims refused before mapping");
    Ok(())
}

#[test]
fn other_users_cannot_read_or_restore_images() {
    if let Err(e) = owner_and_modes() {
        panic!("{e:#}");
    }
}

#[test]
fn planted_symlinks_and_directories_are_not_used() {
    if let Err(e) = planted() {
        panic!("{e:#}");
    }
}

#[test]
fn absurd_images_are_refused_before_mapping() {
    if let Err(e) = absurd_claims() {
        panic!("{e:#}");
    }
}
