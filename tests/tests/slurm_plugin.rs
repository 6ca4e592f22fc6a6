//! Issue 2 against a real Slurm cluster: options in --help, bad values refused at submit time,
//! the task environment of checkpointed jobs, untouched jobs, and a refused plugstack.conf.
//!
//! One cluster for the whole file; each case is reported by name (see `torpor_tests::cases`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use torpor_tests::cases::{self, Case};
use torpor_tests::cluster::{parse_job_id, release_dir, start_or_skip};
use torpor_tests::{Cluster, ClusterOptions, JobId, Out};

const BATCH_STEP: &str = "4294967291";
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Batch script printing its environment, then an srun step's, as `== name` sections.
const ENV_SCRIPT: &str = "#!/bin/bash
echo '== batch'
/usr/bin/env
echo '== step'
/usr/bin/srun /usr/bin/env
echo '== end'
";

fn agent() -> String {
    release_dir()
        .join("libtorpor_agent.so")
        .display()
        .to_string()
}

/// A harmless library for "existing LD_PRELOAD entries are kept".
fn some_lib() -> &'static str {
    [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("/lib/x86_64-linux-gnu/libm.so.6")
}

/// `== name` sections of an output, each as NAME=VALUE pairs.
fn sections(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = Some(name.to_owned());
            all.entry(name.to_owned()).or_insert_with(BTreeMap::new);
        } else if let (Some(cur), Some((k, v))) = (&current, line.split_once('=')) {
            if let Some(map) = all.get_mut(cur) {
                map.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    all
}

fn run_job(c: &Cluster, args: &[&str], script: &str, env: &[(&str, &str)]) -> (JobId, String) {
    let out = c.sbatch_env(args, script, env).expect("sbatch runs");
    let job = parse_job_id(&out).unwrap_or_else(|| panic!("sbatch {args:?} refused: {out:?}"));
    let state = c.wait_finished(job, JOB_TIMEOUT).expect("job ends");
    let output = c.read_output(job).unwrap_or_default();
    assert_eq!(state, "COMPLETED", "job {job} output:\n{output}");
    (job, output)
}

fn get<'a>(env: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    env.get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{key} missing from {env:#?}"))
}

/// The variables the plugin must set for a checkpointed task.
fn assert_checkpointed(
    c: &Cluster,
    env: &BTreeMap<String, String>,
    job: JobId,
    step: &str,
    task: &str,
    secs: &str,
) {
    let preload = get(env, "LD_PRELOAD");
    assert!(
        preload.split([':', ' ']).any(|e| e == agent()),
        "agent missing from LD_PRELOAD={preload}"
    );
    assert_eq!(
        preload.split([':', ' ']).filter(|e| *e == agent()).count(),
        1,
        "agent twice in LD_PRELOAD={preload}"
    );
    assert_eq!(get(env, "TORPOR_INTERVAL_SECS"), secs);
    assert_eq!(get(env, "TORPOR_JOB_ID"), job.to_string());
    assert_eq!(get(env, "TORPOR_STEP_ID"), step);
    assert_eq!(get(env, "TORPOR_TASK_ID"), task);
    assert_eq!(get(env, "TORPOR_ATTEMPT"), "0");
    assert_eq!(get(env, "TORPOR_KEEP"), "2");
    assert_eq!(get(env, "TORPOR_FULL_EVERY"), "8");
    assert_eq!(get(env, "TORPOR_CONTEXT"), "slurm");
    assert_eq!(
        get(env, "TORPOR_RESTORER"),
        release_dir().join("torpor-restore").display().to_string()
    );
    assert!(get(env, "TORPOR_SIGNAL").parse::<u32>().is_ok());
    let _ = c;
}

fn assert_untouched(env: &BTreeMap<String, String>, preload: Option<&str>) {
    let torpor: Vec<&String> = env.keys().filter(|k| k.starts_with("TORPOR_")).collect();
    assert!(torpor.is_empty(), "unexpected {torpor:?}");
    assert_eq!(env.get("LD_PRELOAD").map(String::as_str), preload);
}

// ---- --help -------------------------------------------------------------------------------

fn sbatch_help_lists_options(c: &Cluster) {
    let mut cmd = c.user_command("sbatch");
    cmd.arg("--help");
    let out = c.run(cmd).expect("sbatch --help");
    assert!(
        out.stdout.contains("--checkpoint=interval"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--checkpoint-dir=path"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[torpor]"), "{}", out.stdout);
}

