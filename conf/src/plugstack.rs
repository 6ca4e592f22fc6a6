//! plugstack.conf arguments: one definition table ([`KEYS`]) from which parsing, defaults and help come.
//!
//! Arguments are strictly `key=value`. An unknown key, a repeated key, a missing `=` or a bad
//! value is a [`PlugstackError`] naming the key; the plugin then disables itself for the step.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::interval::{Interval, IntervalError};
use crate::signal::{parse_signal, SignalError};
use crate::template::{DirTemplate, TemplateError};

/// Site configuration from the plugin's plugstack.conf arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlugstackConfig {
    /// Default image root template; `None` means users must pass `--checkpoint-dir`.
    pub dir: Option<DirTemplate>,
    /// Smallest interval a user may ask for.
    pub min_interval: Interval,
    /// Complete generations kept per program.
    pub keep: u32,
    /// Every this many generations one is full; the others are incremental.
    pub full_every: u32,
    /// The preload agent.
    pub agent: PathBuf,
    /// The restore program.
    pub restorer: PathBuf,
    /// Signal number that requests an on-demand checkpoint.
    pub signal: u32,
    /// What a task does when it has images but none of them is valid.
    pub on_bad_image: OnBadImage,
}

/// Site policy for a task whose images are all unusable (corrupt, truncated, wrong owner,
/// unsupported). A task without any image (its first run) always starts fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadImage {
    /// The task fails with a message naming each generation and what is wrong with it.
    #[default]
    Fail,
    /// The program starts over from the beginning (after the same message).
    Fresh,
}

impl OnBadImage {
    /// The plugstack.conf / environment spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Fresh => "fresh",
        }
    }

    /// Parses `fail` or `fresh` (exactly).
    pub fn parse(v: &str) -> Result<Self, ValueError> {
        match v {
            "fail" => Ok(Self::Fail),
            "fresh" => Ok(Self::Fresh),
            _ => Err(ValueError::Choice {
                choices: "fail, fresh",
            }),
        }
    }
}

/// Why a single value is refused (wrapped in [`PlugstackError::BadValue`] with its key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(transparent)]
    Interval(#[from] IntervalError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("not a whole number between {min} and {max}")]
    Number { min: u32, max: u32 },
    #[error("path must be absolute")]
    RelativePath,
    #[error("must be one of: {choices}")]
    Choice { choices: &'static str },
}

/// A plugstack.conf argument the plugin cannot accept. Every variant names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlugstackError {
    #[error("plugstack.conf argument {arg:?} is not key=value (known keys: {known})", known = known_keys())]
    NotKeyValue { arg: String },
    #[error("plugstack.conf: unknown key {key:?} (known keys: {known})", known = known_keys())]
    UnknownKey { key: String },
    #[error("plugstack.conf: key {key} given twice")]
    Duplicate { key: String },
    #[error("plugstack.conf: bad value for {key}={value:?}: {source}")]
    BadValue {
        key: &'static str,
        value: String,
        #[source]
        source: ValueError,
    },
}

impl PlugstackError {
    /// The offending key, as written by the admin (for `NotKeyValue`, the whole argument).
    pub fn key(&self) -> &str {
        match self {
            Self::NotKeyValue { arg } => arg,
            Self::UnknownKey { key } | Self::Duplicate { key } => key,
            Self::BadValue { key, .. } => key,
        }
    }
}

/// One plugstack.conf key: its name, value syntax, default, help, and how to apply a value.
#[derive(Debug)]
pub struct KeyDef {
    pub name: &'static str,
    pub value: &'static str,
    /// Default as it would be written in plugstack.conf; `None` when the key has no default.
    pub default: Option<&'static str>,
    pub help: &'static str,
    apply: fn(&mut PlugstackConfig, &str) -> Result<(), ValueError>,
}

fn absolute(v: &str) -> Result<PathBuf, ValueError> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err(ValueError::RelativePath)
    }
}

