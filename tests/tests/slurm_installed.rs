//! Issue 5: the installed package works on the real test cluster. The cluster loads the
//! plugin from `/usr/lib/torpor/` (where the .deb put it), the plugin hands the installed
//! agent and restorer to the job, and a checkpointed job that is requeued resumes.
//!
//! Needs this build's package installed first (`make test-package` builds and `dpkg -i`s it; CI runs
//! that before `test-slurm`). Without it: a failure when `CI` is set, a printed skip otherwise.
//! Run: `make package && dpkg -i target/package/torpor_*.deb &&
//! cargo test -p torpor-tests --test slurm_installed -- --nocapture`

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use torpor_tests::cases::{self, Case};
use torpor_tests::cluster::{release_dir, start_or_skip};
use torpor_tests::resume::Checks;
use torpor_tests::resume_checks::{requeue_batch, Ctx, WAIT};
use torpor_tests::ClusterOptions;

const LIBDIR: &str = "/usr/lib/torpor";

fn dpkg_query(args: &[&str]) -> Option<String> {
    let out = Command::new("dpkg-query").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The installed torpor package's version, or why it is not there.
fn installed_version() -> Result<String, String> {
    let status = dpkg_query(&["-W", "-f=${Status} ${Version}", "torpor"]).ok_or(
        "the torpor package is not installed (make package; dpkg -i target/package/torpor_*.deb)",
    )?;
    match status.strip_prefix("install ok installed ") {
        Some(v) => Ok(v.trim().to_owned()),
        None => Err(format!(
            "the torpor package is not installed: dpkg says {status:?}"
        )),
    }
}

/// The installed package's version if its binaries are this workspace's release build (same
/// GNU build ids; stripping keeps them), or why not: a stale package would test another
/// build, whose images this build's test code may not even parse.
fn installed_build() -> Result<String, String> {
    let version = installed_version()?;
    for (installed, built) in [
        ("/usr/bin/torpor", "torpor"),
        ("/usr/lib/torpor/torpor-restore", "torpor-restore"),
        ("/usr/lib/torpor/libtorpor_agent.so", "libtorpor_agent.so"),
        ("/usr/lib/torpor/libtorpor_spank.so", "libtorpor_spank.so"),
    ] {
        let built = release_dir().join(built);
        let (a, b) = (build_id(Path::new(installed)), build_id(&built));
        if a.is_none() || a != b {
            return Err(format!(
                "the installed torpor {version} is not this build: {installed} has build id \
                 {a:?}, {} {b:?} (`make install-package` installs this build)",
                built.display()
            ));
        }
    }
    Ok(version)
}

/// Upstream version of the installed Slurm headers (what the plugin was built against).
fn slurm_version() -> String {
    let v = dpkg_query(&["-W", "-f=${Version}", "libslurm-dev"]).unwrap_or_default();
    let v = v.split_once(':').map_or(v.as_str(), |(_, r)| r);
    v.split(['-', '+']).next().unwrap_or_default().to_owned()
}

/// The GNU build id of an ELF file (`readelf -n`).
fn build_id(path: &Path) -> Option<String> {
    let out = Command::new("readelf").arg("-n").arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
}

/// The package: its version names this workspace's version and the Slurm it was built
/// against, and every file it installs is there with root ownership and the right mode.
fn installed_package(_: &Ctx) {
    let mut ck = Checks::default();
    let version = installed_version().unwrap_or_default();
    let slurm = slurm_version();
    let want_prefix = format!("{}-", env!("CARGO_PKG_VERSION"));
    ck.check(
        version.starts_with(&want_prefix) && version.ends_with(&format!("+slurm{slurm}")),
        format!("installed version {version:?} is {want_prefix}<rev>+slurm{slurm}"),
    );
    let files = dpkg_query(&["-L", "torpor"]).unwrap_or_default();
    for (path, mode) in [
        ("/usr/bin/torpor", 0o755),
        ("/usr/lib/torpor/torpor-restore", 0o755),
        ("/usr/lib/torpor/libtorpor_agent.so", 0o644),
        ("/usr/lib/torpor/libtorpor_spank.so", 0o644),
        ("/etc/slurm/plugstack.conf.d/torpor.conf", 0o644),
    ] {
        let meta = std::fs::metadata(path);
        let got = meta.as_ref().map(|m| m.permissions().mode() & 0o7777).ok();
        ck.check(
            files.lines().any(|l| l == path) && got == Some(mode),
            format!(
                "{path}: shipped by the package, mode {mode:o} (is {:?})",
                got.map(|m| format!("{m:o}"))
            ),
        );
        let owner = meta.map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok();
        ck.check(
            owner == Some(0),
            format!("{path}: owned by root ({owner:?})"),
        );
    }
    let cli = Command::new("/usr/bin/torpor").arg("--version").output();
    let cli = cli
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| e.to_string());
    ck.check(
        cli == format!("torpor {}", env!("CARGO_PKG_VERSION")),
        format!("/usr/bin/torpor --version: {cli:?}"),
    );
    ck.finish(&format!("dpkg -L torpor:\n{files}"));
}

