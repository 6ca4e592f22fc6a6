//! A per-test scratch directory under the system temp dir: the programs'
//! copies (bin/), the image directory (images/), the program's working
//! directory (work/) and one for the reference run (ref/). Owned by the
//! unprivileged user when a case runs as one; removed when the test passes.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cases::Program;
use crate::contract::{Contract, AGENT_LIB, RESTORE_BIN, TORPOR_BIN};
use crate::user::RunAs;

/// The scratch directories of one test.
#[derive(Debug)]
pub struct Workspace {
    /// The root of it all.
    pub root: PathBuf,
    /// Copies of the programs.
    pub bin: PathBuf,
    /// `torpor run --dir` / `torpor restore` directory.
    pub images: PathBuf,
    /// The program's working directory.
    pub work: PathBuf,
    /// The reference run's working directory.
    pub reference: PathBuf,
    keep: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Workspace {
    /// Creates `$TMPDIR/torpor-suite.<label>.<pid>.<n>` with its subdirs,
    /// handed to `owner` if that is another user.
    pub fn new(label: &str, owner: &RunAs) -> Result<Workspace> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!(
            "torpor-suite.{label}.{}.{}.{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let ws = Workspace {
            bin: root.join("bin"),
            images: root.join("images"),
            work: root.join("work"),
            reference: root.join("ref"),
            root,
            keep: false,
        };
        for d in [&ws.root, &ws.bin, &ws.images, &ws.work, &ws.reference] {
            std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
            if let Some((uid, gid)) = owner.ids() {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))
                    .with_context(|| format!("chown {}", d.display()))?;
            }
        }
        Ok(ws)
    }

    /// Keeps the directory for a post-mortem (called on failure).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    fn copy_in(&self, src: &Path, mode: u32) -> Result<PathBuf> {
        let name = src
            .file_name()
            .with_context(|| format!("no file name in {}", src.display()))?;
        let dst = self.bin.join(name);
        std::fs::copy(src, &dst)
            .with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        Ok(dst)
    }

    /// Copies the program into bin/ (so any user can run it) and returns the
    /// argv to start it with `ticks` ticks.
    pub fn install(&self, program: &Program, ticks: u32) -> Result<Vec<OsString>> {
        let mut argv: Vec<OsString> = match program {
            Program::Native(name) => {
                let src = Path::new(env!("TORPOR_SUITE_PROGS_DIR")).join(name);
                vec![self.copy_in(&src, 0o755)?.into()]
            }
            Program::Script {
                interpreter,
                script,
                ..
            } => {
                let src = Path::new(env!("TORPOR_SUITE_SCRIPTS_DIR")).join(script);
                // A companion file the script reads next to itself (`NAME.mk`).
                let mk = src.with_extension("mk");
                if mk.exists() && mk != src {
                    self.copy_in(&mk, 0o644)?;
                }
                vec![
                    OsString::from(interpreter),
                    self.copy_in(&src, 0o644)?.into(),
                ]
            }
            Program::Exe(path) => vec![self.copy_in(path, 0o755)?.into()],
        };
        argv.push(ticks.to_string().into());
        if let Program::Script { args, .. } = program {
            argv.extend(args.iter().map(OsString::from));
        }
        Ok(argv)
    }

    /// Copies the fd-closing exec helper into bin/ and returns its path.
    pub fn install_fdclean(&self) -> Result<PathBuf> {
        self.copy_in(
            &Path::new(env!("TORPOR_SUITE_PROGS_DIR")).join("fdclean"),
            0o755,
        )
    }

    /// The engine binaries as `runner` can reach them: in place when it can
    /// execute them, else copied into engine/ here (`torpor` is expected to
    /// find the agent and the restorer next to itself).
    pub fn engine_for(&self, contract: &Contract, runner: &RunAs) -> Result<Contract> {
        if runner.can_execute(&contract.torpor) {
            return Ok(contract.clone());
        }
        let dir = self.root.join("engine");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        for f in [TORPOR_BIN, AGENT_LIB, RESTORE_BIN] {
            let dst = dir.join(f);
            std::fs::copy(contract.dir.join(f), &dst)
                .with_context(|| format!("copy {f} for {}", runner.describe()))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(contract.in_dir(&dir))
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            println!("[harness] kept {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
