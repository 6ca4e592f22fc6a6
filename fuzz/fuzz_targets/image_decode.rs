//! Fuzz target: the image decoder (container header/trailer/metadata parsing, bounds
//! validation, chunk and padding checks) and the generation manifest parser. Any input
//! must give a value or an error, never a panic, a hang or an absurd allocation.
#![no_main]

use std::io::{Seek, Write};
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The manifest parser takes bytes.
    let _ = torpor_image::store::Manifest::parse(data, Path::new("manifest.json"));
    // The metadata JSON on its own, then the bounds a reader enforces on it (what a
    // checksummed container would otherwise keep the fuzzer from reaching).
    if let Ok(m) = serde_json::from_slice::<torpor_image::ProcessMeta>(data) {
        let _ = torpor_image::container::validate_meta(&m, data.len() as u64 * 4096);
        let _ = m.pages_saved();
    }
    // The container reads a file: one scratch file per fuzzing process.
    thread_local! {
        static FILE: std::cell::RefCell<Option<std::fs::File>> = const { std::cell::RefCell::new(None) };
    }
    FILE.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            let p = std::env::temp_dir().join(format!("torpor-fuzz-{}.img", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .expect("scratch file");
            let _ = std::fs::remove_file(&p);
            *f = Some(file);
        }
        let Some(file) = f.as_mut() else { return };
        file.set_len(0).expect("truncate");
        file.rewind().expect("rewind");
        file.write_all(data).expect("write");
        let clone = file.try_clone().expect("dup");
        if let Ok(r) = torpor_image::ImageReader::from_file(clone, Path::new("fuzz.img")) {
            let _ = r.verify_chunks();
            let mut buf = Vec::new();
            for c in r.meta().chunks.iter().take(4) {
                let _ = r.read_chunk(c, &mut buf);
            }
        }
    });
});
