//! Incremental generations (ADR 0009) with a real program (`incr_mem`): it dirties a
//! small part of 128 MiB of data (half random, half compressible) between checkpoints
//! and, between two
//! checkpoints each, grows a mapping in place and moves one (mremap), maps a new one,
//! drops pages that held data (MADV_DONTNEED), unmaps one, read()s a file into memory
//! (kernel writes) and writes and drops pages of a private file mapping.
//!
//! - A chain of eight generations (one full, seven incremental): restoring the newest
//!   and a middle one gives the output of an uninterrupted run, and each incremental
//!   image is under 10% of the full one while the program changed under 1% of its
//!   memory per interval (2% in the one where it also writes every 24th page: more
//!   separate ranges than one internal pass of PAGEMAP_SCAN returns) (a property of the
//!   images, not a timing).
//! - A damaged parent: every generation that builds on it is skipped (and reported),
//!   the restore uses the newest older complete chain, and the program ends right.
//! - Pruning with keep=2 keeps the chain's base until a newer full generation.
//! - Isolated written pages of compressible memory (`incr_sparse`: 1% of 256 MiB, every
//!   100th page): the incremental image stays a small fraction of the full one (the
//!   pages are gathered and compressed together, image format 3.1), and its chain
//!   restores to the uninterrupted run's output.
//!
//! As root and as the unprivileged user.

use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use torpor_engine_suite::chaos::{self, Target};
use torpor_engine_suite::process::{self, Proc};
use torpor_engine_suite::user::RunAs;
use torpor_image::store::Store;
use torpor_image::ImageReader;

const STEPS: u32 = 500;
const MIB: u32 = 128;
/// The lines after which the harness takes a checkpoint (besides one right after READY).
const OPS: [&str; 7] = [
    "grown in place",
    "moved",
    "new mapping",
    "dropped",
    "unmapped",
    "read into memory",
    "file pages",
];

/// The program's own lines (without READY), as an uninterrupted run prints them.
fn reference_lines(t: &Target) -> Result<Vec<String>> {
    let mut c = t.runner.command(t.ws.bin.join("fdclean"), &t.argv);
    // The program creates its files in its working directory.
    c.current_dir(&t.ws.reference);
    let f = process::run(c, "reference run", Duration::from_secs(120))?;
    chaos::result_of(&f).with_context(|| format!("reference run\n{}", f.describe()))?;
    Ok(f.stdout
        .into_iter()
        .filter(|l| !l.starts_with("READY"))
        .collect())
}

fn image_of(gen_dir: &Path) -> Result<std::path::PathBuf> {
    let m = torpor_image::store::Manifest::parse(
        &std::fs::read(gen_dir.join("manifest.json"))?,
        &gen_dir.join("manifest.json"),
    )?;
    let p = m.processes.first().context("no process")?;
    Ok(gen_dir.join(&p.image))
}

/// Restores `what` (program or generation directory) and checks that the restored run's
/// lines are the uninterrupted run's, from some point to its end.
fn restore_matches(t: &Target, what: &Path, reference: &[String]) -> Result<String> {
    let f = t.restore(what)?.finish(Duration::from_secs(120))?;
    chaos::result_of(&f)
        .with_context(|| format!("restore of {}\n{}", what.display(), f.describe()))?;
    let got: Vec<&String> = f
        .stdout
        .iter()
        .filter(|l| !l.starts_with("READY"))
        .collect();
    let n = got.len();
    if n == 0 || n > reference.len() {
        bail!("restore of {}: {n} lines\n{}", what.display(), f.describe());
    }
    let tail: Vec<&String> = reference[reference.len() - n..].iter().collect();
    if got != tail {
        bail!(
            "restore of {}: output differs from the uninterrupted run's last {n} lines\n{}",
            what.display(),
            f.describe()
        );
    }
    Ok(f.stderr)
}

