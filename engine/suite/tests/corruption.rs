//! Corruption: random bit flips and truncations across the generations of a real program
//! (`fault_target`, checkpointed four times through the CLI). Most iterations run
//! in-process against the restorer's own selection API (`torpor_engine::restore::select`):
//! the damaged generation must be refused with a message naming the file (and the offset
//! for image files), and selecting the program's directory must fall back to the newest
//! undamaged generation (the newest whose incremental chain does not include the damaged
//! one: generations alternate full and incremental here). A handful go through the real `torpor restore`: it must say what
//! it skipped (file, offset) and which generation it used, and the program must finish
//! with the result of an uninterrupted run. `TORPOR_CORRUPT_SEED=N` replays a run.

use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torpor_engine::restore::select;
use torpor_engine_suite::chaos::{self, Rng, Target};
use torpor_engine_suite::process::{self, Proc};
use torpor_engine_suite::user::RunAs;
use torpor_image::store::{Store, MANIFEST};

const ITERATIONS: u32 = 1200;
const GENERATIONS: usize = 4;

/// One damage done to a file, and how to undo it.
enum Damage {
    Flip { at: u64, mask: u8 },
    Cut { len: u64, tail: Vec<u8> },
}

impl Damage {
    fn describe(&self) -> String {
        match self {
            Damage::Flip { at, mask } => format!("bit flip (mask {mask:#04x}) at offset {at}"),
            Damage::Cut { len, tail } => {
                format!("truncated to {len} bytes ({} cut)", tail.len())
            }
        }
    }
}

fn flip_byte(path: &Path, at: u64, mask: u8) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= mask;
    f.write_all_at(&b, at)?;
    Ok(())
}

fn damage(path: &Path, rng: &mut Rng) -> Result<Damage> {
    let len = std::fs::metadata(path)?.len();
    if rng.chance(75) {
        // Offsets: anywhere, or near either end where headers, metadata and trailers sit.
        let at = match rng.below(100) {
            0..50 => rng.below(len),
            50..65 => rng.below(len.min(8192)),
            _ => len - 1 - rng.below(len.min(8192)),
        };
        let mask = 1u8 << rng.below(8);
        flip_byte(path, at, mask)?;
        Ok(Damage::Flip { at, mask })
    } else {
        let cut = rng.below(len);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let mut tail = vec![0u8; (len - cut) as usize];
        f.read_exact_at(&mut tail, cut)?;
        f.set_len(cut)?;
        Ok(Damage::Cut { len: cut, tail })
    }
}

fn undo(path: &Path, d: &Damage) -> Result<()> {
    match d {
        Damage::Flip { at, mask } => flip_byte(path, *at, *mask),
        Damage::Cut { len, tail } => {
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.write_all_at(tail, *len)?;
            Ok(())
        }
    }
}

