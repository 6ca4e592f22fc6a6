//! The cases: which program, how its result is judged, what it needs.

use std::path::PathBuf;

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A C program from progs/, built by build.rs.
    Native(&'static str),
    /// A script from progs/ run by an interpreter (absolute path, so the
    /// unprivileged user gets the same one), with extra arguments after the
    /// tick count.
    Script {
        /// e.g. /usr/bin/python3
        interpreter: &'static str,
        /// File name in progs/.
        script: &'static str,
        /// Arguments after the tick count.
        args: &'static [&'static str],
    },
    /// A binary built elsewhere (the suite's own Rust program).
    Exe(PathBuf),
}

/// How the final result is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The program checks itself: "tick 0".."tick N-1" then "PASS".
    SelfCheck,
    /// An unmodified program: its output must equal an uninterrupted run's.
    SameAsUninterrupted,
}

/// One case of the suite.
#[derive(Debug, Clone)]
pub struct Case {
    /// Name (used in test names and temp dirs).
    pub name: &'static str,
    /// What to run.
    pub program: Program,
    /// How to judge it.
    pub expect: Expect,
    /// Only meaningful with the original pids/tids restored (held
    /// ERRORCHECK/RECURSIVE/PI mutexes): skipped where the running user
    /// cannot create a user+pid namespace.
    pub needs_original_pids: bool,
    /// `torpor inspect` must list at least this many threads.
    pub min_threads: usize,
    /// `torpor inspect` must list these fds with a path containing the text.
    pub fds: &'static [(i64, &'static str)],
    /// A process tree: the harness checkpoints and kills the whole tree (the root is
    /// the shallowest process running the program) and needs original pids.
    pub tree: bool,
}

impl Case {
    fn native(name: &'static str, min_threads: usize) -> Case {
        Case {
            name,
            program: Program::Native(name),
            expect: Expect::SelfCheck,
            needs_original_pids: false,
            min_threads,
            fds: &[],
            tree: false,
        }
    }

    /// An unmodified binary whose output must equal its uninterrupted run's.
    pub fn reference_exe(name: &'static str, exe: impl Into<PathBuf>, min_threads: usize) -> Case {
        Case {
            name,
            program: Program::Exe(exe.into()),
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: false,
            min_threads,
            fds: &[],
            tree: false,
        }
    }
}

/// Python used by the script cases.
pub const PYTHON: &str = "/usr/bin/python3";
/// Bash used by the shell pipeline case.
pub const BASH: &str = "/bin/bash";
/// Perl used by the script case.
pub const PERL: &str = "/usr/bin/perl";

/// The case called `name` (all but `rust_threads`, whose binary path only
/// the integration tests know: see [`Case::reference_exe`]).
pub fn named(name: &str) -> Option<Case> {
    let c = match name {
        "mutex_threads" => Case {
            needs_original_pids: true,
            ..Case::native("mutex_threads", 6)
        },
        "avx2_regs" => Case::native("avx2_regs", 3),
        "avx512_regs" => Case::native("avx512_regs", 3),
        "signals" => Case::native("signals", 2),
        "altstack" => Case::native("altstack", 2),
        "posix_timer" => Case::native("posix_timer", 1),
        "brk" => Case::native("brk", 1),
        "mmap_file" => Case::native("mmap_file", 1),
        "file_offsets" => Case {
            fds: &[
                (20, "input.txt"),
                (21, "log.txt"),
                (22, "rw.dat"),
                (23, "ro.txt"),
            ],
            ..Case::native("file_offsets", 1)
        },
        "dup_fds" => Case {
            fds: &[(50, "shared.dat"), (51, "shared.dat"), (52, "shared.dat")],
            ..Case::native("dup_fds", 1)
        },
        "deleted_file" => Case {
            fds: &[(30, "gone.dat"), (31, "gone-ro.dat")],
            ..Case::native("deleted_file", 1)
        },
        "dev_fds" => Case {
            fds: &[(40, "/dev/null"), (41, "/dev/urandom"), (42, "/dev/null")],
            ..Case::native("dev_fds", 1)
        },
        "thread_spawn" => Case::native("thread_spawn", 2),
        "eintr_sleep" => Case::native("eintr_sleep", 5),
        "tls" => Case::native("tls", 9),
        "counter_threads" => Case::native("counter_threads", 5),
        "memory_kinds" => Case::native("memory_kinds", 3),
        "sqlite_delete" | "sqlite_wal" => Case {
            name: if name == "sqlite_wal" {
                "sqlite_wal"
            } else {
                "sqlite_delete"
            },
            program: Program::Script {
                interpreter: PYTHON,
                script: "sqlite_db.py",
                args: if name == "sqlite_wal" {
                    &["wal"]
                } else {
                    &["delete"]
                },
            },
            expect: Expect::SelfCheck,
            needs_original_pids: false,
            min_threads: 1,
            fds: &[(-1, "test.db")],
            tree: false,
        },
        "python_threads" => Case {
            name: "python_threads",
            program: Program::Script {
                interpreter: PYTHON,
                script: "python_threads.py",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: false,
            min_threads: 5,
            fds: &[],
            tree: false,
        },
        "perl_script" => Case {
            name: "perl_script",
            program: Program::Script {
                interpreter: PERL,
                script: "perl_script.pl",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: false,
            min_threads: 1,
            fds: &[],
            tree: false,
        },
        "shell_pipeline" => Case {
            name: "shell_pipeline",
            program: Program::Script {
                interpreter: BASH,
                script: "pipeline.sh",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: true,
            min_threads: 1,
            fds: &[],
            tree: true,
        },
        "python_subprocess" => Case {
            name: "python_subprocess",
            program: Program::Script {
                interpreter: PYTHON,
                script: "python_subprocess.py",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: true,
            min_threads: 1,
            fds: &[],
            tree: true,
        },
        "python_pool" => Case {
            name: "python_pool",
            program: Program::Script {
                interpreter: PYTHON,
                script: "python_pool.py",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: true,
            min_threads: 1,
            fds: &[],
            tree: true,
        },
        "shell_redirect" => Case {
            name: "shell_redirect",
            program: Program::Script {
                interpreter: BASH,
                script: "shell_redirect.sh",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: true,
            min_threads: 1,
            fds: &[],
            tree: true,
        },
        "python_socketserver" => Case {
            name: "python_socketserver",
            program: Program::Script {
                interpreter: PYTHON,
                script: "python_socketserver.py",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: true,
            min_threads: 1,
            fds: &[],
            tree: true,
        },
        "python_manager" => Case {
            name: "python_manager",
            program: Program::Script {
                interpreter: PYTHON,
                script: "python_manager.py",
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: true,
            min_threads: 1,
            fds: &[],
            tree: true,
        },
        "tree_socketpair" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_socketpair", 1)
        },
        "tree_shm" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_shm", 1)
        },
        "tree_orphan" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_orphan", 1)
        },
        "tree_pipes" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_pipes", 1)
        },
        "tree_shared_log" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_shared_log", 1)
        },
        "tree_fifo" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_fifo", 1)
        },
        "tree_dgram" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_dgram", 1)
        },
        "tree_unix_server" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_unix_server", 1)
        },
        "tree_tcp" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_tcp", 1)
        },
        "tree_scm" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_scm", 1)
        },
        "tree_seqpacket" => Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native("tree_seqpacket", 1)
        },
        _ => return None,
    };
    Some(c)
}
