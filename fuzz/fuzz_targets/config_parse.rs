//! Fuzz target: everything users and admins type: intervals (`--checkpoint=`), the
//! `--checkpoint-dir` template, plugstack.conf arguments, signal names, the
//! `on_bad_image` policy. Any input must give a value or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torpor_conf::{DirTemplate, Interval, OnBadImage, PlugstackConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(i) = Interval::parse(s) {
        let _ = i.as_secs();
    }
    if let Ok(t) = DirTemplate::parse(s) {
        let _ = t.expand("user", 1000, 42);
    }
    let _ = OnBadImage::parse(s);
    let _ = torpor_conf::UserOptions::resolve(Some(s), None, &PlugstackConfig::default());
    let _ = torpor_conf::signal::parse_signal(s);
    let args: Vec<&str> = s.split_whitespace().collect();
    if let Err(e) = PlugstackConfig::parse(&args) {
        let _ = (e.to_string(), e.key().len());
    }
});
