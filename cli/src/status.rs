//! `torpor status [JOBID...]`: per job, every program (step/task/program), its
//! generations (number, time, size, attempt), where it runs and its last error.
#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{json, Value};
use torpor_sched::Job;

use crate::images;
use crate::ops::Ctx;
use crate::table::{elapsed, human_bytes, Table};

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One job's status as JSON.
pub fn job_json(ctx: &Ctx, job: &Job) -> Value {
    let dir = ctx.site.job_dir(job);
    let markers = images::markers(&dir);
    let current: Vec<&images::TaskMarker> = markers
        .iter()
        .filter(|m| m.attempt == job.restarts)
        .collect();
    json!({
        "job": job.id,
        "name": job.name,
        "user": job.user,
        "state": job.state,
        "nodes": job.nodes,
        "restarts": job.restarts,
        "dir": dir,
        "checkpointing": !current.is_empty(),
        "tasks": markers.iter().map(|m| m.raw.clone()).collect::<Vec<_>>(),
        "programs": images::programs(&dir).iter().map(|p| {
            let mut v = p.to_json();
            let running = job.is_running() && p.started_in.contains(&job.restarts);
            if let Some(o) = v.as_object_mut() {
                o.insert("running".into(), running.into());
                if running {
                    let st = p.status.clone().unwrap_or(Value::Null);
                    let marker = current.iter().find(|m| m.step == p.step && m.task == p.task);
                    o.insert("node".into(), st["node"].as_str().filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .or_else(|| marker.map(|m| m.node.clone())).into());
                    o.insert("pid".into(), st["pid"].clone());
                }
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// Runs the verb; returns the exit code.
pub fn status(ctx: &Ctx, ids: &[u64], json: bool) -> Result<i32> {
    let explicit = !ids.is_empty();
    let mut code = 0;
    let mut out = Vec::new();
    let listed: Vec<Result<Option<Job>, torpor_sched::SchedError>> = if explicit {
        ids.iter().map(|&id| ctx.sched.job(id)).collect()
    } else {
        ctx.sched.jobs()?.into_iter().map(|j| Ok(Some(j))).collect()
    };
    for (i, r) in listed.into_iter().enumerate() {
        let id = ids.get(i).copied().unwrap_or_default();
        let job = match r {
            Ok(Some(j)) => j,
            Ok(None) => {
                eprintln!("torpor: job {id} is not known to {}", ctx.sched.name());
                code = 1;
                continue;
            }
            Err(e) => {
                eprintln!("torpor: job {id}: {e}");
                code = 1;
                continue;
            }
        };
        if !explicit && !ctx.site.job_dir(&job).exists() {
            continue; // never checkpointed
        }
        out.push(job_json(ctx, &job));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(code);
    }
    let mut t = Table::new(&[
        "JOBID", "STATE", "STEP", "TASK", "PROGRAM", "GENS", "LATEST", "AGE", "SIZE", "ATTEMPT",
        "NODE", "PID", "LAST",
    ]);
    let now = now_unix();
    for j in &out {
        let id = j["job"].to_string();
        let state = j["state"].as_str().unwrap_or_default().to_owned();
        let progs = j["programs"].as_array().cloned().unwrap_or_default();
        if progs.is_empty() {
            let what = if j["checkpointing"].as_bool() == Some(true) {
                "(no program checkpointed yet)"
            } else {
                "(no checkpointing)"
            };
            let mut row = vec![id.clone(), state.clone()];
            row.extend(std::iter::repeat_n("-".to_owned(), 10));
            row.push(what.into());
            t.row(row);
        }
        for p in progs {
            let gens = p["generations"].as_array().cloned().unwrap_or_default();
            let newest = gens.last();
            let dash = || "-".to_owned();
            let last = match (&p["status"]["ok"], &p["last_error"]) {
                (_, Value::String(e)) => format!("failed: {e}"),
                (Value::Bool(true), _) if p["status"]["restored"] == true => "restored".into(),
                (Value::Bool(true), _) => "ok".into(),
                _ => dash(),
            };
            t.row(vec![
                id.clone(),
                state.clone(),
                p["step"].as_str().unwrap_or_default().into(),
                p["task"].as_str().unwrap_or_default().into(),
                p["program"].as_str().unwrap_or_default().into(),
                gens.len().to_string(),
                newest
                    .map(|g| g["generation"].to_string())
                    .unwrap_or_else(dash),
                newest
                    .and_then(|g| g["time_unix"].as_f64())
                    .map(|t| elapsed((now - t).max(0.0) as u64))
                    .unwrap_or_else(dash),
                newest
                    .and_then(|g| g["bytes"].as_u64())
                    .map(human_bytes)
                    .unwrap_or_else(dash),
                newest
                    .map(|g| g["attempt"].to_string())
                    .unwrap_or_else(dash),
                p["node"].as_str().map(str::to_owned).unwrap_or_else(dash),
                p["pid"]
                    .as_i64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(dash),
                last,
            ]);
        }
    }
    t.print();
    Ok(code)
}
