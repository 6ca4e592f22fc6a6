//! Issue 5: what `make package` builds. The .deb (`dpkg-deb`) and the .rpm (`rpm -qlp`) hold
//! exactly the expected files, root-owned, with the right modes; the plugstack snippet is a
//! conffile / %config; the version names the Slurm the plugin was built against and the
//! dependencies pin that Slurm major.minor; the binaries are stripped; there is a man page for
//! every `torpor` verb and the SPANK page documents every option, plugstack key and variable.
//!
//! Reads `target/package/` (or `$TORPOR_PACKAGE_DIR`). Without packages: a failure when `CI`
//! is set, a printed skip otherwise. Run: `make package && cargo test -p torpor-tests --test
//! package_contents -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use torpor_tests::cluster::release_dir;
use torpor_tests::resume::Checks;

fn package_dir() -> PathBuf {
    std::env::var_os("TORPOR_PACKAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            release_dir()
                .parent()
                .unwrap_or(Path::new("/"))
                .join("package")
        })
}

/// The one file in `dir` ending in `ext`, or why there is not exactly one.
fn one_with_ext(dir: &Path, ext: &str) -> Result<PathBuf, String> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e} (run `make package`)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no .{ext} in {} (run `make package`)",
            dir.display()
        )),
        many => Err(format!("several .{ext} in {}: {many:?}", dir.display())),
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(major, minor, full)` of the Slurm whose headers are installed.
fn slurm() -> (u32, u32, String) {
    let v = run("dpkg-query", &["-W", "-f=${Version}", "libslurm-dev"]);
    let v = v.split_once(':').map_or(v.as_str(), |(_, r)| r);
    let full = v.split(['-', '+']).next().unwrap_or_default().to_owned();
    let mut it = full.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor, full)
}

/// Every file the packages must install (path -> mode). Man pages: one per `torpor` verb, as
/// the built CLI's own `torpor man` writes them. `zsh` is the zsh completion's directory.
fn expected(zsh: &str, extra_doc: &[&str]) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for (p, mode) in [
        ("/usr/bin/torpor", 0o755),
        ("/usr/lib/torpor/torpor-restore", 0o755),
        ("/usr/lib/torpor/libtorpor_agent.so", 0o644),
        ("/usr/lib/torpor/libtorpor_spank.so", 0o644),
        ("/etc/slurm/plugstack.conf.d/torpor.conf", 0o644),
        ("/usr/share/man/man8/torpor-spank.8.gz", 0o644),
        ("/usr/share/bash-completion/completions/torpor", 0o644),
        ("/usr/share/fish/vendor_completions.d/torpor.fish", 0o644),
    ] {
        m.insert(p.to_owned(), mode);
    }
    m.insert(format!("{zsh}/_torpor"), 0o644);
    for d in [
        "README.md",
        "admin-guide.md",
        "user-guide.md",
        "admin-plugstack.md",
        "slurm.md",
        "engine.md",
        "image-format.md",
        "copyright",
    ]
    .iter()
    .chain(extra_doc)
    {
        m.insert(format!("/usr/share/doc/torpor/{d}"), 0o644);
    }
    let tmp = std::env::temp_dir().join(format!("torpor-man-expected-{}", std::process::id()));
    let cli = release_dir().join("torpor");
    run(
        &cli.display().to_string(),
        &["man", &tmp.display().to_string()],
    );
    let mut pages: Vec<String> = std::fs::read_dir(&tmp)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&tmp);
    pages.sort();
    assert!(
        pages.iter().any(|p| p == "torpor.1") && pages.len() > 1,
        "`torpor man` writes torpor.1 and one page per verb: {pages:?}"
    );
    for p in pages {
        m.insert(format!("/usr/share/man/man1/{p}.gz"), 0o644);
    }
    m
}

/// Regular files of a listing in `ls -l` style (mode string, owner, path), as
/// `path -> (mode, owner)`; `owner_col` and `path_col` are the fields' indices.
fn parse_listing(
    listing: &str,
    owner_col: usize,
    path_col: usize,
) -> BTreeMap<String, (u32, String)> {
    let mut m = BTreeMap::new();
    for l in listing.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(perm) = f.first() else { continue };
        if !perm.starts_with('-') || f.len() <= path_col {
            continue;
        }
        let mode = perm[1..]
            .chars()
            .fold(0u32, |acc, c| (acc << 1) | u32::from(c != '-'));
        let path = f[path_col].trim_start_matches('.').to_owned();
        m.insert(path, (mode, f[owner_col].to_owned()));
    }
    m
}

fn check_files(
    ck: &mut Checks,
    what: &str,
    got: &BTreeMap<String, (u32, String)>,
    want: &BTreeMap<String, u32>,
    owner: &str,
) {
    for (p, mode) in want {
        match got.get(p) {
            Some((m, o)) => ck.check(
                m == mode && o == owner,
                format!("{what}: {p} mode {mode:o} owner {owner} (is {m:o} {o})"),
            ),
            None => ck.check(false, format!("{what}: {p} is packaged")),
        }
    }
    let extra: Vec<&String> = got.keys().filter(|p| !want.contains_key(*p)).collect();
    ck.check(
        extra.is_empty(),
        format!("{what}: no unexpected files: {extra:?}"),
    );
}

#[test]
fn package_contents() {
    let dir = package_dir();
    let (deb, rpm) = match (one_with_ext(&dir, "deb"), one_with_ext(&dir, "rpm")) {
        (Ok(d), Ok(r)) => (d, r),
        (d, r) => {
            let why = format!("{:?} / {:?}", d.err(), r.err());
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the packages are missing: {why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let (major, minor, slurm) = slurm();
    let next = format!("{major}.{:02}", minor + 1);
    let version = env!("CARGO_PKG_VERSION");
    let mut ck = Checks::default();
    let mut context = String::new();

    // ---- .deb
    let deb_s = deb.display().to_string();
    let field = |f: &str| run("dpkg-deb", &["-f", &deb_s, f]).trim().to_owned();
    let deb_version = field("Version");
    ck.check(
        deb_version.starts_with(&format!("{version}-"))
            && deb_version.ends_with(&format!("+slurm{slurm}")),
        format!("deb version {deb_version:?} is {version}-<rev>+slurm{slurm}"),
    );
    ck.check(
        deb.file_name()
            .is_some_and(|n| n.to_string_lossy().contains(&format!("+slurm{slurm}_"))),
        format!("deb file name names Slurm {slurm}: {}", deb.display()),
    );
    let depends = field("Depends");
    ck.check(
        depends.contains(&format!("slurm-wlm-basic-plugins (>= {slurm})"))
            && depends.contains(&format!("slurm-wlm-basic-plugins (<< {next}~)"))
            && depends.contains("libc6 (>= "),
        format!("deb Depends pins Slurm {major}.{minor:02} and glibc: {depends}"),
    );
    let tmp = std::env::temp_dir().join(format!("torpor-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let tmp_s = tmp.display().to_string();
    run("dpkg-deb", &["-R", &deb_s, &tmp_s]);
    let conffiles = std::fs::read_to_string(tmp.join("DEBIAN/conffiles")).unwrap_or_default();
    ck.check(
        conffiles.trim() == "/etc/slurm/plugstack.conf.d/torpor.conf",
        format!("deb conffiles: {conffiles:?}"),
    );
    let listing = run("dpkg-deb", &["-c", &deb_s]);
    context.push_str(&format!("== dpkg-deb -c\n{listing}"));
    // drwxr-xr-x root/root 0 2026-11-22 08:00 ./usr/bin/
    let got = parse_listing(&listing, 1, 5)
        .into_iter()
        .map(|(p, (m, o))| (p, (m, o.replace('/', ":"))))
        .collect();
    let want_deb = expected(
        "/usr/share/zsh/vendor-completions",
        &["changelog.Debian.gz"],
    );
    check_files(&mut ck, "deb", &got, &want_deb, "root:root");
    for bin in [
        "usr/bin/torpor",
        "usr/lib/torpor/torpor-restore",
        "usr/lib/torpor/libtorpor_agent.so",
        "usr/lib/torpor/libtorpor_spank.so",
    ] {
        let sections = run(
            "readelf",
            &["-S", "-W", &tmp.join(bin).display().to_string()],
        );
        ck.check(
            !sections.contains(".debug_info") && !sections.contains(".symtab"),
            format!("deb: {bin} is stripped (no .debug_info, no .symtab)"),
        );
    }
    let spank_man = run(
        "zcat",
        &[&tmp
            .join("usr/share/man/man8/torpor-spank.8.gz")
            .display()
            .to_string()],
    )
    .replace("\\-", "-")
    .replace("\\%", "");
    for key in torpor_conf::KEYS {
        ck.check(
            spank_man.contains(&format!("{}=", key.name)),
            format!("torpor-spank(8) documents plugstack key {}=", key.name),
        );
    }
    for opt in torpor_conf::OPTIONS {
        ck.check(
            spank_man.contains(&format!("--{}=", opt.name())),
            format!("torpor-spank(8) documents --{}=", opt.name()),
        );
    }
    for var in torpor_conf::env::ALL {
        ck.check(
            spank_man.contains(var),
            format!("torpor-spank(8) documents {var}"),
        );
    }
    let top = run(
        "zcat",
        &[&tmp
            .join("usr/share/man/man1/torpor.1.gz")
            .display()
            .to_string()],
    );
    ck.check(
        top.contains(".TH torpor 1"),
        "torpor.1.gz is a roff page for torpor(1)",
    );
    let bash = std::fs::read_to_string(tmp.join("usr/share/bash-completion/completions/torpor"))
        .unwrap_or_default();
    ck.check(
        bash.contains("complete ") && bash.contains("torpor"),
        "bash completion registers `torpor`",
    );
    let _ = std::fs::remove_dir_all(&tmp);

    // ---- .rpm
    let rpm_s = rpm.display().to_string();
    let rpm_version = run("rpm", &["-qp", "--qf", "%{VERSION}-%{RELEASE}", &rpm_s]);
    ck.check(
        rpm_version.starts_with(&format!("{version}-"))
            && rpm_version.ends_with(&format!(".slurm{slurm}")),
        format!("rpm version {rpm_version:?} is {version}-<rev>.slurm{slurm}"),
    );
    let requires = run("rpm", &["-qpR", &rpm_s]);
    ck.check(
        requires
            .lines()
            .any(|l| l.trim() == format!("slurm >= {slurm}"))
            && requires
                .lines()
                .any(|l| l.trim() == format!("slurm < {next}")),
        format!("rpm requires Slurm {major}.{minor:02}: {requires}"),
    );
    let config = run("rpm", &["-qcp", &rpm_s]);
    ck.check(
        config.trim() == "/etc/slurm/plugstack.conf.d/torpor.conf",
        format!("rpm config files: {config:?}"),
    );
    let names = run("rpm", &["-qlp", &rpm_s]);
    let listing = run("rpm", &["-qlpv", &rpm_s]);
    context.push_str(&format!("== rpm -qlp\n{names}== rpm -qlpv\n{listing}"));
    // -rwxr-xr-x    1 root     root     1234 Nov 22 08:00 /usr/bin/torpor
    let got: BTreeMap<String, (u32, String)> = parse_listing(&listing, 2, 8)
        .into_iter()
        .map(|(p, (m, o))| (p, (m, format!("{o}:root"))))
        .collect();
    let want_rpm = expected("/usr/share/zsh/site-functions", &[]);
    for p in want_rpm.keys() {
        ck.check(names.lines().any(|l| l == p), format!("rpm -qlp lists {p}"));
    }
    check_files(&mut ck, "rpm", &got, &want_rpm, "root:root");
    let groups = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .all(|l| l.split_whitespace().nth(3) == Some("root"));
    ck.check(groups, "rpm: every file's group is root");
    ck.finish(&context);
}