fn srun_help_lists_options(c: &Cluster) {
    let out = c.srun(&["--help"]).expect("srun --help");
    assert!(
        out.stdout.contains("--checkpoint=interval"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--checkpoint-dir=path"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[torpor]"), "{}", out.stdout);
}

// ---- refused values -------------------------------------------------------------------------

/// Refused: non-zero exit, exactly one torpor line naming the option and value, no new job.
fn assert_refused(c: &Cluster, before: &[JobId], out: &Out, expect: &str) {
    assert_ne!(out.status, 0, "accepted: {out:?}");
    let ours: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("torpor:"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "want one torpor line, stderr:\n{}",
        out.stderr
    );
    assert!(ours[0].contains(expect), "want {expect:?} in {:?}", ours[0]);
    let after = c.job_ids().expect("job list");
    assert_eq!(before, after.as_slice(), "a job was created");
}

fn sbatch_refused(c: &Cluster, args: &[&str], expect: &str) {
    let before = c.job_ids().expect("job list");
    let out = c.sbatch(args, "#!/bin/sh\ntrue\n").expect("sbatch runs");
    assert_refused(c, &before, &out, expect);
}

fn srun_refused(c: &Cluster, args: &[&str], expect: &str) {
    let before = c.job_ids().expect("job list");
    let mut all = args.to_vec();
    all.push("/bin/true");
    let out = c.srun(&all).expect("srun runs");
    assert_refused(c, &before, &out, expect);
}

const BANANA: &str = "--checkpoint=banana: not an interval";
const NEGATIVE: &str = "--checkpoint=-5: negative interval";
const RANGE: &str = "--checkpoint=0:99:00: minutes field 99 is out of range";
const EMPTY: &str = "--checkpoint=: empty interval";
const BELOW: &str = "--checkpoint=2s: below this site's minimum interval of 5s";
const RELATIVE: &str = "--checkpoint-dir=ckpt: path must be absolute";
const MISSING: &str =
    "--checkpoint-dir=/nonexistent/torpor: /nonexistent/torpor does not exist or is not a directory";

fn sbatch_refuses_banana(c: &Cluster) {
    sbatch_refused(c, &["--checkpoint=banana"], BANANA);
}
fn sbatch_refuses_negative(c: &Cluster) {
    sbatch_refused(c, &["--checkpoint=-5"], NEGATIVE);
}
fn sbatch_refuses_out_of_range_field(c: &Cluster) {
    sbatch_refused(c, &["--checkpoint=0:99:00"], RANGE);
}
fn sbatch_refuses_empty(c: &Cluster) {
    sbatch_refused(c, &["--checkpoint="], EMPTY);
}
fn sbatch_refuses_below_site_minimum(c: &Cluster) {
    sbatch_refused(c, &["--checkpoint=2s"], BELOW);
}
fn sbatch_refuses_relative_dir(c: &Cluster) {
    sbatch_refused(c, &["--checkpoint=10m", "--checkpoint-dir=ckpt"], RELATIVE);
}
fn sbatch_refuses_missing_dir(c: &Cluster) {
    sbatch_refused(
        c,
        &["--checkpoint=10m", "--checkpoint-dir=/nonexistent/torpor"],
        MISSING,
    );
}
fn sbatch_refuses_bare_option_swallowing_script(c: &Cluster) {
    let before = c.job_ids().expect("job list");
    let (out, path) = c
        .sbatch_file_and_stdin(&["--checkpoint"], "#!/bin/sh\ntrue\n")
        .expect("sbatch runs");
    let expect = format!("--checkpoint={}: not an interval", path.display());
    assert_refused(c, &before, &out, &expect);
    assert!(
        out.stderr.contains("write --checkpoint=<interval>"),
        "{}",
        out.stderr
    );
}
fn sbatch_refuses_bad_value_on_sbatch_line(c: &Cluster) {
    let before = c.job_ids().expect("job list");
    let out = c
        .sbatch(&[], "#!/bin/sh\n#SBATCH --checkpoint=banana\ntrue\n")
        .expect("sbatch runs");
    assert_refused(c, &before, &out, BANANA);
}