/// The files of a generation that restore reads: manifest and image(s).
fn gen_files(gen_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(gen_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `fault_target` under torpor, checkpoints it GENERATIONS times, kills it.
fn make_generations(t: &Target) -> Result<Vec<u64>> {
    let images = &t.ws.images;
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "--keep".into(),
        GENERATIONS.to_string().into(),
        "--dir".into(),
        images.into(),
        "--".into(),
    ];
    args.extend(t.argv.iter().cloned());
    let mut cmd = t.torpor(args);
    // Full and incremental generations alternate: 1 full, 2 on 1, 3 full, 4 on 3.
    cmd.env("TORPOR_FULL_EVERY", "2");
    let mut run = Proc::spawn(cmd, "torpor run")?;
    run.wait_line(0, Duration::from_secs(30), |l| l.starts_with("READY"))?;
    for _ in 0..GENERATIONS {
        thread::sleep(Duration::from_millis(150));
        let f = t.checkpoint(run.pid())?.finish(Duration::from_secs(30))?;
        if !f.status.success() {
            bail!("checkpoint failed\n{}", f.describe());
        }
    }
    process::kill_pid(run.pid())?;
    run.finish(Duration::from_secs(20))?;
    let gens = chaos::generations(images);
    if gens.len() != GENERATIONS {
        bail!("expected {GENERATIONS} generations, found {gens:?}");
    }
    chaos::check_all_complete_valid(images)?;
    Ok(gens)
}

/// The generations each generation's images build on (itself, its parent, ... back to a
/// full one: incremental generations, ADR 0009).
fn chains(store: &Store, gens: &[u64]) -> Vec<(u64, Vec<u64>)> {
    gens.iter()
        .map(|&g| {
            let mut c = vec![g];
            while let Some(p) = c.last().and_then(|&l| store.parent_of(l)) {
                c.push(p);
            }
            (g, c)
        })
        .collect()
}

fn in_process(images: &Path, gens: &[u64], rng: &mut Rng) -> Result<(u32, u32, u32)> {
    let store = Store::new(images);
    let newest = *gens.last().context("no generations")?;
    let chains = chains(&store, gens);
    let (mut flips, mut cuts, mut fallbacks) = (0, 0, 0);
    for i in 0..ITERATIONS {
        let g = if rng.chance(60) {
            newest
        } else {
            gens[rng.below(gens.len() as u64) as usize]
        };
        let gen_dir = store.gen_dir(g);
        let files = gen_files(&gen_dir);
        let images_only: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| n != MANIFEST))
            .collect();
        let file = if rng.chance(85) && !images_only.is_empty() {
            images_only[rng.below(images_only.len() as u64) as usize].clone()
        } else {
            gen_dir.join(MANIFEST)
        };
        let d = damage(&file, rng)?;
        let what = format!(
            "iteration {i}: generation {g}, {} {}",
            file.display(),
            d.describe()
        );
        match &d {
            Damage::Flip { .. } => flips += 1,
            Damage::Cut { .. } => cuts += 1,
        }
        let verdict = select(&gen_dir);
        let outcome = (|| -> Result<()> {
            let err = match verdict {
                Ok(_) => bail!("{what}: NOT detected, the generation was accepted"),
                Err(e) => e.to_string(),
            };
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| err.contains(&n)) {
                bail!("{what}: detected, but the message does not name the file: {err}");
            }
            if file.file_name().is_some_and(|n| n != MANIFEST) && !err.contains("offset") {
                bail!("{what}: detected, but the message gives no offset: {err}");
            }
            let sel = select(images).map_err(|e| anyhow::anyhow!("{what}: no fallback: {e}"))?;
            // The newest generation whose chain does not include the damaged one.
            let want = chains
                .iter()
                .rev()
                .find(|(_, c)| !c.contains(&g))
                .map(|(h, _)| *h);
            let Some(want) = want else {
                if select(images).is_ok() {
                    bail!(
                        "{what}: every generation depends on the damaged one, yet one was selected"
                    );
                }
                return Ok(());
            };
            if sel.generation != Some(want) {
                bail!(
                    "{what}: selection took {:?}, the newest intact generation is {want}",
                    sel.generation
                );
            }
            if g == newest {
                if !sel
                    .skipped
                    .iter()
                    .any(|s| s.contains(&format!("generation {g}")))
                {
                    bail!(
                        "{what}: the fallback does not say what it skipped: {:?}",
                        sel.skipped
                    );
                }
                fallbacks += 1;
            }
            Ok(())
        })();
        undo(&file, &d)?;
        outcome?;
        if i % 100 == 99 {
            select(&gen_dir).with_context(|| format!("{what}: undo did not restore the file"))?;
        }
    }
    Ok((flips, cuts, fallbacks))
}

