//! Where a job's images are and which signal asks for a checkpoint: the site's plugstack
//! configuration (found through Slurm, `--config` or `TORPOR_PLUGSTACK`) or `--root`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use torpor_conf::plugstack::PlugstackConfig;
use torpor_conf::template::DirTemplate;
use torpor_sched::{Job, Scheduler};

/// Environment variable naming the plugstack file to read.
pub const PLUGSTACK_VAR: &str = "TORPOR_PLUGSTACK";

/// What the operator verbs need from the site configuration.
#[derive(Debug, Clone)]
pub struct Site {
    /// Image root template (`/scratch/torpor/%u`).
    pub root: DirTemplate,
    /// The request signal.
    pub signal: i32,
    /// Where the settings came from (for messages).
    pub source: String,
}

/// The plugin's arguments from a plugstack file's text: the first non-comment line whose
/// plugin path names torpor's SPANK plugin. `include` lines are returned separately.
pub fn plugin_args(text: &str) -> (Option<Vec<String>>, Vec<String>) {
    let mut includes = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["include", pat, ..] => includes.push((*pat).to_owned()),
            [_req, plugin, rest @ ..]
                if Path::new(plugin)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("torpor_spank")) =>
            {
                return (
                    Some(rest.iter().map(|s| (*s).to_owned()).collect()),
                    includes,
                );
            }
            _ => {}
        }
    }
    (None, includes)
}

/// Files an `include` pattern names (a `*` in the last component only, as plugstack uses).
fn expand_include(pat: &str, base: &Path) -> Vec<PathBuf> {
    let p = if pat.starts_with('/') {
        PathBuf::from(pat)
    } else {
        base.join(pat)
    };
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((pre, post)) = name.split_once('*') else {
        return vec![p];
    };
    let dir = p.parent().unwrap_or(Path::new("/"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len()
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The plugin's parsed configuration from a plugstack file (following includes).
pub fn read_plugstack(path: &Path) -> Result<Option<PlugstackConfig>> {
    let mut todo = vec![(path.to_path_buf(), 0)];
    while let Some((p, depth)) = todo.pop() {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let (args, includes) = plugin_args(&text);
        if let Some(args) = args {
            let cfg = PlugstackConfig::parse(&args)
                .with_context(|| format!("{}: torpor's plugin line", p.display()))?;
            return Ok(Some(cfg));
        }
        if depth < 4 {
            let base = p.parent().unwrap_or(Path::new("/")).to_path_buf();
            for inc in includes.iter().rev() {
                todo.extend(
                    expand_include(inc, &base)
                        .into_iter()
                        .rev()
                        .map(|f| (f, depth + 1)),
                );
            }
        }
    }
    Ok(None)
}

impl Site {
    /// `--root` wins for the directory; the rest comes from `--config`, `TORPOR_PLUGSTACK`
    /// or the batch system's plugstack file.
    pub fn resolve(
        sched: &dyn Scheduler,
        root: Option<&str>,
        config: Option<&Path>,
    ) -> Result<Self> {
        let found: Option<(PlugstackConfig, String)> = match config {
            Some(p) => read_plugstack(p)?.map(|c| (c, format!("{} (--config)", p.display()))),
            None => match std::env::var_os(PLUGSTACK_VAR) {
                Some(p) => read_plugstack(Path::new(&p))?
                    .map(|c| (c, format!("{} ({PLUGSTACK_VAR})", Path::new(&p).display()))),
                None => match sched.plugstack_path() {
                    Ok(Some(p)) if p.exists() => read_plugstack(&p)?
                        .map(|c| (c, format!("{} (from {})", p.display(), sched.name()))),
                    _ => None,
                },
            },
        };
        let signal = found
            .as_ref()
            .map(|(c, _)| c.signal as i32)
            .unwrap_or(torpor_conf::signal::SIGRTMIN as i32 + 4);
        if let Some(r) = root {
            let t = DirTemplate::parse(r).with_context(|| format!("--root {r}"))?;
            return Ok(Self {
                root: t,
                signal,
                source: "--root".into(),
            });
        }
        match found {
            Some((PlugstackConfig { dir: Some(d), .. }, source)) => Ok(Self {
                root: d,
                signal,
                source,
            }),
            Some((_, source)) => bail!("{source}: torpor's plugin line has no dir=; give --root"),
            None => bail!(
                "cannot find torpor's plugin configuration (give --config PLUGSTACK_FILE, set {PLUGSTACK_VAR}, or give --root TEMPLATE)"
            ),
        }
    }

    /// `<root expanded for the job's user>/<job>`.
    pub fn job_dir(&self, job: &Job) -> PathBuf {
        self.root
            .expand(&job.user, job.uid, job.id as u32)
            .join(job.id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_plugin_line() {
        let text = "# comment\noptional /usr/lib/x/other.so a=b\nrequired /usr/lib/torpor/libtorpor_spank.so dir=/scratch/torpor/%u min_interval=10m keep=2 # site\n";
        let (args, inc) = plugin_args(text);
        assert_eq!(
            args.unwrap(),
            vec!["dir=/scratch/torpor/%u", "min_interval=10m", "keep=2"]
        );
        assert!(inc.is_empty());
        let (none, inc) = plugin_args("include /etc/slurm/plugstack.conf.d/*.conf\n");
        assert!(none.is_none());
        assert_eq!(inc, vec!["/etc/slurm/plugstack.conf.d/*.conf"]);
    }

    #[test]
    fn follows_includes() {
        let d = std::env::temp_dir().join(format!("torpor-site-{}", std::process::id()));
        std::fs::create_dir_all(d.join("plugstack.conf.d")).unwrap();
        std::fs::write(
            d.join("plugstack.conf"),
            "include plugstack.conf.d/*.conf\n",
        )
        .unwrap();
        std::fs::write(d.join("plugstack.conf.d/other.conf"), "optional /x/y.so\n").unwrap();
        std::fs::write(
            d.join("plugstack.conf.d/torpor.conf"),
            "required /usr/lib/torpor/libtorpor_spank.so dir=/s/%u signal=USR1\n",
        )
        .unwrap();
        let cfg = read_plugstack(&d.join("plugstack.conf")).unwrap().unwrap();
        assert_eq!(cfg.dir.unwrap().as_str(), "/s/%u");
        assert_eq!(cfg.signal, 10);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