/// Every plugstack.conf key. Help text, docs and validation all come from here.
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "dir",
        value: "<template>",
        default: None,
        help: "Image root, absolute, on storage every node sees. %u = user name, %U = uid, \
               %j = job id, %% = %. Without it, users must pass --checkpoint-dir.",
        apply: |c, v| {
            c.dir = Some(DirTemplate::parse(v)?);
            Ok(())
        },
    },
    KeyDef {
        name: "min_interval",
        value: "<interval>",
        default: Some("1m"),
        help: "Smallest --checkpoint interval users may ask for (same formats as --checkpoint).",
        apply: |c, v| {
            c.min_interval = Interval::parse(v)?;
            Ok(())
        },
    },
    KeyDef {
        name: "keep",
        value: "<n>",
        default: Some("2"),
        help: "Complete checkpoint generations kept per program (1-100).",
        apply: |c, v| {
            let err = ValueError::Number { min: 1, max: 100 };
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err);
            }
            match v.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => {
                    c.keep = n;
                    Ok(())
                }
                _ => Err(err),
            }
        },
    },
    KeyDef {
        name: "full_every",
        value: "<n>",
        default: Some("8"),
        help: "Every n-th checkpoint generation of a program is full; the ones between hold \
               only the pages written since the previous generation (1-16; 1: always full).",
        apply: |c, v| {
            let err = ValueError::Number { min: 1, max: 16 };
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err);
            }
            match v.parse::<u32>() {
                Ok(n) if (1..=16).contains(&n) => {
                    c.full_every = n;
                    Ok(())
                }
                _ => Err(err),
            }
        },
    },
    KeyDef {
        name: "agent",
        value: "<path>",
        default: Some("/usr/lib/torpor/libtorpor_agent.so"),
        help: "Absolute path of the preload agent added to LD_PRELOAD of checkpointed tasks.",
        apply: |c, v| {
            c.agent = absolute(v)?;
            Ok(())
        },
    },
    KeyDef {
        name: "restorer",
        value: "<path>",
        default: Some("/usr/lib/torpor/torpor-restore"),
        help: "Absolute path of the restore program the agent runs when an image exists.",
        apply: |c, v| {
            c.restorer = absolute(v)?;
            Ok(())
        },
    },
    KeyDef {
        name: "signal",
        value: "<signal>",
        default: Some("RTMIN+4"),
        help: "Signal that asks a job for a checkpoint now (USR1, USR2, RTMIN+N, RTMAX-N or a \
               number); `torpor checkpoint JOB` sends it.",
        apply: |c, v| {
            c.signal = parse_signal(v)?;
            Ok(())
        },
    },
    KeyDef {
        name: "on_bad_image",
        value: "fail|fresh",
        default: Some("fail"),
        help: "When a task has checkpoint images but none is valid (corrupt, truncated, not the \
               user's): fail the task with a message naming what is wrong, or start the \
               program fresh. A task without any image always starts fresh.",
        apply: |c, v| {
            c.on_bad_image = OnBadImage::parse(v)?;
            Ok(())
        },
    },
];

fn known_keys() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// Renders the key table as text (for docs and `--help`-style listings).
pub fn keys_help() -> String {
    let mut out = String::new();
    for k in KEYS {
        let default = k.default.unwrap_or("(none)");
        let _ = writeln!(
            out,
            "{}={}  default: {}\n    {}",
            k.name, k.value, default, k.help
        );
    }
    out
}

impl Default for PlugstackConfig {
    /// The configuration with every key at its default (what an empty argument list gives).
    fn default() -> Self {
        Self {
            dir: None,
            min_interval: Interval::ONE_MINUTE,
            keep: 2,
            full_every: 8,
            agent: PathBuf::from("/usr/lib/torpor/libtorpor_agent.so"),
            restorer: PathBuf::from("/usr/lib/torpor/torpor-restore"),
            signal: crate::signal::SIGRTMIN + 4,
            on_bad_image: OnBadImage::Fail,
        }
    }
}