/// Damages the newest generation, restores with the real binary, checks its report and
/// that the program ends with `reference`.
fn through_restorer(
    t: &Target,
    gens: &[u64],
    reference: &str,
    case: &str,
    rng: &mut Rng,
) -> Result<()> {
    let images = &t.ws.images;
    let store = Store::new(images);
    let newest = *gens.last().context("no generations")?;
    let gen_dir = store.gen_dir(newest);
    let image = gen_files(&gen_dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n != MANIFEST))
        .context("no image file")?;
    let len = std::fs::metadata(&image)?.len();
    let (file, d) = match case {
        "flip in the middle" => {
            let at = len / 2 + rng.below(len / 4);
            flip_byte(&image, at, 0x20)?;
            (image.clone(), Damage::Flip { at, mask: 0x20 })
        }
        "flip at the end" => {
            let at = len - 1 - rng.below(64);
            flip_byte(&image, at, 0x01)?;
            (image.clone(), Damage::Flip { at, mask: 0x01 })
        }
        "truncation" => {
            let cut = len / 3;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&image)?;
            let mut tail = vec![0u8; (len - cut) as usize];
            f.read_exact_at(&mut tail, cut)?;
            f.set_len(cut)?;
            (image.clone(), Damage::Cut { len: cut, tail })
        }
        _ => {
            let m = gen_dir.join(MANIFEST);
            let at = rng.below(std::fs::metadata(&m)?.len());
            flip_byte(&m, at, 0x02)?;
            (m, Damage::Flip { at, mask: 0x02 })
        }
    };
    let t0 = Instant::now();
    let f = t.restore(images)?.finish(Duration::from_secs(60))?;
    undo(&file, &d)?;
    let skipped = f
        .stderr
        .lines()
        .find(|l| l.contains(&format!("skipped generation {newest}")))
        .with_context(|| {
            format!(
                "{case}: torpor restore did not report the damaged generation\n{}",
                f.describe()
            )
        })?
        .to_string();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !skipped.contains(&name) || (name != MANIFEST && !skipped.contains("offset")) {
        bail!("{case}: the report lacks the file or the offset: {skipped}");
    }
    let used = chaos::used_generation(&f.stderr);
    if used.as_deref() != Some(store.gen_dir(gens[gens.len() - 2]).as_path()) {
        bail!(
            "{case}: torpor restore used {used:?}, not the previous generation\n{}",
            f.describe()
        );
    }
    let result = chaos::result_of(&f).with_context(|| format!("{case}\n{}", f.describe()))?;
    if result != reference {
        bail!("{case}: RESULT {result}, the uninterrupted run gives {reference}");
    }
    println!(
        "[corruption] real restore, {case} ({}): {skipped:?}; used the previous generation; \
         program finished with the right RESULT in {:.1}s",
        d.describe(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run() -> Result<()> {
    let mut rng = Rng::from_env("TORPOR_CORRUPT_SEED");
    let t = Target::new("corruption", RunAs::Me, 500, 2)?;
    let (reference, gens) = thread::scope(|s| {
        let reference = s.spawn(|| t.reference());
        let gens = make_generations(&t);
        (reference.join(), gens)
    });
    let gens = gens?;
    let reference = match reference {
        Ok(r) => r?,
        Err(_) => bail!("reference thread panicked"),
    };
    let t0 = Instant::now();
    let (flips, cuts, fallbacks) = in_process(&t.ws.images, &gens, &mut rng)?;
    println!(
        "[corruption] {} damaged images ({flips} bit flips, {cuts} truncations) across {} \
         generations: all detected, each named with its file; {fallbacks} times the newest \
         was damaged and selection fell back to the previous one ({:.1}s)",
        flips + cuts,
        gens.len(),
        t0.elapsed().as_secs_f64()
    );
    for case in [
        "flip in the middle",
        "flip at the end",
        "truncation",
        "manifest flip",
    ] {
        through_restorer(&t, &gens, &reference, case, &mut rng)?;
    }
    Ok(())
}

#[test]
fn bit_flips_and_truncations_are_detected_and_fall_back() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}