/// A checkpointed job's tasks get the installed agent in LD_PRELOAD and the installed
/// restorer (the plugin's defaults are not used by the test cluster: it names them).
fn job_gets_installed_tools(ctx: &Ctx) {
    let env_file = ctx.c.work_dir().join("env-installed.txt");
    let _ = std::fs::remove_file(&env_file);
    let job = ctx.submit(
        &["--checkpoint=5s"],
        &format!("#!/bin/bash\n/usr/bin/env > {}\n", env_file.display()),
    );
    let fin = ctx
        .c
        .wait_finished(job, WAIT)
        .unwrap_or_else(|e| e.to_string());
    let env = std::fs::read_to_string(&env_file).unwrap_or_default();
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let mut ck = Checks::default();
    ck.check(fin == "COMPLETED", format!("job {job} completed: {fin}"));
    ck.check(
        var("LD_PRELOAD")
            .split([':', ' '])
            .any(|p| p == format!("{LIBDIR}/libtorpor_agent.so")),
        format!(
            "LD_PRELOAD has the installed agent: {:?}",
            var("LD_PRELOAD")
        ),
    );
    ck.check(
        var("TORPOR_RESTORER") == format!("{LIBDIR}/torpor-restore"),
        format!(
            "TORPOR_RESTORER is the installed restorer: {:?}",
            var("TORPOR_RESTORER")
        ),
    );
    ck.finish(&format!("job environment:\n{env}"));
}

#[test]
fn slurm_installed() {
    if let Err(why) = installed_build() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but {why}: `make test` installs it in test-package before test-slurm"
            );
        }
        eprintln!("SKIPPED: {why}");
        return;
    }
    let t0 = Instant::now();
    let opts = ClusterOptions::installed(Path::new(LIBDIR));
    assert!(
        opts.plugin.starts_with(LIBDIR) && opts.tools == Path::new(LIBDIR),
        "cluster options name the installed plugin and tools: {opts:?}"
    );
    let Some(c) = start_or_skip(opts) else {
        return;
    };
    let plugstack = std::fs::read_to_string(c.dir().join("plugstack.conf")).unwrap_or_default();
    eprintln!(
        "cluster up in {:.1}s; plugstack.conf: {}",
        t0.elapsed().as_secs_f64(),
        plugstack.trim()
    );
    assert!(
        plugstack.starts_with(&format!("required {LIBDIR}/libtorpor_spank.so "))
            && plugstack.contains(&format!("agent={LIBDIR}/libtorpor_agent.so"))
            && plugstack.contains(&format!("restorer={LIBDIR}/torpor-restore")),
        "the test cluster loads the installed plugin with the installed agent and restorer: {plugstack}"
    );
    let ctx = Ctx::new(c, &[50]);
    let all: &[Case<'_, Ctx>] = &[
        ("installed_package", &installed_package),
        ("job_gets_installed_tools", &job_gets_installed_tools),
        ("requeue_batch", &requeue_batch),
    ];
    cases::run(&ctx, all);
    eprintln!("slurm_installed: {:.1}s in all", t0.elapsed().as_secs_f64());
}
