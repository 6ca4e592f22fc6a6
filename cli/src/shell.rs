//! `torpor completions` and `torpor man`: shell completion scripts and roff manual pages,
//! generated from the same clap definition the command parses with (never out of date).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "torpor", &mut out);
    out.flush()?;
    Ok(0)
}

/// Writes `torpor.1` and one `torpor-VERB.1` per subcommand into `dir`; returns the files.
pub fn write_man_pages(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let mut todo = vec![cmd];
    while let Some(c) = todo.pop() {
        todo.extend(c.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(c)
            .manual("torpor manual")
            .source(format!("torpor {}", env!("CARGO_PKG_VERSION")));
        let path = dir.join(man.get_filename());
        let mut buf = Vec::new();
        man.render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}

/// `torpor man [DIR]`: writes the pages and lists them.
pub fn man(dir: &Path) -> Result<i32> {
    for p in write_man_pages(dir)? {
        println!("{}", p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_verb() {
        let dir = std::env::temp_dir().join(format!("torpor-man-{}", std::process::id()));
        let files = write_man_pages(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for sub in Cli::command().get_subcommands() {
            let want = format!("torpor-{}.1", sub.get_name());
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(names.contains(&"torpor.1".to_string()));
        let top = std::fs::read_to_string(dir.join("torpor.1")).unwrap();
        assert!(
            top.starts_with(".ie") || top.contains(".TH torpor 1"),
            "{top}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_name_the_verbs() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "torpor", &mut buf);
            let s = String::from_utf8(buf).unwrap();
            for sub in ["checkpoint", "inspect", "gc", "completions"] {
                assert!(s.contains(sub), "{shell:?} lacks {sub}");
            }
        }
    }
}