fn srun_refuses_banana(c: &Cluster) {
    srun_refused(c, &["--checkpoint=banana"], BANANA);
}
fn srun_refuses_negative(c: &Cluster) {
    srun_refused(c, &["--checkpoint=-5"], NEGATIVE);
}
fn srun_refuses_out_of_range_field(c: &Cluster) {
    srun_refused(c, &["--checkpoint=0:99:00"], RANGE);
}
fn srun_refuses_empty(c: &Cluster) {
    srun_refused(c, &["--checkpoint="], EMPTY);
}
fn srun_refuses_below_site_minimum(c: &Cluster) {
    srun_refused(c, &["--checkpoint=2s"], BELOW);
}
fn srun_refuses_relative_dir(c: &Cluster) {
    srun_refused(c, &["--checkpoint=10m", "--checkpoint-dir=ckpt"], RELATIVE);
}
fn srun_refuses_missing_dir(c: &Cluster) {
    srun_refused(
        c,
        &["--checkpoint=10m", "--checkpoint-dir=/nonexistent/torpor"],
        MISSING,
    );
}
fn srun_refuses_bare_option_swallowing_program(c: &Cluster) {
    // `srun --checkpoint /bin/true`: the program becomes the value.
    let before = c.job_ids().expect("job list");
    let out = c.srun(&["--checkpoint", "/bin/true"]).expect("srun runs");
    assert_refused(c, &before, &out, "--checkpoint=/bin/true: not an interval");
}

// ---- the task environment ----------------------------------------------------------------

fn batch_and_srun_steps_get_agent_and_vars(c: &Cluster) {
    let lib = some_lib();
    let (job, out) = run_job(c, &["--checkpoint=10m"], ENV_SCRIPT, &[("LD_PRELOAD", lib)]);
    let s = sections(&out);
    for (name, step) in [("batch", BATCH_STEP), ("step", "0")] {
        let env = &s[name];
        assert_checkpointed(c, env, job, step, "0", "600");
        let dir = c.images_dir().join(&c.user().name);
        assert_eq!(get(env, "TORPOR_DIR"), dir.display().to_string());
        // Existing entries are kept, the agent comes last.
        assert_eq!(
            get(env, "LD_PRELOAD"),
            format!("{lib}:{}", agent()),
            "{name}"
        );
    }
}

fn export_none_batch_and_srun_steps(c: &Cluster) {
    let (job, out) = run_job(c, &["--export=NONE", "--checkpoint=10m"], ENV_SCRIPT, &[]);
    let s = sections(&out);
    assert_checkpointed(c, &s["batch"], job, BATCH_STEP, "0", "600");
    assert_checkpointed(c, &s["step"], job, "0", "0", "600");
}

fn sbatch_lines_and_user_dir(c: &Cluster) {
    let work = c.work_dir().display().to_string();
    let script = format!(
        "#!/bin/bash\n#SBATCH --checkpoint=10m\n#SBATCH --checkpoint-dir={work}/ck-%u-%j\n{}",
        ENV_SCRIPT.trim_start_matches("#!/bin/bash\n")
    );
    let (job, out) = run_job(c, &[], &script, &[]);
    let s = sections(&out);
    for (name, step) in [("batch", BATCH_STEP), ("step", "0")] {
        assert_checkpointed(c, &s[name], job, step, "0", "600");
        assert_eq!(
            get(&s[name], "TORPOR_DIR"),
            format!("{work}/ck-{}-{job}", c.user().name)
        );
    }
}

fn command_line_beats_sbatch_line(c: &Cluster) {
    let script = format!(
        "#!/bin/bash\n#SBATCH --checkpoint=30m\n{}",
        ENV_SCRIPT.trim_start_matches("#!/bin/bash\n")
    );
    let (job, out) = run_job(c, &["--checkpoint=1:00"], &script, &[]);
    assert_checkpointed(c, &sections(&out)["batch"], job, BATCH_STEP, "0", "60");
}

fn srun_outside_sbatch_sets_each_task(c: &Cluster) {
    let out = c
        .srun(&["-n2", "--label", "--checkpoint=10m", "/usr/bin/env"])
        .expect("srun runs");
    assert!(out.ok(), "{out:?}");
    for task in ["0", "1"] {
        let prefix = format!("{task}: ");
        let env: BTreeMap<String, String> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let job = JobId(get(&env, "SLURM_JOB_ID").parse().expect("job id"));
        assert_checkpointed(c, &env, job, "0", task, "600");
    }
}

fn job_without_option_is_untouched(c: &Cluster) {
    let lib = some_lib();
    let (_, out) = run_job(c, &[], ENV_SCRIPT, &[("LD_PRELOAD", lib)]);
    let s = sections(&out);
    assert_untouched(&s["batch"], Some(lib));
    assert_untouched(&s["step"], Some(lib));
    let out = c.srun(&["/usr/bin/env"]).expect("srun runs");
    assert!(out.ok(), "{out:?}");
    assert!(!out.stdout.contains("TORPOR_"), "{}", out.stdout);
    assert!(!out.stdout.contains("libtorpor_agent"), "{}", out.stdout);
}

