//! Image-root templates: absolute paths with `%u` (user name), `%U` (uid), `%j` (job id), `%%`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a path template is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("empty path")]
    Empty,
    #[error("path must be absolute")]
    Relative,
    #[error("unknown expansion %{0} (use %u, %U, %j or %%)")]
    UnknownEscape(char),
    #[error("path ends with a lone %")]
    TrailingPercent,
}

/// A validated image-root template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirTemplate(String);

impl DirTemplate {
    /// Checks that `s` is absolute and uses only known expansions.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        if s.is_empty() {
            return Err(TemplateError::Empty);
        }
        if !s.starts_with('/') {
            return Err(TemplateError::Relative);
        }
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                match chars.next() {
                    Some('u' | 'U' | 'j' | '%') => {}
                    Some(other) => return Err(TemplateError::UnknownEscape(other)),
                    None => return Err(TemplateError::TrailingPercent),
                }
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Expands `%u`, `%U`, `%j` and `%%`.
    pub fn expand(&self, user: &str, uid: u32, job_id: u32) -> PathBuf {
        let mut out = String::with_capacity(self.0.len() + 16);
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('u') => out.push_str(user),
                Some('U') => out.push_str(&uid.to_string()),
                Some('j') => out.push_str(&job_id.to_string()),
                Some(other) => out.push(other),
                None => {}
            }
        }
        PathBuf::from(out)
    }

    /// The longest leading directory that contains no expansion: what must already exist at
    /// submit time (`/scratch/%u/ckpt` -> `/scratch`, `/scratch/ckpt` -> `/scratch/ckpt`).
    pub fn fixed_prefix(&self) -> &Path {
        match self.0.find('%') {
            None => Path::new(&self.0),
            Some(i) => {
                let head = &self.0[..i];
                match head.rfind('/') {
                    Some(0) | None => Path::new("/"),
                    Some(j) => Path::new(&head[..j]),
                }
            }
        }
    }
}

impl fmt::Display for DirTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_user_uid_job() {
        let t = DirTemplate::parse("/scratch/%u/%U/%j/100%%").expect("valid");
        assert_eq!(
            t.expand("alice", 1000, 42),
            PathBuf::from("/scratch/alice/1000/42/100%")
        );
    }
    #[test]
    fn plain_path_is_kept() {
        let t = DirTemplate::parse("/scratch/ckpt").expect("valid");
        assert_eq!(t.expand("a", 1, 2), PathBuf::from("/scratch/ckpt"));
        assert_eq!(t.fixed_prefix(), Path::new("/scratch/ckpt"));
    }
    #[test]
    fn fixed_prefix_stops_before_expansion() {
        let t = DirTemplate::parse("/scratch/torpor/%u/x").expect("valid");
        assert_eq!(t.fixed_prefix(), Path::new("/scratch/torpor"));
        let t = DirTemplate::parse("/%u").expect("valid");
        assert_eq!(t.fixed_prefix(), Path::new("/"));
        let t = DirTemplate::parse("/scratch/ck-%j").expect("valid");
        assert_eq!(t.fixed_prefix(), Path::new("/scratch"));
    }
    #[test]
    fn rejects_empty() {
        assert_eq!(DirTemplate::parse(""), Err(TemplateError::Empty));
    }
    #[test]
    fn rejects_relative() {
        assert_eq!(DirTemplate::parse("ckpt/%u"), Err(TemplateError::Relative));
    }
    #[test]
    fn rejects_dot_relative() {
        assert_eq!(DirTemplate::parse("./ckpt"), Err(TemplateError::Relative));
    }
    #[test]
    fn rejects_unknown_escape() {
        assert_eq!(
            DirTemplate::parse("/scratch/%x"),
            Err(TemplateError::UnknownEscape('x'))
        );
    }
    #[test]
    fn rejects_trailing_percent() {
        assert_eq!(
            DirTemplate::parse("/scratch/%"),
            Err(TemplateError::TrailingPercent)
        );
    }
}
