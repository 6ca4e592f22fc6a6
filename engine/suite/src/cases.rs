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

    /// A C process-tree program (progs/tree_*.c): checks itself; the harness checkpoints
    /// the whole tree, which needs the original pids.
    fn tree(name: &'static str) -> Case {
        Case {
            needs_original_pids: true,
            tree: true,
            ..Case::native(name, 1)
        }
    }

    /// An unmodified script whose output must equal its uninterrupted run's.
    fn script(
        name: &'static str,
        interpreter: &'static str,
        script: &'static str,
        min_threads: usize,
    ) -> Case {
        Case {
            name,
            program: Program::Script {
                interpreter,
                script,
                args: &[],
            },
            expect: Expect::SameAsUninterrupted,
            needs_original_pids: false,
            min_threads,
            fds: &[],
            tree: false,
        }
    }

    /// An unmodified script that starts a process tree (one thread each); compared with
    /// its uninterrupted run.
    fn script_tree(name: &'static str, interpreter: &'static str, script: &'static str) -> Case {
        Case {
            needs_original_pids: true,
            tree: true,
            ..Case::script(name, interpreter, script, 1)
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
        "python_threads" => Case::script("python_threads", PYTHON, "python_threads.py", 5),
        "perl_script" => Case::script("perl_script", PERL, "perl_script.pl", 1),
        "shell_pipeline" => Case::script_tree("shell_pipeline", BASH, "pipeline.sh"),
        "python_subprocess" => {
            Case::script_tree("python_subprocess", PYTHON, "python_subprocess.py")
        }
        "python_pool" => Case::script_tree("python_pool", PYTHON, "python_pool.py"),
        "shell_redirect" => Case::script_tree("shell_redirect", BASH, "shell_redirect.sh"),
        "python_socketserver" => {
            Case::script_tree("python_socketserver", PYTHON, "python_socketserver.py")
        }
        "python_manager" => Case::script_tree("python_manager", PYTHON, "python_manager.py"),
        "tree_socketpair" => Case::tree("tree_socketpair"),
        "tree_shm" => Case::tree("tree_shm"),
        "tree_orphan" => Case::tree("tree_orphan"),
        "tree_pipes" => Case::tree("tree_pipes"),
        "tree_shared_log" => Case::tree("tree_shared_log"),
        "tree_fifo" => Case::tree("tree_fifo"),
        "tree_dgram" => Case::tree("tree_dgram"),
        "tree_unix_server" => Case::tree("tree_unix_server"),
        "tree_tcp" => Case::tree("tree_tcp"),
        "tree_scm" => Case::tree("tree_scm"),
        "tree_seqpacket" => Case::tree("tree_seqpacket"),
        "tree_dgram_named" => Case::tree("tree_dgram_named"),
        "python_syslog" => Case::script_tree("python_syslog", PYTHON, "python_syslog.py"),
        "tree_churn" => Case::script_tree("tree_churn", BASH, "tree_churn.sh"),
        "make_j2" => Case::script_tree("make_j2", BASH, "make_j2.sh"),
        _ => return None,
    };
    Some(c)
}
