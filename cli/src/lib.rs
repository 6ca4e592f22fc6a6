//! The `torpor` command: argument parsing and dispatch to one module per verb.

pub mod checkpoint;
pub mod gc;
pub mod images;
pub mod inspect;
pub mod ops;
pub mod paths;
pub mod run;
pub mod shell;
pub mod site;
pub mod status;
pub mod table;

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
    /// Checkpoint a running job (or one program by --pid) now; it keeps running.
    ///
    /// Waits until every checkpointed program of the job has committed a new generation,
    /// or the timeout passed (the programs that did not are listed, exit status 1).
    Checkpoint {
        /// JOBID or JOBID.STEP of a running batch job.
        #[arg(
            value_name = "JOBID[.STEP]",
            required_unless_present = "pid",
            conflicts_with = "pid"
        )]
        job: Option<String>,
        /// Process id of a program run by `torpor run` (or of a `torpor restore` running it).
        #[arg(long)]
        pid: Option<i32>,
        /// Seconds to wait for the generations.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Checkpoint a running job, then requeue it; it resumes from that checkpoint.
    Vacate {
        /// The batch job.
        #[arg(value_name = "JOBID")]
        job: u64,
        /// Requeue even without checkpointing or with an incomplete checkpoint (work lost).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the checkpoint.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Drain nodes, then checkpoint and requeue every checkpointed job on them.
    ///
    /// Jobs without checkpointing are reported and left running unless --force (then
    /// requeued anyway: their work is lost). Exit status 1 if some job was not handled.
    Drain {
        /// Nodes, as Slurm writes them (n1,n2 or n[1-4]).
        #[arg(value_name = "NODE[,NODE...]")]
        nodes: String,
        /// Why (shown by sinfo -R).
        #[arg(long, required = true)]
        reason: String,
        /// Also requeue jobs that cannot be checkpointed.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for each job's checkpoint.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Show jobs' checkpoints: programs, generations, times, sizes, attempts, where they run.
    Status {
        /// Jobs to show (default: every job in the queue that has images).
        #[arg(value_name = "JOBID")]
        jobs: Vec<u64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteArgs,
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

/// Where the image root and request signal come from (for the job verbs).
#[derive(Debug, Clone, clap::Args)]
pub struct SiteArgs {
    /// A plugstack file with torpor's plugin line (default: $TORPOR_PLUGSTACK, else
    /// Slurm's PlugStackConfig).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The image root template instead of the plugin's dir= (%u user, %U uid, %j job id).
    #[arg(long, value_name = "TEMPLATE")]
    pub root: Option<String>,
}

fn with_ctx(
    site: &SiteArgs,
    f: impl FnOnce(&ops::Ctx) -> anyhow::Result<i32>,
) -> anyhow::Result<i32> {
    let sched = torpor_sched::Slurm::from_env();
    let s = site::Site::resolve(&sched, site.root.as_deref(), site.config.as_deref())?;
    f(&ops::Ctx {
        sched: &sched,
        site: &s,
    })
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
        Cmd::Checkpoint {
            job,
            pid,
            timeout,
            json,
            site,
        } => match (job, pid) {
            (_, Some(pid)) => checkpoint::checkpoint(pid, timeout, json),
            (Some(job), None) => with_ctx(&site, |c| ops::checkpoint_verb(c, &job, timeout, json)),
            (None, None) => Err(anyhow::anyhow!("give JOBID[.STEP] or --pid PID")),
        },
        Cmd::Vacate {
            job,
            force,
            timeout,
            json,
            site,
        } => with_ctx(&site, |c| ops::vacate_verb(c, job, force, timeout, json)),
        Cmd::Drain {
            nodes,
            reason,
            force,
            timeout,
            json,
            site,
        } => with_ctx(&site, |c| {
            ops::drain_verb(c, &nodes, &reason, force, timeout, json)
        }),
        Cmd::Status { jobs, json, site } => with_ctx(&site, |c| status::status(c, &jobs, json)),
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
