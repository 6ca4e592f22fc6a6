//! The engine suite: every case in four variants (uninterrupted, single,
//! double, nonroot). Needs `cargo build --release` first for all but the
//! uninterrupted variant.

use torpor_engine_suite::cases::{self, Case};
use torpor_engine_suite::scenario::Outcome;
use torpor_engine_suite::{run_case, Variant};

fn case(name: &'static str) -> Case {
    if name == "rust_threads" {
        return Case::reference_exe(name, env!("CARGO_BIN_EXE_rust_threads"), 5);
    }
    cases::named(name).unwrap_or_else(|| panic!("unknown case {name}"))
}

fn check(name: &'static str, variant: Variant) {
    match run_case(&case(name), variant) {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(why)) => println!("SKIP {name} {variant:?}: {why}"),
        Err(e) => panic!("{name} {variant:?} failed: {e:#}"),
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[test]
            fn uninterrupted() {
                check(stringify!($name), Variant::Uninterrupted);
            }

            #[test]
            fn single() {
                check(stringify!($name), Variant::Single);
            }

            #[test]
            fn double() {
                check(stringify!($name), Variant::Double);
            }

            #[test]
            fn nonroot() {
                check(stringify!($name), Variant::Nonroot);
            }
        }
    )*};
}

cases!(
    mutex_threads,
    avx2_regs,
    avx512_regs,
    signals,
    altstack,
    posix_timer,
    brk,
    mmap_file,
    file_offsets,
    dup_fds,
    deleted_file,
    dev_fds,
    sqlite_delete,
    sqlite_wal,
    thread_spawn,
    eintr_sleep,
    tls,
    counter_threads,
    memory_kinds,
    python_threads,
    perl_script,
    rust_threads,
    tree_pipes,
    shell_pipeline,
    python_subprocess,
    tree_shm,
    python_pool,
    tree_socketpair,
    tree_orphan,
    tree_shared_log,
    tree_fifo,
    tree_dgram,
    tree_unix_server,
    tree_scm,
    tree_tcp,
    python_manager,
    shell_redirect,
    python_socketserver,
    tree_seqpacket,
    tree_dgram_named,
    python_syslog,
    tree_churn,
    make_j2,
);