fn chain(runner: RunAs, label: &str) -> Result<()> {
    let t = Target::program(label, runner, "incr_mem", STEPS, &[MIB])?;
    let reference = reference_lines(&t)?;
    let images = &t.ws.images;
    let args: Vec<OsString> = vec![
        "run".into(),
        "--keep".into(),
        "10".into(),
        "--dir".into(),
        images.into(),
        "--".into(),
    ];
    let mut all = args;
    all.extend(t.argv.iter().cloned());
    let mut run = Proc::spawn(t.torpor(all), "torpor run")?;
    let (mut at, _) = run.wait_line(0, Duration::from_secs(30), |l| l.starts_with("READY"))?;
    let checkpoint = |run: &Proc| -> Result<()> {
        let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
        if !f.status.success() {
            bail!("checkpoint failed\n{}", f.describe());
        }
        Ok(())
    };
    checkpoint(&run)?;
    for op in OPS {
        at = run
            .wait_line(at + 1, Duration::from_secs(60), |l| l == op)?
            .0;
        checkpoint(&run)?;
    }
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20));
    let store = Store::new(images);
    let gens = store.generations()?;
    if gens != (1..=8).collect::<Vec<u64>>() {
        bail!("expected generations 1..=8, found {gens:?}");
    }
    // One full image, then incremental ones, each on the previous generation.
    let mut sizes = Vec::new();
    for &g in &gens {
        let img = image_of(&store.gen_dir(g))?;
        let r = ImageReader::open(&img)?;
        let parent = r.meta().parent.as_ref().map(|p| p.generation);
        let want = if g == 1 { None } else { Some(g - 1) };
        if parent != want {
            bail!("generation {g}: parent {parent:?}, expected {want:?}");
        }
        if store.parent_of(g) != want {
            bail!("generation {g}: manifest parent {:?}", store.parent_of(g));
        }
        sizes.push(std::fs::metadata(&img)?.len());
    }
    let full = sizes[0];
    if full < (MIB as u64) << 19 {
        bail!(
            "the full image is {full} bytes, smaller than the {} MiB of random data",
            MIB / 2
        );
    }
    // The compressible half is stored as LZ4 chunks that the newer images override in
    // parts: the restores below decode them partly (stage 2's partial path).
    let lz4 = ImageReader::open(&image_of(&store.gen_dir(1))?)?
        .meta()
        .chunks
        .iter()
        .filter(|c| c.codec == torpor_image::Codec::Lz4)
        .count();
    if lz4 == 0 {
        bail!("the full image holds no compressed chunk");
    }
    for (g, &s) in gens.iter().zip(&sizes).skip(1) {
        if s * 10 >= full {
            // Which regions were saved in full, for the report.
            let r = ImageReader::open(&image_of(&store.gen_dir(*g))?)?;
            let big: Vec<String> = r
                .meta()
                .regions
                .iter()
                .filter(|x| x.pages_saved > 256)
                .map(|x| {
                    format!(
                        "{:#x}-{:#x} {:?} inherit={} written={} saved={}",
                        x.start,
                        x.end,
                        x.kind,
                        x.inherit,
                        x.written.len(),
                        x.pages_saved
                    )
                })
                .collect();
            bail!(
                "incremental generation {g} is {s} bytes, not under 10% of the full {full}: {big:?}"
            );
        }
    }
    println!(
        "[incremental] {}: full image {full} bytes; incremental images {:?} ({:.2}%..{:.2}% of full)",
        t.runner.describe(),
        &sizes[1..],
        sizes[1..].iter().min().copied().unwrap_or(0) as f64 * 100.0 / full as f64,
        sizes[1..].iter().max().copied().unwrap_or(0) as f64 * 100.0 / full as f64,
    );
    // The newest (a chain of 8) and a middle generation (a chain of 4).
    let err = restore_matches(&t, images, &reference)?;
    if chaos::used_generation(&err).as_deref() != Some(store.gen_dir(8).as_path()) {
        bail!("restore did not use generation 8\n{err}");
    }
    restore_matches(&t, &store.gen_dir(4), &reference)?;

    // A damaged parent (generation 3): 8..3 are skipped, 2 (a chain of 2) is used.
    let img3 = image_of(&store.gen_dir(3))?;
    let r3 = ImageReader::open(&img3)?;
    let c = r3
        .meta()
        .chunks
        .iter()
        .max_by_key(|c| c.stored_len)
        .cloned()
        .context("generation 3 has no chunk")?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img3)?;
    let mut b = [0u8; 1];
    let at = c.offset + c.stored_len / 2;
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0x40;
    f.write_all_at(&b, at)?;
    drop(f);
    let err = restore_matches(&t, images, &reference)?;
    if chaos::used_generation(&err).as_deref() != Some(store.gen_dir(2).as_path()) {
        bail!("restore with a damaged parent did not use generation 2\n{err}");
    }
    for g in 3..=8 {
        if !err.contains(&format!("skipped generation {g}:")) {
            bail!("the restore does not report generation {g} as skipped\n{err}");
        }
    }
    if !err
        .lines()
        .any(|l| l.contains("skipped generation 3:") && l.contains("offset"))
    {
        bail!("the report for the damaged generation names no offset\n{err}");
    }
    println!(
        "[incremental] {}: chains of 8 and 4 restored as uninterrupted; a damaged parent \
         (generation 3) made the restore skip generations 8..3 and use 2",
        t.runner.describe()
    );
    Ok(())
}

