//! Storage trouble during a checkpoint, with real programs and the real CLI:
//! - disk full: the image directory is on a 24 MiB tmpfs; the first generation of `grow`
//!   fits, then the program grows by 64 MiB and its next checkpoint cannot fit. That
//!   checkpoint must fail cleanly (the program keeps running, generation 1 stays the
//!   newest and valid, no temporary is left, the failure is in status.json and on the
//!   program's stderr), and a restore of generation 1 must finish with the right result.
//! - the image directory removed mid-run: the next checkpoint recreates it (0700); when
//!   a file stands in its way, the checkpoint fails with a message and the program runs on.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use torpor_engine_suite::chaos::{self, Target};
use torpor_engine_suite::process::{self, Finished, Proc};
use torpor_engine_suite::user::{euid, RunAs};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn checkpoint(t: &Target, pid: u32) -> Result<Finished> {
    t.checkpoint(pid)?.finish(Duration::from_secs(60))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills the program, restores the newest generation and returns its RESULT.
fn restore_to_end(t: &Target, run: Proc, images: &Path) -> Result<(String, Finished)> {
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20))?;
    let f = t.restore(images)?.finish(Duration::from_secs(60))?;
    let r = chaos::result_of(&f).with_context(|| format!("restored run\n{}", f.describe()))?;
    Ok((r, f))
}

fn disk_full() -> Result<()> {
    if euid()? != 0 {
        println!("SKIP disk full: mounting a tmpfs needs root");
        return Ok(());
    }
    let t = Target::program("disk-full", RunAs::Me, "grow", 1000, &[100, 64])?;
    let mnt = t.ws.root.join("small");
    std::fs::create_dir_all(&mnt)?;
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs"])
        .arg(&mnt)
        .status()?;
    if !st.success() {
        println!("SKIP disk full: cannot mount a tmpfs here");
        return Ok(());
    }
    let _guard = Mount(mnt.clone());
    let images = mnt.join("images");
    thread::scope(|s| -> Result<()> {
        let reference = s.spawn(|| t.reference());
        let mut run = t.start(&images)?;
        let f = checkpoint(&t, run.pid())?;
        if !f.status.success() {
            bail!("the first generation should fit\n{}", f.describe());
        }
        run.wait_line(0, Duration::from_secs(30), |l| l == "grown")?;
        let f = checkpoint(&t, run.pid())?;
        println!("[disk full] second checkpoint: {}", f.stderr.trim());
        if f.status.success() || !f.stderr.contains("No space left on device") {
            bail!(
                "the checkpoint of the grown program should fail with ENOSPC\n{}",
                f.describe()
            );
        }
        if !alive(run.pid()) {
            bail!("the program died with its checkpoint");
        }
        if chaos::generations(&images) != [1] {
            bail!(
                "generations now {:?}, expected [1]",
                chaos::generations(&images)
            );
        }
        let left = chaos::temporaries(&images);
        if !left.is_empty() {
            bail!("the failed checkpoint left {left:?}");
        }
        chaos::check_all_complete_valid(&images)?;
        let status = std::fs::read_to_string(images.join("status.json"))?;
        if !status.contains("\"ok\":false") || !status.contains("No space left") {
            bail!("status.json does not report the failure: {status}");
        }
        let err = run.stderr();
        if !err.contains("checkpoint failed, the program continues") || !err.contains("No space") {
            bail!("the program's stderr does not report the failure: {err}");
        }
        // The program keeps running and printing.
        let n = run.lines().len();
        run.wait_line(n, Duration::from_secs(5), |l| l.starts_with("step"))?;
        let (result, f) = restore_to_end(&t, run, &images)?;
        let used = chaos::used_generation(&f.stderr);
        if !used.is_some_and(|u| u.ends_with("gen-000001")) {
            bail!("restore did not use generation 1\n{}", f.describe());
        }
        let reference = match reference.join() {
            Ok(r) => r?,
            Err(_) => bail!("reference thread panicked"),
        };
        if result != reference {
            bail!("restored RESULT {result}, uninterrupted {reference}");
        }
        println!(
            "[disk full] generation 1 stayed newest and valid, no temporary left, status.json \
             and stderr report it; restored from it, RESULT {result} as uninterrupted"
        );
        Ok(())
    })
}

fn dir_removed() -> Result<()> {
    let t = Target::program("dir-removed", RunAs::Me, "grow", 600, &[1_000_000, 1])?;
    let images = t.ws.images.clone();
    thread::scope(|s| -> Result<()> {
        let reference = s.spawn(|| t.reference());
        let run = t.start(&images)?;
        let pid = run.pid();
        let f = checkpoint(&t, pid)?;
        if !f.status.success() {
            bail!("first checkpoint failed\n{}", f.describe());
        }
        std::fs::remove_dir_all(&images)?;
        let f = checkpoint(&t, pid)?;
        if !f.status.success() || !alive(pid) {
            bail!(
                "after the directory was removed, the next checkpoint should recreate it\n{}",
                f.describe()
            );
        }
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&images)?.permissions());
        if mode & 0o777 != 0o700 {
            bail!("recreated image directory has mode {mode:o}");
        }
        std::fs::remove_dir_all(&images)?;
        std::fs::write(&images, b"in the way")?;
        // torpor checkpoint polls status.json, which cannot be written now: it times out
        // or reports the failure; the program's stderr must say what happened.
        let cp = t.checkpoint(pid)?;
        let said = chaos::poll(Duration::from_secs(10), || {
            run.stderr()
                .contains("checkpoint failed, the program continues")
        });
        process::kill_pid(cp.pid())?;
        let _ = cp.finish(Duration::from_secs(10));
        if !said || !alive(pid) {
            bail!("with a file in place of the directory, the checkpoint should fail and the program run on\n{}", run.stderr());
        }
        let err = run.stderr();
        for l in err
            .lines()
            .filter(|l| l.contains("checkpoint failed") || l.contains("cannot write"))
        {
            println!("[dir removed] program stderr: {l}");
        }
        std::fs::remove_file(&images)?;
        let f = checkpoint(&t, pid)?;
        if !f.status.success() {
            bail!(
                "checkpoint after the obstacle went away failed\n{}",
                f.describe()
            );
        }
        let (result, _) = restore_to_end(&t, run, &images)?;
        let reference = match reference.join() {
            Ok(r) => r?,
            Err(_) => bail!("reference thread panicked"),
        };
        if result != reference {
            bail!("restored RESULT {result}, uninterrupted {reference}");
        }
        Ok(())
    })
}

#[test]
fn disk_full_fails_the_checkpoint_cleanly() {
    if let Err(e) = disk_full() {
        panic!("{e:#}");
    }
}

#[test]
fn image_dir_removed_mid_run() {
    if let Err(e) = dir_removed() {
        panic!("{e:#}");
    }
}
