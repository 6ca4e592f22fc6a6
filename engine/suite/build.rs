//! Builds the suite's C programs (progs/*.c) with the system C compiler into
//! OUT_DIR and tells the harness where they are (TORPOR_SUITE_PROGS_DIR).

use std::path::Path;
use std::process::Command;

/// Programs compiled from progs/NAME.c. The AVX ones carry their vector code
/// in `__attribute__((target(...)))` functions entered only after a cpuid
/// check, so no -m flag can leak vector instructions into startup code.
const PROGS: &[&str] = &[
    "mutex_threads",
    "avx2_regs",
    "avx512_regs",
    "signals",
    "altstack",
    "posix_timer",
    "brk",
    "mmap_file",
    "file_offsets",
    "dup_fds",
    "deleted_file",
    "dev_fds",
    "thread_spawn",
    "eintr_sleep",
    "tls",
    "counter_threads",
    "memory_kinds",
    "fdclean",
    "fault_target",
    "grow",
    "incr_mem",
    "incr_sparse",
    "tree_pipes",
    "tree_shm",
    "tree_socketpair",
    "tree_orphan",
    "tree_shared_log",
    "tree_fifo",
    "tree_dgram",
    "tree_unix_server",
    "tree_tcp",
    "tree_scm",
    "tree_seqpacket",
    "tree_dgram_named",
];

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let progs = Path::new(&manifest).join("progs");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    println!("cargo:rerun-if-env-changed=CC");
    println!(
        "cargo:rerun-if-changed={}",
        progs.join("common.h").display()
    );
    for name in PROGS {
        let src = progs.join(format!("{name}.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let dst = Path::new(&out).join(name);
        let result = Command::new(&cc)
            .args(["-O2", "-g", "-pthread", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&dst)
            .arg(&src)
            .output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "compiling {} with `{cc}` failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run the C compiler `{cc}` ({e}); install gcc"),
        }
    }
    println!("cargo:rustc-env=TORPOR_SUITE_PROGS_DIR={out}");
    println!(
        "cargo:rustc-env=TORPOR_SUITE_SCRIPTS_DIR={}",
        progs.display()
    );
}
