//! A real Slurm cluster for tests: munged, slurmctld and N slurmd in a temp dir, with its own ports.
//!
//! ```text
//! <dir>/                      0755, removed on drop unless TORPOR_KEEP_CLUSTER=1
//!   slurm.conf plugstack.conf
//!   munge/  state/  spool/<node>/  log/  run/
//!   work/     owned by the test user: scripts, job output (<job id>.out)
//!   images/   1777: the site image root (plugstack `dir=<dir>/images/%u`)
//!   pids      one "<name> <pid>" line per daemon (process-group leaders)
//! ```
//!
//! Every daemon is a process-group leader. Each slurmd runs in its own pid namespace
//! (`unshare --pid --fork --mount-proc --kill-child`, with a reaping bash loop as pid 1 and
//! `slurmd -D -N nX` under it), so [`Cluster::kill_node`] takes the node's steps and tasks
//! down with it. A test cluster is tied to the thread that
//! started it (`PR_SET_PDEATHSIG`): if the test process dies, so do the daemons; `Drop` kills
//! them in order on success and on panic. Nothing outside `<dir>` is touched, so a Slurm already
//! running on the machine is not disturbed.

mod config;
mod jobs;

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{Pid, User};

/// What went wrong while driving the cluster.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: i32,
        stderr: String,
    },
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("cannot set up the cluster: {0}")]
    Setup(String),
}

type Result<T> = std::result::Result<T, HarnessError>;

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| HarnessError::Io {
        what: what.into(),
        source,
    })
}

/// A Slurm job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId(pub u32);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A finished command: exit code (-1 when killed by a signal), stdout and stderr.
#[derive(Debug, Clone)]
pub struct Out {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
}

/// The unprivileged user jobs run as.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// How to build a cluster. [`ClusterOptions::for_tests`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of slurmd (nodes `n1..nN`).
    pub nodes: u32,
    /// CPUs each node declares.
    pub cpus_per_node: u32,
    /// The SPANK plugin to load.
    pub plugin: PathBuf,
    /// Directory holding `libtorpor_agent.so` and `torpor-restore`, for the default plugin
    /// arguments ([`Cluster::plugin_args`]).
    pub tools: PathBuf,
    /// plugstack.conf arguments; `None` = [`Cluster::plugin_args`] with `tools`.
    pub plugin_args: Option<Vec<String>>,
    /// User jobs are submitted as (must exist; `.ci/run` creates `torpor-test`).
    pub user: String,
    /// Kill the daemons when the starting thread exits (tests). `false` for a dev cluster
    /// that outlives the command that started it.
    pub tie_to_thread: bool,
    /// Where to put the cluster; `None` = a fresh directory under /tmp.
    pub dir: Option<PathBuf>,
    /// Extra lines appended to slurm.conf.
    pub extra_conf: Vec<String>,
}

impl ClusterOptions {
    /// Three nodes, the freshly built plugin, user `torpor-test` (or `$TORPOR_TEST_USER`).
    pub fn for_tests() -> Self {
        Self {
            nodes: 3,
            cpus_per_node: 2,
            plugin: release_dir().join("libtorpor_spank.so"),
            tools: release_dir(),
            plugin_args: None,
            user: std::env::var("TORPOR_TEST_USER").unwrap_or_else(|_| "torpor-test".to_owned()),
            tie_to_thread: true,
            dir: None,
            extra_conf: Vec::new(),
        }
    }

    /// Like [`Self::for_tests`], but the plugin, agent and restorer installed in `libdir`
    /// (e.g. `/usr/lib/torpor` by the .deb) instead of the workspace's release build.
    pub fn installed(libdir: &Path) -> Self {
        Self {
            plugin: libdir.join("libtorpor_spank.so"),
            tools: libdir.to_path_buf(),
            ..Self::for_tests()
        }
    }
}

/// The workspace's release directory: `$TORPOR_TARGET_DIR`, else `$CARGO_TARGET_DIR`, else
/// `<workspace>/target`, plus `/release`.
pub fn release_dir() -> PathBuf {
    let target = std::env::var_os("TORPOR_TARGET_DIR")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("/"))
                .join("target")
        });
    target.join("release")
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const BINARIES: &[&str] = &[
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "squeue",
    "sinfo",
    "munged",
    "unshare",
];

