//! Human output in the style of Slurm's tools (upper-case headers, left-aligned columns
//! separated by spaces) and a progress line on stderr while waiting, only when stdout is a
//! terminal.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Rows printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, the last column unpadded.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$} ", w = width[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `1.5K`, `12.0M`, `3.2G` (powers of 1024), as `ls -h` and Slurm's memory fields.
pub fn human_bytes(b: u64) -> String {
    let units = ["K", "M", "G", "T", "P"];
    if b < 1024 {
        return format!("{b}");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", units[u])
}

/// Elapsed seconds as Slurm prints times: `M:SS`, `H:MM:SS`, `D-HH:MM:SS`.
pub fn elapsed(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// A one-line progress indicator on stderr; silent unless stdout is a terminal.
#[derive(Debug)]
pub struct Progress {
    on: bool,
    start: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self {
            on: enabled && std::io::stdout().is_terminal(),
            start: Instant::now(),
            shown: false,
        }
    }

    /// `[#####.....] 3/5 what (12 s)`.
    pub fn update(&mut self, done: usize, total: usize, what: &str) {
        if !self.on {
            return;
        }
        let bar = 20;
        let filled = (done * bar).checked_div(total).unwrap_or(bar).min(bar);
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r[{}{}] {done}/{total} {what} ({} s)\x1b[K",
            "#".repeat(filled),
            ".".repeat(bar - filled),
            self.start.elapsed().as_secs()
        );
        let _ = e.flush();
        self.shown = true;
    }

    pub fn finish(&mut self) {
        if self.shown {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["JOBID", "STATE", "REASON"]);
        t.row(vec!["7".into(), "RUNNING".into(), "x".into()]);
        t.row(vec!["1234".into(), "PD".into(), "long reason here".into()]);
        assert_eq!(
            t.render(),
            "JOBID STATE   REASON\n7     RUNNING x\n1234  PD      long reason here\n"
        );
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(512), "512");
        assert_eq!(human_bytes(2 * 1024 * 1024 + 1024 * 100), "2.1M");
        assert_eq!(elapsed(65), "1:05");
        assert_eq!(elapsed(3 * 3600 + 5), "3:00:05");
        assert_eq!(elapsed(2 * 86_400 + 61), "2-00:01:01");
    }
}