impl PlugstackConfig {
    /// Parses the plugin's plugstack.conf arguments, strictly `key=value`.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Self, PlugstackError> {
        let mut cfg = Self::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            let Some((key, value)) = arg.split_once('=') else {
                return Err(PlugstackError::NotKeyValue {
                    arg: arg.to_owned(),
                });
            };
            let Some(def) = KEYS.iter().find(|k| k.name == key) else {
                return Err(PlugstackError::UnknownKey {
                    key: key.to_owned(),
                });
            };
            if seen.contains(&def.name) {
                return Err(PlugstackError::Duplicate {
                    key: key.to_owned(),
                });
            }
            seen.push(def.name);
            (def.apply)(&mut cfg, value).map_err(|source| PlugstackError::BadValue {
                key: def.name,
                value: value.to_owned(),
                source,
            })?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(args: &[&str]) -> PlugstackError {
        match PlugstackConfig::parse(args) {
            Ok(c) => panic!("{args:?} should be refused, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_match_the_table() {
        let from_table: Vec<String> = KEYS
            .iter()
            .filter_map(|k| k.default.map(|d| format!("{}={d}", k.name)))
            .collect();
        assert_eq!(
            PlugstackConfig::parse(&from_table).expect("defaults parse"),
            PlugstackConfig::default()
        );
        assert_eq!(
            PlugstackConfig::parse::<&str>(&[]).expect("empty"),
            PlugstackConfig::default()
        );
    }

    #[test]
    fn every_key_parses() {
        let c = PlugstackConfig::parse(&[
            "dir=/scratch/torpor/%u",
            "min_interval=30s",
            "keep=3",
            "agent=/opt/torpor/lib/libtorpor_agent.so",
            "restorer=/opt/torpor/bin/torpor-restore",
            "signal=USR2",
            "on_bad_image=fresh",
        ])
        .expect("valid");
        assert_eq!(c.on_bad_image, OnBadImage::Fresh);
        assert_eq!(
            c.dir.as_ref().map(|d| d.as_str()),
            Some("/scratch/torpor/%u")
        );
        assert_eq!(c.min_interval.as_secs(), 30);
        assert_eq!(c.keep, 3);
        assert_eq!(c.agent, PathBuf::from("/opt/torpor/lib/libtorpor_agent.so"));
        assert_eq!(c.restorer, PathBuf::from("/opt/torpor/bin/torpor-restore"));
        assert_eq!(c.signal, 12);
    }

    #[test]
    fn help_lists_every_key() {
        let help = keys_help();
        for k in KEYS {
            assert!(help.contains(&format!("{}=", k.name)), "{}", k.name);
        }
    }

    #[test]
    fn admin_doc_lists_every_key() {
        let doc = include_str!("../../docs/admin-plugstack.md");
        for k in KEYS {
            assert!(
                doc.contains(&format!("`{}=", k.name)),
                "docs miss {}",
                k.name
            );
        }
    }

    // One case per malformed input; each error names the key.
    #[test]
    fn rejects_unknown_key() {
        let e = bad(&["dir=/x", "frobnicate=1"]);
        assert_eq!(
            e,
            PlugstackError::UnknownKey {
                key: "frobnicate".into()
            }
        );
        assert!(e.to_string().contains("frobnicate"));
    }
    #[test]
    fn rejects_bare_word() {
        let e = bad(&["verbose"]);
        assert_eq!(
            e,
            PlugstackError::NotKeyValue {
                arg: "verbose".into()
            }
        );
        assert!(e.to_string().contains("verbose"));
    }
    #[test]
    fn rejects_key_case_variant() {
        assert!(matches!(
            bad(&["DIR=/x"]),
            PlugstackError::UnknownKey { .. }
        ));
    }
    #[test]
    fn rejects_empty_key() {
        assert!(matches!(bad(&["=/x"]), PlugstackError::UnknownKey { .. }));
    }
    #[test]
    fn rejects_duplicate_key() {
        assert_eq!(
            bad(&["keep=2", "keep=3"]),
            PlugstackError::Duplicate { key: "keep".into() }
        );
    }
    #[test]
    fn rejects_relative_dir() {
        let e = bad(&["dir=scratch/%u"]);
        assert_eq!(e.key(), "dir");
        assert!(e.to_string().contains("dir="));
    }
    #[test]
    fn rejects_empty_dir() {
        assert_eq!(bad(&["dir="]).key(), "dir");
    }
    #[test]
    fn rejects_dir_unknown_escape() {
        assert_eq!(bad(&["dir=/scratch/%q"]).key(), "dir");
    }
    #[test]
    fn rejects_bad_min_interval() {
        let e = bad(&["min_interval=banana"]);
        assert_eq!(e.key(), "min_interval");
        assert!(e.to_string().contains("min_interval=\"banana\""));
    }
    #[test]
    fn rejects_zero_min_interval() {
        assert_eq!(bad(&["min_interval=0"]).key(), "min_interval");
    }
    #[test]
    fn rejects_zero_keep() {
        assert_eq!(bad(&["keep=0"]).key(), "keep");
    }
    #[test]
    fn rejects_negative_keep() {
        assert_eq!(bad(&["keep=-1"]).key(), "keep");
    }
    #[test]
    fn rejects_huge_keep() {
        assert_eq!(bad(&["keep=1000"]).key(), "keep");
    }
    #[test]
    fn rejects_word_keep() {
        assert_eq!(bad(&["keep=two"]).key(), "keep");
    }
    #[test]
    fn rejects_relative_agent() {
        assert_eq!(bad(&["agent=libtorpor_agent.so"]).key(), "agent");
    }
    #[test]
    fn rejects_empty_restorer() {
        assert_eq!(bad(&["restorer="]).key(), "restorer");
    }
    #[test]
    fn rejects_bad_on_bad_image() {
        for v in ["", "Fail", "restart", "fresh "] {
            let arg = format!("on_bad_image={v}");
            let e = bad(&[arg.as_str()]);
            assert_eq!(e.key(), "on_bad_image");
            assert!(e.to_string().contains("fail, fresh"), "{e}");
        }
    }

    #[test]
    fn rejects_bad_signal() {
        assert_eq!(bad(&["signal=KILL"]).key(), "signal");
    }
}
