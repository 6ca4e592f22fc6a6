//! The report: every figure as a table row against the machine's limit and the target
//! of issue 7 (the JSON results are assembled by `main`).

use serde_json::Value;

use crate::{GIB, MIB};

pub struct Row {
    pub what: String,
    pub value: String,
    pub limit: String,
    pub target: String,
    pub met: &'static str,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}

pub fn rows_for(case: &Value, lim: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let kind = case["kind"].as_str().unwrap_or("?");
    let mib = case["mib"].as_u64().unwrap_or(0);
    let bytes = (mib * MIB) as f64;
    let scale = bytes / (4 * GIB) as f64;
    let fsync_bw = lim["dd_fdatasync_bps"].as_f64().unwrap_or(f64::NAN);
    let memcpy = lim["memcpy_bps"].as_f64().unwrap_or(f64::NAN);
    let tag = format!("{kind} {mib} MiB");
    let f = &case["first"];
    let s = &case["second_after_1pct_dirty"];
    let pause = f["program_pause_ms"].as_f64().unwrap_or(f64::NAN);
    let base = case["baseline_max_tick_gap_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let fork = f["fork_ms"].as_f64().unwrap_or(f64::NAN);
    rows.push(Row {
        what: format!("{tag}: program pause"),
        value: format!("{pause:.1} ms (fork {fork:.1})"),
        limit: format!("ticks w/o ckpt {base:.1} ms"),
        target: "<= 100 ms".into(),
        met: verdict(pause <= 100.0),
    });
    let dur = f["durable_ms"].as_f64().unwrap_or(f64::NAN);
    let dd_ms = bytes / fsync_bw * 1e3;
    let (target, met) = match kind {
        "random" => (
            format!(">= 0.9x dd ({:.0} ms)", dd_ms / 0.9),
            verdict(dur <= dd_ms / 0.9),
        ),
        "compressible" => (
            format!("<= {:.0} ms (2.4 s/4 per 4 GiB)", 600.0 * scale),
            verdict(dur <= 600.0 * scale),
        ),
        _ => ("-".into(), "-"),
    };
    rows.push(Row {
        what: format!("{tag}: checkpoint to durable"),
        value: format!("{dur:.0} ms ({:.2} GB/s of memory)", bytes / dur / 1e6),
        limit: format!("dd fdatasync {dd_ms:.0} ms: x{:.2}", dd_ms / dur),
        target,
        met,
    });
    let img = f["image_bytes"].as_f64().unwrap_or(f64::NAN);
    let (target, met) = if kind == "zero" {
        ("<= 1% of memory".to_string(), verdict(img <= 0.01 * bytes))
    } else {
        ("-".into(), "-")
    };
    rows.push(Row {
        what: format!("{tag}: image size"),
        value: format!("{:.1} MiB", img / MIB as f64),
        limit: format!("{:.2}% of memory", img / bytes * 100.0),
        target,
        met,
    });
    let img2 = s["image_bytes"].as_f64().unwrap_or(f64::NAN);
    let dur2 = s["durable_ms"].as_f64().unwrap_or(f64::NAN);
    let ratio2 = img2 / img;
    rows.push(Row {
        what: format!(
            "{tag}: 2nd ckpt after 1% dirty ({})",
            s["kind"].as_str().unwrap_or("?")
        ),
        value: format!("{:.1} MiB, {dur2:.0} ms", img2 / MIB as f64),
        limit: format!("{:.1}% of full", ratio2 * 100.0),
        target: if kind == "zero" {
            "-".into()
        } else {
            "<= 3% of full".into()
        },
        met: if kind == "zero" {
            "-"
        } else {
            verdict(ratio2 <= 0.03)
        },
    });
    let r = case["restore_to_first_tick_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let mc_ms = bytes / memcpy * 1e3;
    rows.push(Row {
        what: format!("{tag}: restore to first tick"),
        value: format!("{r:.0} ms"),
        limit: format!("memcpy {mc_ms:.0} ms: x{:.2}", mc_ms / r),
        target: format!("<= {:.0} ms (1.4 s per 4 GiB)", 1400.0 * scale),
        met: verdict(r <= 1400.0 * scale),
    });
    rows
}

pub fn print_table(rows: &[Row]) {
    let w = |f: &dyn Fn(&Row) -> &str, h: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .max()
            .unwrap_or(0)
            .max(h.len())
    };
    let ws = [
        w(&|r| &r.what, "figure"),
        w(&|r| &r.value, "measured"),
        w(&|r| &r.limit, "vs machine limit"),
        w(&|r| &r.target, "target (issue 7)"),
    ];
    println!(
        "{:<a$}  {:<b$}  {:<c$}  {:<d$}  met",
        "figure",
        "measured",
        "vs machine limit",
        "target (issue 7)",
        a = ws[0],
        b = ws[1],
        c = ws[2],
        d = ws[3]
    );
    for r in rows {
        println!(
            "{:<a$}  {:<b$}  {:<c$}  {:<d$}  {}",
            r.what,
            r.value,
            r.limit,
            r.target,
            r.met,
            a = ws[0],
            b = ws[1],
            c = ws[2],
            d = ws[3]
        );
    }
}

/// The rows of the agent's overhead (`measure::overhead`'s result).
pub fn overhead_rows(v: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    for m in ["compute", "syscall"] {
        let x = v[m]["overhead"].as_f64().unwrap_or(f64::NAN);
        rows.push(Row {
            what: format!("agent overhead, {m} loop"),
            value: format!(
                "{:.1}% ({:.0} vs {:.0} ms)",
                x * 100.0,
                v[m]["with_agent_ms"].as_f64().unwrap_or(f64::NAN),
                v[m]["without_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            limit: "-".into(),
            target: "<= 1%".into(),
            met: verdict(x <= 0.01),
        });
    }
    rows
}
