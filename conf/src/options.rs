//! User options (`--checkpoint`, `--checkpoint-dir`): one definition table ([`OPTIONS`]) and their validation.
//!
//! Every error message names the option and the value as the user typed them, on one line.

use std::ffi::CStr;
use std::path::Path;

use crate::interval::{Interval, IntervalError};
use crate::plugstack::PlugstackConfig;
use crate::template::{DirTemplate, TemplateError};

/// One user-facing option, registered with Slurm from this table.
///
/// The strings are C strings because the SPANK plugin hands them to Slurm as they are
/// (its static `spank_options` table); [`OptionDef::name`] & co. give them as `&str`.
#[derive(Debug)]
pub struct OptionDef {
    /// Long option name without the leading `--`.
    pub name_c: &'static CStr,
    /// Shown by `--help` as `--name=<arg>`.
    pub arg_c: &'static CStr,
    /// Help text; starts with `[torpor]`.
    pub usage_c: &'static CStr,
}

impl OptionDef {
    pub fn name(&self) -> &'static str {
        self.name_c.to_str().unwrap_or_default()
    }
    pub fn arg(&self) -> &'static str {
        self.arg_c.to_str().unwrap_or_default()
    }
    pub fn usage(&self) -> &'static str {
        self.usage_c.to_str().unwrap_or_default()
    }
}

/// `--checkpoint=<interval>`.
pub const CHECKPOINT: OptionDef = OptionDef {
    name_c: c"checkpoint",
    arg_c: c"interval",
    usage_c: c"[torpor] checkpoint every program of the job every <interval> and resume it \
            after requeue, preemption or node failure (30s, 10m, 2h, 1d, MM, MM:SS, HH:MM:SS, \
            D-HH, D-HH:MM, D-HH:MM:SS)",
};

/// `--checkpoint-dir=<path>`.
pub const CHECKPOINT_DIR: OptionDef = OptionDef {
    name_c: c"checkpoint-dir",
    arg_c: c"path",
    usage_c: c"[torpor] existing absolute directory for checkpoint images, on storage every node \
            sees (%u = user, %j = job id); default set by the site",
};

/// Every user option, in registration order.
pub const OPTIONS: &[OptionDef] = &[CHECKPOINT, CHECKPOINT_DIR];

/// Why a user option is refused. Displayed as one line naming the option and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("--checkpoint={value}: {source}{hint}", hint = swallow_hint(source))]
    Interval {
        value: String,
        #[source]
        source: IntervalError,
    },
    #[error("--checkpoint={value}: below this site's minimum interval of {min}")]
    BelowMinimum { value: String, min: Interval },
    #[error("--checkpoint-dir={value}: {source}")]
    Dir {
        value: String,
        #[source]
        source: TemplateError,
    },
    #[error("--checkpoint-dir={value}: {prefix} does not exist or is not a directory")]
    DirMissing { value: String, prefix: String },
    #[error("--checkpoint={value}: no checkpoint directory: pass --checkpoint-dir=<path> (this site sets no default)")]
    NoDir { value: String },
}

fn swallow_hint(e: &IntervalError) -> &'static str {
    match e {
        IntervalError::Syntax => {
            " (a bare --checkpoint takes the next argument as its value: write --checkpoint=<interval>)"
        }
        _ => "",
    }
}

/// The user's validated request: checkpoint every `interval` into `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOptions {
    pub interval: Interval,
    pub dir: DirTemplate,
    /// Whether `dir` came from `--checkpoint-dir` (true) or the site default (false).
    pub user_dir: bool,
}

impl UserOptions {
    /// Validates raw option values against the site configuration.
    ///
    /// `Ok(None)`: the job did not ask for checkpointing (a lone `--checkpoint-dir` is still
    /// validated, so a typo is caught even before `--checkpoint` is added).
    pub fn resolve(
        checkpoint: Option<&str>,
        dir: Option<&str>,
        site: &PlugstackConfig,
    ) -> Result<Option<Self>, OptionError> {
        let user_dir = dir.map(Self::check_dir).transpose()?;
        let Some(value) = checkpoint else {
            return Ok(None);
        };
        let interval = Self::check_interval(value, site)?;
        let (dir, user_dir) = match (user_dir, &site.dir) {
            (Some(d), _) => (d, true),
            (None, Some(d)) => (d.clone(), false),
            (None, None) => {
                return Err(OptionError::NoDir {
                    value: value.to_owned(),
                })
            }
        };
        Ok(Some(Self {
            interval,
            dir,
            user_dir,
        }))
    }

    /// Checks a `--checkpoint` value on its own (syntax and site minimum), as soon as Slurm
    /// hands it over: this is what catches a bare `--checkpoint` swallowing the next argument.
    pub fn check_interval(value: &str, site: &PlugstackConfig) -> Result<Interval, OptionError> {
        let interval = Interval::parse(value).map_err(|source| OptionError::Interval {
            value: value.to_owned(),
            source,
        })?;
        if interval < site.min_interval {
            return Err(OptionError::BelowMinimum {
                value: value.to_owned(),
                min: site.min_interval,
            });
        }
        Ok(interval)
    }

