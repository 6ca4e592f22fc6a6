//! `torpor inspect`: shows an image's metadata (human summary, or everything as JSON).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use torpor_image::store::{Store, MANIFEST};
use torpor_image::{Codec, ImageReader, ProcessMeta};

/// How the chunks are stored: counts and bytes per codec.
fn encoding(m: &ProcessMeta) -> serde_json::Value {
    let per = |c: Codec| {
        let it = m.chunks.iter().filter(move |x| x.codec == c);
        serde_json::json!({
            "chunks": it.clone().count(),
            "page_bytes": it.clone().map(|x| x.len).sum::<u64>(),
            "stored_bytes": it.map(|x| x.stored_len).sum::<u64>(),
        })
    };
    let gathered = m.chunks.iter().filter(|x| !x.runs.is_empty());
    serde_json::json!({
        "raw": per(Codec::Raw),
        "lz4": per(Codec::Lz4),
        // Chunks that gather small page runs of several places (format 3.1).
        "gathered": {
            "chunks": gathered.clone().count(),
            "runs": gathered.clone().map(|x| x.runs.len()).sum::<usize>(),
            "page_bytes": gathered.clone().map(|x| x.len).sum::<u64>(),
            "stored_bytes": gathered.map(|x| x.stored_len).sum::<u64>(),
        },
        "page_bytes": m.chunks.iter().map(|x| x.len).sum::<u64>(),
        "stored_bytes": m.chunks.iter().map(|x| x.stored_len).sum::<u64>(),
        "pages_zero": m.pages_zero(),
    })
}

/// Resolves a program directory, generation directory or image file to an image file.
pub fn resolve(path: &Path) -> Result<(PathBuf, Option<serde_json::Value>)> {
    if path.is_file() {
        return Ok((path.into(), None));
    }
    let gen_dir = if path.join(MANIFEST).is_file() {
        path.to_path_buf()
    } else {
        let s = Store::new(path);
        // The newest complete generation, as `torpor restore` picks it.
        let g = s
            .generations()
            .ok()
            .and_then(|g| g.last().copied())
            .with_context(|| format!("{}: no generation there", path.display()))?;
        s.gen_dir(g)
    };
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gen_dir.join(MANIFEST)).with_context(|| format!("{}", gen_dir.display()))?,
    )?;
    let img = m["processes"][0]["image"]
        .as_str()
        .context("manifest lists no process image")?;
    Ok((gen_dir.join(img), Some(m)))
}

pub fn inspect(path: &Path, json: bool) -> Result<i32> {
    let (img, manifest) = resolve(path)?;
    let r = ImageReader::open(&img)?;
    let integrity = match r.verify_chunks() {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let m = r.meta();
    let bytes = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
    if json {
        let mut v = serde_json::to_value(m)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("image".into(), img.display().to_string().into());
            o.insert("image_bytes".into(), bytes.into());
            o.insert("integrity".into(), integrity.into());
            o.insert("pages_saved".into(), m.pages_saved().into());
            o.insert("encoding".into(), encoding(m));
            // "full", or "incremental" with `parent` (generation, manifest checksum,
            // image) naming the image the pages it does not hold come from.
            o.insert(
                "kind".into(),
                if m.is_incremental() {
                    "incremental"
                } else {
                    "full"
                }
                .into(),
            );
            if let Some(man) = manifest {
                o.insert("manifest".into(), man);
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("image      {}", img.display());
    println!("format     {}   integrity: {}", m.format, integrity);
    println!(
        "process    pid {} uid {} on {} (kernel {}), generation {}, attempt {}",
        m.origin.pid,
        m.origin.uid,
        m.origin.hostname,
        m.origin.kernel,
        m.origin.generation,
        m.origin.attempt
    );
    println!("command    {}", m.origin.argv.join(" "));
    match &m.parent {
        Some(p) => println!(
            "kind       incremental on generation {} ({}, manifest checksum {}); {} of {} regions inherit pages",
            p.generation,
            p.image,
            p.manifest_checksum,
            m.regions.iter().filter(|r| r.inherit).count(),
            m.regions.len()
        ),
        None => println!("kind       full"),
    }
    println!(
        "size       {} bytes on disk, {} pages saved in {} chunks, {} zero pages not stored",
        bytes,
        m.pages_saved(),
        m.chunks.len(),
        m.pages_zero()
    );
    let e = encoding(m);
    println!(
        "encoding   raw: {} chunks, {} bytes; lz4: {} chunks, {} bytes of pages in {} bytes; {} gathered chunks of {} runs",
        e["raw"]["chunks"],
        e["raw"]["stored_bytes"],
        e["lz4"]["chunks"],
        e["lz4"]["page_bytes"],
        e["lz4"]["stored_bytes"],
        e["gathered"]["chunks"],
        e["gathered"]["runs"]
    );
    println!("threads    {}", m.threads.len());
    for t in &m.threads {
        println!(
            "  tid {:>7} {:<16}{}",
            t.tid,
            t.name,
            if t.is_main { " (main)" } else { "" }
        );
    }
    println!("regions    {}", m.regions.len());
    for g in &m.regions {
        println!(
            "  {:012x}-{:012x} {:<12} {:>8} KiB {:>7} pages saved  {}",
            g.start,
            g.end,
            format!("{:?}", g.kind),
            (g.end - g.start) / 1024,
            g.pages_saved,
            g.name
        );
    }
    println!("fds        {}", m.fds.len());
    for f in &m.fds {
        println!(
            "  {:>4} {:<10} {:<10} {}",
            f.fd,
            format!("{:?}", f.kind),
            format!("{:?}", f.disposition),
            f.path
        );
    }
    Ok(if integrity == "ok" { 0 } else { 2 })
}