fn prune(runner: RunAs, label: &str) -> Result<()> {
    let t = Target::program(label, runner, "incr_mem", 100_000, &[8])?;
    let images = &t.ws.images;
    let mut all: Vec<OsString> = vec![
        "run".into(),
        "--keep".into(),
        "2".into(),
        "--dir".into(),
        images.into(),
        "--".into(),
    ];
    all.extend(t.argv.iter().cloned());
    let mut cmd = t.torpor(all);
    cmd.env("TORPOR_FULL_EVERY", "3");
    let mut run = Proc::spawn(cmd, "torpor run")?;
    run.wait_line(0, Duration::from_secs(30), |l| l.starts_with("READY"))?;
    let store = Store::new(images);
    // Generations 1 (full), 2, 3 (incremental), 4 (full), 5 (incremental on 4).
    let expect: [&[u64]; 5] = [&[1], &[1, 2], &[1, 2, 3], &[1, 2, 3, 4], &[4, 5]];
    for (i, want) in expect.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(200));
        let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
        if !f.status.success() {
            bail!("checkpoint {} failed\n{}", i + 1, f.describe());
        }
        let gens = store.generations()?;
        if gens != *want {
            bail!(
                "after checkpoint {} with keep=2, full_every=3: generations {gens:?}, expected {want:?}",
                i + 1
            );
        }
    }
    if matches!(t.runner, RunAs::Me) {
        chaos::check_all_complete_valid(images)?;
    }
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20));

    // The first checkpoint after a restore is full (6, and 4 stays for 5); the next one
    // builds on it again (7 on 6).
    let mut restored = t.restore(images)?;
    restored.wait_line(0, Duration::from_secs(30), |l| l.starts_with("step "))?;
    let (pid, _) = process::find_restored_program(restored.pid(), &t.argv_text(), images, false)?;
    let expect: [(&[u64], Option<u64>); 2] = [(&[4, 5, 6], None), (&[6, 7], Some(6))];
    for (i, (want, parent)) in expect.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(200));
        let f = t.checkpoint(pid)?.finish(Duration::from_secs(30))?;
        if !f.status.success() {
            bail!(
                "checkpoint {} after the restore failed\n{}",
                i + 1,
                f.describe()
            );
        }
        let gens = store.generations()?;
        let newest = *gens.last().context("no generation")?;
        if gens != *want || store.parent_of(newest) != *parent {
            bail!(
                "checkpoint {} after the restore: generations {gens:?} (newest on {:?}), expected {want:?} (on {parent:?})",
                i + 1,
                store.parent_of(newest)
            );
        }
    }
    process::kill_pid(pid)?;
    let _ = restored.finish(Duration::from_secs(20));
    println!(
        "[incremental] {}: keep=2 kept the chain's base (1, 2, 3 with 3 on 2 on 1) and \
         pruned it after the next full generation (4, 5); after a restore the first \
         checkpoint was full (6) and the next built on it (7)",
        t.runner.describe()
    );
    Ok(())
}

