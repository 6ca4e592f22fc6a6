//! `torpor-devcluster`: start, stop or describe a local Slurm cluster for demos and manual testing.
//!
//! ```text
//! torpor-devcluster start DIR [USER]   start munged, slurmctld, n1..n3 in DIR (detached)
//! torpor-devcluster env DIR            print `export SLURM_CONF=...` for a shell
//! torpor-devcluster stop DIR [USER]    stop every daemon of the cluster in DIR
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use torpor_tests::cluster::{Cluster, ClusterOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(dir)) = (args.first(), args.get(1)) else {
        bail!("usage: torpor-devcluster start|stop|env DIR [USER]");
    };
    let dir = PathBuf::from(dir);
    let user = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| ClusterOptions::for_tests().user);
    match cmd.as_str() {
        "start" => {
            if dir.join("pids").exists() {
                // A previous cluster in the same place: stop it first.
                Cluster::attach(&dir, &user)?.stop();
            }
            let opts = ClusterOptions {
                tie_to_thread: false,
                dir: Some(dir.clone()),
                user,
                ..ClusterOptions::for_tests()
            };
            let c = Cluster::start(opts).context("starting the dev cluster")?;
            println!(
                "cluster up in {}: nodes {}; export SLURM_CONF={}",
                c.dir().display(),
                c.nodes().join(","),
                c.conf().display()
            );
        }
        "stop" => {
            let mut c = Cluster::attach(&dir, &user).context("no cluster there")?;
            c.stop();
            println!("cluster in {} stopped", dir.display());
        }
        "env" => println!("export SLURM_CONF={}", dir.join("slurm.conf").display()),
        other => bail!("unknown command {other}: use start, stop or env"),
    }
    Ok(())
}