fn which(bin: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// `Err(reason)` when the Slurm/munge binaries are not installed: the only case in which a
/// Slurm test may skip. Anything else missing (root, the test user, the built plugin) fails.
pub fn slurm_available() -> std::result::Result<(), String> {
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| which(b).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Slurm binaries not installed ({}); run scripts/setup.sh",
            missing.join(", ")
        ))
    }
}

/// Skips the calling test (returns `None` after printing why) only when Slurm is not installed.
/// In CI (`CI` set) a missing Slurm is a failure, not a skip.
pub fn start_or_skip(opts: ClusterOptions) -> Option<Cluster> {
    if let Err(why) = slurm_available() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but {why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    match Cluster::start(opts) {
        Ok(c) => Some(c),
        Err(e) => panic!("cannot start the Slurm test cluster: {e}"),
    }
}

#[derive(Debug)]
struct Daemon {
    name: String,
    child: Option<Child>,
    pid: i32,
}

/// A running test cluster. Dropping it stops every daemon and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    user: TestUser,
    nodes: Vec<String>,
    ports: Vec<u16>,
    tie_to_thread: bool,
    keep: bool,
    daemons: Mutex<Vec<Daemon>>,
}

fn pick_ports(n: usize) -> Result<u16> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for attempt in 0..200u32 {
        let base = 20_000 + ((seed.wrapping_add(attempt.wrapping_mul(7_919))) % 40_000) as u16;
        let free = (0..n as u16).all(|i| {
            TcpListener::bind(("0.0.0.0", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + i)).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    Err(HarnessError::Setup("no free port range".to_owned()))
}

fn hostname() -> Result<String> {
    let h = io(
        "read hostname",
        fs::read_to_string("/proc/sys/kernel/hostname"),
    )?;
    Ok(h.trim().to_owned())
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    io(format!("mkdir {}", p.display()), fs::create_dir_all(p))?;
    io(
        format!("chmod {}", p.display()),
        fs::set_permissions(p, fs::Permissions::from_mode(mode)),
    )
}

fn write(p: &Path, contents: &str) -> Result<()> {
    io(format!("write {}", p.display()), fs::write(p, contents))
}

fn output_of(cmd: &mut Command, what: &str) -> Result<Out> {
    let out = io(format!("run {what}"), cmd.output())?;
    Ok(Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl Cluster {
    /// Plugin arguments a test cluster uses unless told otherwise: images under `<dir>/images/%u`,
    /// `min_interval=5s`, agent and restorer from the release directory.
    pub fn default_plugin_args(dir: &Path) -> Vec<String> {
        Self::plugin_args(dir, &release_dir())
    }

    /// The test plugin arguments with the agent and restorer taken from `tools`.
    pub fn plugin_args(dir: &Path, tools: &Path) -> Vec<String> {
        vec![
            format!("dir={}/images/%u", dir.display()),
            "min_interval=5s".to_owned(),
            "keep=2".to_owned(),
            format!("agent={}", tools.join("libtorpor_agent.so").display()),
            format!("restorer={}", tools.join("torpor-restore").display()),
        ]
    }

    /// Writes the configuration, starts munged, slurmctld and the slurmd, and waits until every
    /// node is idle.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Err(HarnessError::Setup(
                "the Slurm test cluster needs root (it runs slurmd and munged)".to_owned(),
            ));
        }
        if !opts.plugin.is_file() {
            return Err(HarnessError::Setup(format!(
                "{} not built: run `cargo build --release --workspace` first",
                opts.plugin.display()
            )));
        }
        let user = match User::from_name(&opts.user) {
            Ok(Some(u)) => TestUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            },
            _ => {
                return Err(HarnessError::Setup(format!(
                    "test user {} does not exist: `useradd --create-home {}` (.ci/run does this)",
                    opts.user, opts.user
                )))
            }
        };
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => {
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                PathBuf::from(format!(
                    "/tmp/torpor-cluster-{}-{stamp}",
                    std::process::id()
                ))
            }
        };
        mkdir(&dir, 0o755)?;
        for sub in ["munge", "state", "log", "run", "spool"] {
            mkdir(&dir.join(sub), 0o755)?;
        }
        mkdir(&dir.join("munge"), 0o700)?;
        mkdir(&dir.join("images"), 0o1777)?;
        mkdir(&dir.join("work"), 0o755)?;
        io(
            "chown work",
            nix::unistd::chown(
                &dir.join("work"),
                Some(user.uid.into()),
                Some(user.gid.into()),
            )
            .map_err(std::io::Error::from),
        )?;

        let nodes: Vec<String> = (1..=opts.nodes).map(|i| format!("n{i}")).collect();
        let base = pick_ports(nodes.len() + 1)?;
        let ports: Vec<u16> = (0..=nodes.len() as u16).map(|i| base + i).collect();
        let plugin_args = opts
            .plugin_args
            .clone()
            .unwrap_or_else(|| Self::plugin_args(&dir, &opts.tools));

        let mut cluster = Self {
            dir,
            user,
            nodes,
            ports,
            tie_to_thread: opts.tie_to_thread,
            keep: std::env::var_os("TORPOR_KEEP_CLUSTER").is_some(),
            daemons: Mutex::new(Vec::new()),
        };
        cluster.write_slurm_conf(&opts)?;
        cluster.write_plugstack(&opts.plugin, &plugin_args)?;
        if let Err(e) = cluster.boot() {
            cluster.stop();
            return Err(e);
        }
        Ok(cluster)
    }

    fn boot(&mut self) -> Result<()> {
        let key = self.dir.join("munge/munge.key");
        let out = output_of(
            Command::new("mungekey").arg("-c").arg("-k").arg(&key),
            "mungekey",
        )?;
        if !out.ok() {
            // Older munge: no mungekey; any 1024 random bytes are a key.
            let bytes = io("random munge key", random_bytes(1024))?;
            io("write munge key", fs::write(&key, bytes))?;
        }
        io(
            "chmod munge key",
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)),
        )?;
        let m = self.dir.join("munge");
        let mut munged = Command::new("munged");
        munged
            .arg("-F")
            .arg("--force")
            .arg(format!("--socket={}", m.join("munge.sock").display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", m.join("munged.pid").display()))
            .arg(format!("--seed-file={}", m.join("munged.seed").display()))
            .arg(format!(
                "--log-file={}",
                self.dir.join("log/munged.log").display()
            ));
        self.spawn("munged", munged)?;
        self.wait_for("munge socket", Duration::from_secs(20), || {
            Ok(m.join("munge.sock").exists())
        })?;
        // The socket's directory must let job users reach munged.
        mkdir(&m, 0o755)?;

        let mut ctld = Command::new("slurmctld");
        ctld.arg("-D").arg("-i").arg("-f").arg(self.conf());
        self.spawn("slurmctld", ctld)?;
        self.wait_for("slurmctld", Duration::from_secs(60), || {
            Ok(self
                .root_cmd("scontrol", &["ping"])
                .map(|o| o.stdout.contains("is UP"))
                .unwrap_or(false))
        })?;
        for node in self.nodes.clone() {
            self.start_node(&node)?;
        }
        self.wait_nodes_idle(Duration::from_secs(90))
    }

    fn spawn(&self, name: &str, mut cmd: Command) -> Result<i32> {
        let log = self.dir.join(format!("log/{name}.stdio"));
        let f = io("open stdio log", fs::File::create(&log))?;
        let f2 = io("dup stdio log", f.try_clone())?;
        cmd.env("PATH", PATH)
            .env("SLURM_CONF", self.conf())
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .process_group(0);
        if self.tie_to_thread {
            // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
            // async-signal-safe; it allocates nothing and touches no shared state.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL))
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = io(format!("spawn {name}"), cmd.spawn())?;
        let pid = child.id() as i32;
        let mut daemons = self.daemons.lock().unwrap_or_else(|p| p.into_inner());
        daemons.retain(|d| d.name != name);
        daemons.push(Daemon {
            name: name.to_owned(),
            child: Some(child),
            pid,
        });
        self.write_pids(&daemons)?;
        Ok(pid)
    }

    fn write_pids(&self, daemons: &[Daemon]) -> Result<()> {
        let mut s = String::new();
        for d in daemons {
            s.push_str(&format!("{} {}\n", d.name, d.pid));
        }
        write(&self.dir.join("pids"), &s)
    }

    /// Starts (or restarts) node `name`'s slurmd in a new pid namespace.
    ///
    /// pid 1 of the namespace is a small bash loop, not slurmd itself: orphans (e.g. srun's
    /// helper processes) are re-parented to pid 1, and slurmd does not reap them, so their
    /// zombies would keep a job's process group alive and drain the node ("Kill task failed").
    pub fn start_node(&self, name: &str) -> Result<()> {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "bash",
            "-c",
        ])
        .arg(
            "slurmd \"$@\" & child=$!; trap 'kill -TERM $child' TERM INT; \
                 while kill -0 $child 2>/dev/null; do wait $child; done",
        )
        .arg(format!("node-init-{name}"))
        .arg("-D")
        .arg("-f")
        .arg(self.conf())
        .arg("-N")
        .arg(name);
        self.spawn(name, cmd).map(|_| ())
    }

    /// Kills node `name` at once (SIGKILL to its pid namespace): no signal reaches its jobs, as
    /// when a machine dies. Slurm notices after `SlurmdTimeout` (20 s).
    pub fn kill_node(&self, name: &str) -> Result<()> {
        let mut daemons = self.daemons.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = daemons.iter_mut().find(|d| d.name == name) {
            let _ = killpg(Pid::from_raw(d.pid), Signal::SIGKILL);
            if let Some(mut c) = d.child.take() {
                let _ = c.wait();
            }
        }
        daemons.retain(|d| d.name != name);
        self.write_pids(&daemons)
    }

    /// Stops every daemon: slurmd first, then slurmctld, then munged. Idempotent.
    pub fn stop(&mut self) {
        let mut daemons = self.daemons.lock().unwrap_or_else(|p| p.into_inner());
        let order = |d: &Daemon| match d.name.as_str() {
            "munged" => 2,
            "slurmctld" => 1,
            _ => 0,
        };
        daemons.sort_by_key(order);
        for d in daemons.iter_mut() {
            let _ = killpg(Pid::from_raw(d.pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            if let Some(c) = d.child.as_mut() {
                while Instant::now() < deadline {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    sleep(Duration::from_millis(50));
                }
            } else {
                while Instant::now() < deadline && kill(Pid::from_raw(d.pid), None).is_ok() {
                    sleep(Duration::from_millis(50));
                }
            }
            let _ = killpg(Pid::from_raw(d.pid), Signal::SIGKILL);
            if let Some(mut c) = d.child.take() {
                let _ = c.wait();
            }
        }
        daemons.clear();
    }

    /// Re-attaches to a cluster started earlier (e.g. by `torpor-devcluster start`), for
    /// `stop`/`env`. The returned value does not own the daemons' `Child` handles, and its
    /// directory is kept on drop.
    pub fn attach(dir: &Path, user: &str) -> Result<Self> {
        let pids = io("read pids", fs::read_to_string(dir.join("pids")))?;
        let u = match User::from_name(user) {
            Ok(Some(u)) => u,
            _ => return Err(HarnessError::Setup(format!("no user {user}"))),
        };
        let mut daemons = Vec::new();
        let mut nodes = Vec::new();
        for line in pids.lines() {
            let mut it = line.split_whitespace();
            if let (Some(name), Some(Ok(pid))) = (it.next(), it.next().map(str::parse::<i32>)) {
                // Only signal processes that still belong to this cluster (pids get reused).
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let ours = String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy());
                if ours {
                    daemons.push(Daemon {
                        name: name.to_owned(),
                        child: None,
                        pid,
                    });
                }
                if name.starts_with('n') {
                    nodes.push(name.to_owned());
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            user: TestUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            },
            nodes,
            ports: Vec::new(),
            tie_to_thread: false,
            keep: true,
            daemons: Mutex::new(daemons),
        })
    }

    /// Keep the directory after drop (logs for a post-mortem).
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep = keep;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// slurm.conf (also what `SLURM_CONF` must point to).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }
    /// The site image root (before `%u` expansion): `<dir>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }
    /// The test user's working directory: scripts and job output live here.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn user(&self) -> &TestUser {
        &self.user
    }
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
    /// Environment a client needs to talk to this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".to_owned(), self.conf().display().to_string())]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.tie_to_thread {
            self.stop();
        }
        if !self.tie_to_thread {
            return; // a dev cluster outlives this handle
        }
        if self.keep || std::thread::panicking() {
            eprintln!("cluster directory kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `KEY=value` from one `scontrol -o` line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// The job id printed by `sbatch --parsable` (`1234` or `1234;cluster`).
pub fn parse_job_id(out: &Out) -> Option<JobId> {
    if !out.ok() {
        return None;
    }
    out.stdout
        .lines()
        .last()?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
        .map(JobId)
}

fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}
