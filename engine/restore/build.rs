//! Builds restore stage 2, a freestanding program, with `rustc -C panic=abort` (the
//! workspace itself must keep unwinding for the SPANK plugin), linked at a fixed high
//! address with no libc. The binary is embedded into `torpor-restore`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let dst = out.join("torpor-restore-stage2");
    println!("cargo:rerun-if-changed=stage2");
    println!("cargo:rerun-if-changed=../core/src/plan.rs");
    println!("cargo:rerun-if-changed=../core/src/lz4.rs");
    println!("cargo:rerun-if-changed=../core/src/rawclone.rs");
    let status = Command::new(rustc)
        .args([
            "--edition=2021",
            "--crate-type=bin",
            "--crate-name=torpor_restore_stage2",
            "-Cpanic=abort",
            "-Copt-level=2",
            "-Cdebuginfo=0",
            "-Crelocation-model=pie",
            "-Ccodegen-units=1",
            "-Dwarnings",
            "-Clink-arg=-nostartfiles",
            "-Clink-arg=-nostdlib",
            "-Clink-arg=-static",
            "-Clink-arg=-no-pie",
            "-Clink-arg=-Wl,--image-base=0x3f0000000000",
            "-Clink-arg=-Wl,--build-id=none",
            "-o",
        ])
        .arg(&dst)
        .arg("stage2/main.rs")
        .status()
        .expect("running rustc for restore stage 2");
    assert!(status.success(), "building restore stage 2 failed");
}
