//! Who runs a case: the harness's own user, or the unprivileged `torpor-test`
//! user (created when the harness is root and it does not exist yet).

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The unprivileged user the nonroot variant runs as.
pub const TEST_USER: &str = "torpor-test";
/// A second unprivileged user, for the security tests (user B against torpor-test's A).
pub const TEST_USER2: &str = "torpor-test2";

/// Whom commands run as.
#[derive(Debug, Clone)]
pub enum RunAs {
    /// The harness's own user.
    Me,
    /// Another user, switched to with setpriv (the harness is root).
    User {
        /// Login name.
        name: String,
        /// Numeric uid.
        uid: u32,
        /// Numeric primary gid.
        gid: u32,
    },
}

/// The harness's effective uid, from /proc/self/status.
pub fn euid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no Uid line in /proc/self/status")
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id")
        .args([flag, user])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl RunAs {
    /// The unprivileged runner: ourselves if we are not root, else
    /// `torpor-test`, created with useradd if needed.
    pub fn unprivileged() -> Result<RunAs> {
        if euid()? != 0 {
            return Ok(RunAs::Me);
        }
        RunAs::named(TEST_USER)
    }

    /// The second unprivileged user (`torpor-test2`), created if needed; only when the
    /// harness is root (`None` otherwise).
    pub fn second() -> Result<Option<RunAs>> {
        if euid()? != 0 {
            return Ok(None);
        }
        RunAs::named(TEST_USER2).map(Some)
    }

    fn named(user: &str) -> Result<RunAs> {
        for attempt in 0..20 {
            if let (Some(uid), Some(gid)) = (id_of(user, "-u"), id_of(user, "-g")) {
                return Ok(RunAs::User {
                    name: user.to_string(),
                    uid,
                    gid,
                });
            }
            // Parallel tests may race here; useradd fails on its lock then.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(100 * (attempt % 5 + 1)));
        }
        bail!("cannot find or create the user {user} (useradd failed)")
    }

    /// A command running `program args` as this user.
    pub fn command(&self, program: impl AsRef<OsStr>, args: &[OsString]) -> Command {
        match self {
            RunAs::Me => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            RunAs::User { uid, gid, .. } => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program)
                    .args(args);
                c
            }
        }
    }

    /// Uid and gid to chown files to, if this is another user.
    pub fn ids(&self) -> Option<(u32, u32)> {
        match self {
            RunAs::Me => None,
            RunAs::User { uid, gid, .. } => Some((*uid, *gid)),
        }
    }

    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            RunAs::Me => format!("the harness's user (uid {})", euid().unwrap_or(u32::MAX)),
            RunAs::User { name, uid, .. } => format!("{name} (uid {uid})"),
        }
    }

    /// Whether this user can create a user + pid namespace (what restoring
    /// original pids needs when unprivileged).
    pub fn userns_available(&self) -> bool {
        let args: Vec<OsString> = ["--user", "--pid", "--fork", "--map-root-user", "true"]
            .iter()
            .map(OsString::from)
            .collect();
        self.command("unshare", &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether this user can execute `path` (every directory above it must
    /// be searchable).
    pub fn can_execute(&self, path: &Path) -> bool {
        self.command("test", &["-x".into(), path.into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}