// ---- plugstack.conf errors --------------------------------------------------------------

fn unknown_plugstack_key_disables_plugin(c: &Cluster) {
    let good = Cluster::default_plugin_args(c.dir());
    // Submitted while the configuration is good, started after it went bad.
    let held = c
        .submit(&["--hold", "--checkpoint=10m"], ENV_SCRIPT)
        .expect("submit held job");
    let mut bad = good.clone();
    bad.push("frobnicate=1".to_owned());
    c.set_plugin_args(&bad).expect("write plugstack.conf");
    let result = std::panic::catch_unwind(|| {
        c.release(held).expect("release");
        let state = c.wait_finished(held, JOB_TIMEOUT).expect("job ends");
        let out = c.read_output(held).unwrap_or_default();
        assert_eq!(state, "COMPLETED", "{out}");
        let s = sections(&out);
        assert_untouched(&s["batch"], None);
        assert_untouched(&s["step"], None);
        let node = c
            .job_field(held, "NodeList")
            .expect("scontrol")
            .unwrap_or_default();
        let log = c.node_log(&node);
        assert!(
            log.contains("unknown key \"frobnicate\"") && log.contains("torpor is disabled"),
            "slurmd log of {node} does not name the key"
        );
        // A job without the option still runs, untouched.
        let (_, out) = run_job(c, &[], ENV_SCRIPT, &[]);
        assert_untouched(&sections(&out)["batch"], None);
        // Asking for checkpointing now is refused, naming the key.
        let before = c.job_ids().expect("job list");
        let out = c
            .sbatch(&["--checkpoint=10m"], "#!/bin/sh\ntrue\n")
            .expect("sbatch runs");
        assert_refused(c, &before, &out, "frobnicate");
    });
    c.set_plugin_args(&good).expect("restore plugstack.conf");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn slurm_plugin() {
    let Some(cluster) = start_or_skip(ClusterOptions::for_tests()) else {
        return;
    };
    let all: &[Case<'_, Cluster>] = &[
        ("sbatch_help_lists_options", &sbatch_help_lists_options),
        ("srun_help_lists_options", &srun_help_lists_options),
        ("sbatch_refuses_banana", &sbatch_refuses_banana),
        ("sbatch_refuses_negative", &sbatch_refuses_negative),
        (
            "sbatch_refuses_out_of_range_field",
            &sbatch_refuses_out_of_range_field,
        ),
        ("sbatch_refuses_empty", &sbatch_refuses_empty),
        (
            "sbatch_refuses_below_site_minimum",
            &sbatch_refuses_below_site_minimum,
        ),
        ("sbatch_refuses_relative_dir", &sbatch_refuses_relative_dir),
        ("sbatch_refuses_missing_dir", &sbatch_refuses_missing_dir),
        (
            "sbatch_refuses_bare_option_swallowing_script",
            &sbatch_refuses_bare_option_swallowing_script,
        ),
        (
            "sbatch_refuses_bad_value_on_sbatch_line",
            &sbatch_refuses_bad_value_on_sbatch_line,
        ),
        ("srun_refuses_banana", &srun_refuses_banana),
        ("srun_refuses_negative", &srun_refuses_negative),
        (
            "srun_refuses_out_of_range_field",
            &srun_refuses_out_of_range_field,
        ),
        ("srun_refuses_empty", &srun_refuses_empty),
        (
            "srun_refuses_below_site_minimum",
            &srun_refuses_below_site_minimum,
        ),
        ("srun_refuses_relative_dir", &srun_refuses_relative_dir),
        ("srun_refuses_missing_dir", &srun_refuses_missing_dir),
        (
            "srun_refuses_bare_option_swallowing_program",
            &srun_refuses_bare_option_swallowing_program,
        ),
        (
            "batch_and_srun_steps_get_agent_and_vars",
            &batch_and_srun_steps_get_agent_and_vars,
        ),
        (
            "export_none_batch_and_srun_steps",
            &export_none_batch_and_srun_steps,
        ),
        ("sbatch_lines_and_user_dir", &sbatch_lines_and_user_dir),
        (
            "command_line_beats_sbatch_line",
            &command_line_beats_sbatch_line,
        ),
        (
            "srun_outside_sbatch_sets_each_task",
            &srun_outside_sbatch_sets_each_task,
        ),
        (
            "job_without_option_is_untouched",
            &job_without_option_is_untouched,
        ),
        (
            "unknown_plugstack_key_disables_plugin",
            &unknown_plugstack_key_disables_plugin,
        ),
    ];
    cases::run(&cluster, all);
}
