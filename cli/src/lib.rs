//! The `torpor` command: argument parsing and dispatch to one module per verb.

pub mod checkpoint;
pub mod gc;
pub mod inspect;
pub mod paths;
pub mod run;
pub mod shell;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Transparent checkpoint/restart of unmodified programs and batch jobs.
#[derive(Debug, Parser)]
#[command(name = "torpor", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a program under the checkpoint agent (exit status passes through).
    Run {
        /// Checkpoint every DUR (e.g. 30s, 10m, 1h, 01:30:00).
        #[arg(long, value_name = "DUR")]
        interval: Option<String>,
        /// Where the program's generations go (default: ./torpor-images).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Generations to keep.
        #[arg(long, default_value_t = 2)]
        keep: u32,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Ask a running program for a checkpoint and wait until it is durable.
    Checkpoint {
        /// Process id of the program (or of a `torpor restore` running it).
        #[arg(long)]
        pid: i32,
        /// Seconds to wait for the generation.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore the newest complete generation in the foreground (exit status passes through).
    Restore {
        /// A program's image directory, a generation directory, or an image file.
        path: PathBuf,
        /// auto: original pids when user namespaces allow; original; new.
        #[arg(long, default_value = "auto")]
        pids: String,
        #[arg(long, short)]
        verbose: bool,
    },
    /// Remove the images of jobs that ended for good (dry run unless --yes).
    Gc {
        /// Image root(s), e.g. /scratch/torpor (per-user subdirectories are scanned too).
        #[arg(long = "root", required = true)]
        roots: Vec<PathBuf>,
        /// Really remove (default: only report what would be removed).
        #[arg(long)]
        yes: bool,
        /// Keep directories modified within this many seconds.
        #[arg(long, default_value_t = 3600)]
        min_age: u64,
        #[arg(long)]
        json: bool,
    },
    /// Show what an image holds.
    Inspect {
        /// A program's image directory, a generation directory, or an image file.
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write roff manual pages for torpor(1) and every subcommand into DIR.
    Man {
        /// Output directory (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    // Like other Unix tools: a closed pipe (`torpor inspect X | head`) ends us quietly.
    // SAFETY: restoring the default SIGPIPE action has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run {
            interval,
            dir,
            keep,
            cmd,
        } => run::run(interval.as_deref(), dir, keep, &cmd),
        Cmd::Checkpoint { pid, timeout, json } => checkpoint::checkpoint(pid, timeout, json),
        Cmd::Restore {
            path,
            pids,
            verbose,
        } => run::restore(&path, &pids, verbose),
        Cmd::Inspect { path, json } => inspect::inspect(&path, json),
        Cmd::Gc {
            roots,
            yes,
            min_age,
            json,
        } => gc::gc(&roots, yes, min_age, json),
        Cmd::Completions { shell } => shell::completions(shell),
        Cmd::Man { dir } => shell::man(&dir),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("torpor: {e:#}");
            1
        }
    }
}