    /// Checks a `--checkpoint-dir` value on its own (absolute, known expansions).
    pub fn check_dir(value: &str) -> Result<DirTemplate, OptionError> {
        DirTemplate::parse(value).map_err(|source| OptionError::Dir {
            value: value.to_owned(),
            source,
        })
    }

    /// Submit-side check, run as the submitting user: a `--checkpoint-dir` must already exist
    /// (up to its first expansion). Never call this as root on a user's path.
    pub fn check_user_dir_exists(&self) -> Result<(), OptionError> {
        if !self.user_dir {
            return Ok(());
        }
        let prefix = self.dir.fixed_prefix();
        if is_dir(prefix) {
            Ok(())
        } else {
            Err(OptionError::DirMissing {
                value: self.dir.as_str().to_owned(),
                prefix: prefix.display().to_string(),
            })
        }
    }
}

fn is_dir(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> PlugstackConfig {
        PlugstackConfig::parse(&["dir=/scratch/%u", "min_interval=1m"]).expect("valid")
    }

    fn bad(ck: Option<&str>, dir: Option<&str>) -> String {
        match UserOptions::resolve(ck, dir, &site()) {
            Ok(v) => panic!("{ck:?} {dir:?} should be refused, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn help_texts_are_prefixed() {
        for o in OPTIONS {
            assert!(o.usage().starts_with("[torpor] "), "{}", o.name());
            assert!(!o.name().is_empty() && !o.arg().is_empty());
        }
    }

    #[test]
    fn not_asked() {
        assert_eq!(UserOptions::resolve(None, None, &site()), Ok(None));
        assert_eq!(UserOptions::resolve(None, Some("/tmp"), &site()), Ok(None));
    }

    #[test]
    fn site_dir_is_default() {
        let o = UserOptions::resolve(Some("10m"), None, &site())
            .expect("valid")
            .expect("asked");
        assert_eq!(o.interval.as_secs(), 600);
        assert_eq!(o.dir.as_str(), "/scratch/%u");
        assert!(!o.user_dir);
        assert_eq!(o.check_user_dir_exists(), Ok(()));
    }

    #[test]
    fn user_dir_wins() {
        let o = UserOptions::resolve(Some("1h"), Some("/tmp/%j"), &site())
            .expect("valid")
            .expect("asked");
        assert_eq!(o.dir.as_str(), "/tmp/%j");
        assert!(o.user_dir);
        assert_eq!(o.check_user_dir_exists(), Ok(()));
    }

    // One case per malformed input; every message names the option and the value.
    #[test]
    fn refuses_banana() {
        let m = bad(Some("banana"), None);
        assert!(m.starts_with("--checkpoint=banana: not an interval"), "{m}");
    }
    #[test]
    fn refuses_negative() {
        assert_eq!(bad(Some("-5"), None), "--checkpoint=-5: negative interval");
    }
    #[test]
    fn refuses_out_of_range_field() {
        let m = bad(Some("0:99:00"), None);
        assert!(
            m.starts_with("--checkpoint=0:99:00: minutes field 99"),
            "{m}"
        );
    }
    #[test]
    fn refuses_empty() {
        assert_eq!(bad(Some(""), None), "--checkpoint=: empty interval");
    }
    #[test]
    fn refuses_swallowed_argument() {
        let m = bad(Some("job.sh"), None);
        assert!(m.starts_with("--checkpoint=job.sh: "), "{m}");
        assert!(m.contains("write --checkpoint=<interval>"), "{m}");
    }
    #[test]
    fn refuses_below_minimum() {
        assert_eq!(
            bad(Some("30s"), None),
            "--checkpoint=30s: below this site's minimum interval of 1m"
        );
    }
    #[test]
    fn refuses_relative_dir() {
        assert_eq!(
            bad(Some("10m"), Some("ckpt")),
            "--checkpoint-dir=ckpt: path must be absolute"
        );
    }
    #[test]
    fn refuses_relative_dir_without_checkpoint() {
        assert_eq!(
            bad(None, Some("ckpt")),
            "--checkpoint-dir=ckpt: path must be absolute"
        );
    }
    #[test]
    fn refuses_missing_dir() {
        let o = UserOptions::resolve(Some("10m"), Some("/nonexistent/torpor/%u"), &site())
            .expect("syntax ok")
            .expect("asked");
        assert_eq!(
            o.check_user_dir_exists().map_err(|e| e.to_string()),
            Err("--checkpoint-dir=/nonexistent/torpor/%u: /nonexistent/torpor does not exist or is not a directory".to_owned())
        );
    }
    #[test]
    fn refuses_no_dir_anywhere() {
        let site = PlugstackConfig::default();
        let e = UserOptions::resolve(Some("10m"), None, &site).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err("--checkpoint=10m: no checkpoint directory: pass --checkpoint-dir=<path> (this site sets no default)".to_owned())
        );
    }
    #[test]
    fn messages_are_one_line() {
        for m in [bad(Some("banana"), None), bad(Some("x y"), None)] {
            assert!(!m.contains('\n'), "{m}");
        }
    }
}