/// Largest incremental image of `incr_sparse`, in percent of its full image. Each written
/// page stored on its own (format 3.0) made it about 150%; gathered, about 5% (the pages
/// compress like the full image's, plus a fixed part: stacks, the agent's data).
const SPARSE_MAX_PERCENT: u64 = 10;

fn sparse(runner: RunAs, label: &str) -> Result<()> {
    let t = Target::program(label, runner, "incr_sparse", 200, &[256])?;
    let reference = reference_lines(&t)?;
    let images = &t.ws.images;
    let mut all: Vec<OsString> = vec![
        "run".into(),
        "--keep".into(),
        "4".into(),
        "--dir".into(),
        images.into(),
        "--".into(),
    ];
    all.extend(t.argv.iter().cloned());
    let mut run = Proc::spawn(t.torpor(all), "torpor run")?;
    let (at, _) = run.wait_line(0, Duration::from_secs(60), |l| l.starts_with("READY"))?;
    let checkpoint = |run: &Proc| -> Result<()> {
        let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
        if !f.status.success() {
            bail!("checkpoint failed\n{}", f.describe());
        }
        Ok(())
    };
    checkpoint(&run)?;
    run.wait_line(at + 1, Duration::from_secs(60), |l| {
        l.starts_with("dirtied")
    })?;
    checkpoint(&run)?;
    process::kill_pid(run.pid())?;
    let _ = run.finish(Duration::from_secs(20));
    let store = Store::new(images);
    if store.generations()? != [1, 2] || store.parent_of(2) != Some(1) {
        bail!(
            "expected a full generation 1 and generation 2 on it, found {:?} (2 on {:?})",
            store.generations()?,
            store.parent_of(2)
        );
    }
    let full = std::fs::metadata(image_of(&store.gen_dir(1))?)?.len();
    let incr_img = image_of(&store.gen_dir(2))?;
    let incr = std::fs::metadata(&incr_img)?.len();
    if incr * 100 > full * SPARSE_MAX_PERCENT {
        let m = ImageReader::open(&incr_img)?.into_parts().1;
        bail!(
            "the incremental image is {incr} bytes, {:.1}% of the full {full} (limit {SPARSE_MAX_PERCENT}%): {} chunks, {} pages saved",
            incr as f64 * 100.0 / full as f64,
            m.chunks.len(),
            m.pages_saved()
        );
    }
    let err = restore_matches(&t, images, &reference)?;
    if chaos::used_generation(&err).as_deref() != Some(store.gen_dir(2).as_path()) {
        bail!("restore did not use generation 2\n{err}");
    }
    println!(
        "[incremental] {}: 1% isolated pages of 256 MiB compressible: full image {full} bytes, incremental {incr} bytes ({:.2}%); the chain restored to the uninterrupted run's output",
        t.runner.describe(),
        incr as f64 * 100.0 / full as f64
    );
    Ok(())
}

#[test]
fn incremental_sparse_compressible_root() {
    if let Err(e) = sparse(RunAs::Me, "incr-sparse") {
        panic!("{e:#}");
    }
}

#[test]
fn incremental_sparse_compressible_nonroot() {
    let r = RunAs::unprivileged().and_then(|u| sparse(u, "incr-sparse-nonroot"));
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

#[test]
fn incremental_chain_root() {
    if let Err(e) = chain(RunAs::Me, "incr-chain") {
        panic!("{e:#}");
    }
}

#[test]
fn incremental_chain_nonroot() {
    let r = RunAs::unprivileged().and_then(|u| chain(u, "incr-chain-nonroot"));
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

#[test]
fn incremental_prune_keeps_chain_root() {
    if let Err(e) = prune(RunAs::Me, "incr-prune") {
        panic!("{e:#}");
    }
}

#[test]
fn incremental_prune_keeps_chain_nonroot() {
    let r = RunAs::unprivileged().and_then(|u| prune(u, "incr-prune-nonroot"));
    if let Err(e) = r {
        panic!("{e:#}");
    }
}
