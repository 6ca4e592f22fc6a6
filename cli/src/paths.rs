//! Where the agent and the restorer live: next to the `torpor` binary unless configured.
#![forbid(unsafe_code)]

use std::path::PathBuf;

fn beside_me(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

fn from_env_or(var: &str, name: &str, fallbacks: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = beside_me(name) {
        return Ok(p);
    }
    for f in fallbacks {
        let p = PathBuf::from(f);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!("cannot find {name} (set {var}, or install it next to the torpor binary)")
}

/// The preload agent.
pub fn agent() -> anyhow::Result<PathBuf> {
    from_env_or(
        "TORPOR_AGENT",
        "libtorpor_agent.so",
        &["/usr/lib/torpor/libtorpor_agent.so"],
    )
}

/// The restore program.
pub fn restorer() -> anyhow::Result<PathBuf> {
    from_env_or(
        "TORPOR_RESTORER",
        "torpor-restore",
        &[
            "/usr/lib/torpor/torpor-restore",
            "/usr/libexec/torpor/torpor-restore",
        ],
    )
}
