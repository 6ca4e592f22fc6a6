//! Driving the test cluster: commands as the test user or root, jobs (submit, srun,
//! state, requeue, cancel, output) and logs.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::*;

impl Cluster {
    /// A command run as the test user, in [`Self::work_dir`], with a clean environment that only
    /// has PATH, HOME, USER, LOGNAME and SLURM_CONF.
    pub fn user_command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", PATH)
            .env("HOME", &self.user.home)
            .env("USER", &self.user.name)
            .env("LOGNAME", &self.user.name)
            .env("SLURM_CONF", self.conf())
            .current_dir(self.work_dir())
            .uid(self.user.uid)
            .gid(self.user.gid)
            .stdin(Stdio::null());
        c
    }

    /// Runs a command and collects its output (any exit status is `Ok`).
    pub fn run(&self, mut cmd: Command) -> Result<Out> {
        let what = format!("{:?}", cmd.get_program());
        output_of(&mut cmd, &what)
    }

    /// Runs a Slurm client as root (scontrol, squeue, sinfo, ...).
    pub fn root_cmd(&self, program: &str, args: &[&str]) -> Result<Out> {
        let mut c = Command::new(program);
        c.args(args)
            .env("PATH", PATH)
            .env("SLURM_CONF", self.conf())
            .stdin(Stdio::null());
        output_of(&mut c, program)
    }

    fn root_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.root_cmd(program, args)?;
        if out.ok() {
            Ok(out.stdout)
        } else {
            Err(HarnessError::Command {
                cmd: format!("{program} {}", args.join(" ")),
                status: out.status,
                stderr: out.stderr,
            })
        }
    }

    /// Writes `script` to a fresh file in the work dir (owned by the test user) and returns its path.
    pub fn write_script(&self, script: &str) -> Result<PathBuf> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self.work_dir().join(format!("script-{n}.sh"));
        let mut f = io("create script", fs::File::create(&p))?;
        io("write script", f.write_all(script.as_bytes()))?;
        io(
            "chmod script",
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)),
        )?;
        io(
            "chown script",
            nix::unistd::chown(&p, Some(self.user.uid.into()), Some(self.user.gid.into()))
                .map_err(std::io::Error::from),
        )?;
        Ok(p)
    }

    /// `sbatch ARGS SCRIPTFILE` as the test user. Output goes to `<work>/<job id>.out` unless
    /// ARGS contain `--output`.
    pub fn sbatch(&self, args: &[&str], script: &str) -> Result<Out> {
        self.sbatch_env(args, script, &[])
    }

    /// [`Self::sbatch`] with extra variables in the submitting environment (e.g. `LD_PRELOAD`).
    pub fn sbatch_env(&self, args: &[&str], script: &str, env: &[(&str, &str)]) -> Result<Out> {
        let path = self.write_script(script)?;
        let mut c = self.sbatch_command(args);
        c.envs(env.iter().copied());
        c.arg(path);
        self.run(c)
    }

    /// `sbatch ARGS` as the test user with the script on stdin (no script argument: this is
    /// how a bare `--checkpoint` swallowing the script name looks).
    pub fn sbatch_stdin(&self, args: &[&str], script: &str) -> Result<Out> {
        let path = self.write_script(script)?;
        let mut c = self.sbatch_command(args);
        c.stdin(io("open script", fs::File::open(path))?);
        self.run(c)
    }

    /// `sbatch ARGS SCRIPTFILE` with the same script also on stdin: `sbatch --checkpoint FILE`
    /// then sees FILE as the option's value and reads the script from stdin.
    pub fn sbatch_file_and_stdin(&self, args: &[&str], script: &str) -> Result<(Out, PathBuf)> {
        let path = self.write_script(script)?;
        let mut c = self.sbatch_command(args);
        c.arg(&path);
        c.stdin(io("open script", fs::File::open(&path))?);
        Ok((self.run(c)?, path))
    }

    fn sbatch_command(&self, args: &[&str]) -> Command {
        let mut c = self.user_command("sbatch");
        c.arg("--parsable");
        if !args.iter().any(|a| a.starts_with("--output") || *a == "-o") {
            c.arg(format!("--output={}/%j.out", self.work_dir().display()));
        }
        c.args(args);
        c
    }

    /// Submits a batch job that must be accepted; returns its id.
    pub fn submit(&self, args: &[&str], script: &str) -> Result<JobId> {
        let out = self.sbatch(args, script)?;
        parse_job_id(&out).ok_or_else(|| HarnessError::Command {
            cmd: format!("sbatch {}", args.join(" ")),
            status: out.status,
            stderr: out.stderr.clone(),
        })
    }

    /// `srun ARGS` as the test user (blocking).
    pub fn srun(&self, args: &[&str]) -> Result<Out> {
        self.srun_env(args, &[])
    }

    /// [`Self::srun`] with extra variables in the submitting environment.
    pub fn srun_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Out> {
        let mut c = self.user_command("srun");
        c.envs(env.iter().copied());
        c.args(args);
        self.run(c)
    }

    /// Every job slurmctld knows (pending, running, and finished within `MinJobAge`).
    pub fn job_ids(&self) -> Result<Vec<JobId>> {
        let out = self.root_cmd("scontrol", &["-o", "show", "job"])?;
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| field(l, "JobId"))
            .filter_map(|v| v.parse().ok())
            .map(JobId)
            .collect())
    }

    /// One field of `scontrol -o show job ID` (e.g. `JobState`, `NodeList`, `Restarts`).
    pub fn job_field(&self, job: JobId, key: &str) -> Result<Option<String>> {
        let out = self.root_cmd("scontrol", &["-o", "show", "job", &job.to_string()])?;
        Ok(out.stdout.lines().next().and_then(|l| field(l, key)))
    }

    pub fn job_state(&self, job: JobId) -> Result<Option<String>> {
        self.job_field(job, "JobState")
    }

    /// Waits until the job is in one of `states` (e.g. `["RUNNING"]`); returns the state.
    pub fn wait_for_state(&self, job: JobId, states: &[&str], timeout: Duration) -> Result<String> {
        let mut last = String::new();
        self.wait_for(&format!("job {job} to reach {states:?}"), timeout, || {
            last = self.job_state(job)?.unwrap_or_default();
            Ok(states.contains(&last.as_str()))
        })?;
        Ok(last)
    }

    /// Waits until the job has ended (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...); returns the state.
    pub fn wait_finished(&self, job: JobId, timeout: Duration) -> Result<String> {
        self.wait_for_state(
            job,
            &[
                "COMPLETED",
                "FAILED",
                "CANCELLED",
                "TIMEOUT",
                "NODE_FAIL",
                "OUT_OF_MEMORY",
                "BOOT_FAIL",
                "DEADLINE",
                "PREEMPTED",
            ],
            timeout,
        )
    }

    /// `scontrol requeue JOB`.
    pub fn requeue(&self, job: JobId) -> Result<()> {
        self.root_ok("scontrol", &["requeue", &job.to_string()])
            .map(|_| ())
    }
    /// `scontrol release JOB` (after `sbatch --hold`).
    pub fn release(&self, job: JobId) -> Result<()> {
        self.root_ok("scontrol", &["release", &job.to_string()])
            .map(|_| ())
    }
    /// `scancel JOB`.
    pub fn cancel(&self, job: JobId) -> Result<()> {
        self.root_ok("scancel", &[&job.to_string()]).map(|_| ())
    }

    /// Path of the job's output file as [`Self::sbatch`] sets it.
    pub fn output_path(&self, job: JobId) -> PathBuf {
        self.work_dir().join(format!("{job}.out"))
    }
    pub fn read_output(&self, job: JobId) -> Result<String> {
        io(
            format!("read output of job {job}"),
            fs::read_to_string(self.output_path(job)),
        )
    }

    /// Node state as `sinfo` prints it (`idle`, `alloc`, `down*`, ...).
    pub fn node_state(&self, node: &str) -> Result<String> {
        let out = self.root_ok("sinfo", &["-h", "-N", "-n", node, "-o", "%t"])?;
        Ok(out.lines().next().unwrap_or_default().trim().to_owned())
    }

    pub fn wait_nodes_idle(&self, timeout: Duration) -> Result<()> {
        self.wait_for("all nodes idle", timeout, || {
            let out = self.root_cmd("sinfo", &["-h", "-N", "-o", "%N %t"])?;
            let states: Vec<&str> = out.stdout.lines().collect();
            Ok(states.len() >= self.nodes.len() && states.iter().all(|l| l.ends_with(" idle")))
        })
    }

    /// slurmd's log for `node` (plugin messages from slurmstepd land here).
    pub fn node_log(&self, node: &str) -> String {
        fs::read_to_string(self.dir.join(format!("log/slurmd-{node}.log"))).unwrap_or_default()
    }
    pub fn ctld_log(&self) -> String {
        fs::read_to_string(self.dir.join("log/slurmctld.log")).unwrap_or_default()
    }

    /// Polls `done` every 250 ms until it returns true or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if done()? {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                });
            }
            sleep(Duration::from_millis(250));
        }
    }
}
