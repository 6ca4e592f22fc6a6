//! The test cluster's configuration files: slurm.conf (nodes, partitions, preemption,
//! fast timeouts) and plugstack.conf (the freshly built plugin and its arguments).

use super::*;

impl Cluster {
    pub(super) fn write_slurm_conf(&self, opts: &ClusterOptions) -> Result<()> {
        let d = self.dir.display();
        let host = hostname()?;
        let cluster_name = format!("torpor{}", self.ports[0]);
        let mut c = format!(
            "# Written by torpor-tests. Fast-test settings; see SLURM_NOTES.md.
ClusterName={cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.sock,cred_expire=10
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=verbose
PlugStackConfig={d}/plugstack.conf
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SlurmdTimeout=20
SlurmctldTimeout=20
MessageTimeout=10
KillWait=10
InactiveLimit=0
MinJobAge=600
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
",
            ctld_port = self.ports[0],
        );
        for (i, node) in self.nodes.iter().enumerate() {
            c.push_str(&format!(
                "NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={} CPUs={} RealMemory=1000 State=UNKNOWN\n",
                self.ports[i + 1],
                opts.cpus_per_node
            ));
        }
        let all = self.nodes.join(",");
        c.push_str(&format!(
            "PartitionName=low Nodes={all} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20\n\
             PartitionName=high Nodes={all} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF\n"
        ));
        for line in &opts.extra_conf {
            c.push_str(line);
            c.push('\n');
        }
        write(&self.conf(), &c)
    }

    pub(super) fn write_plugstack(&self, plugin: &Path, args: &[String]) -> Result<()> {
        write(
            &self.dir.join("plugstack.conf"),
            // `required`: Slurm ignores init_post_opt errors of optional plugins, so sbatch
            // would submit a job whose --checkpoint-dir does not exist.
            &format!("required {} {}\n", plugin.display(), args.join(" ")),
        )
    }

    /// Rewrites plugstack.conf with the same plugin and new arguments. Every command and step
    /// started afterwards reads it; no daemon restart is needed.
    pub fn set_plugin_args(&self, args: &[String]) -> Result<()> {
        let current = io(
            "read plugstack.conf",
            fs::read_to_string(self.dir.join("plugstack.conf")),
        )?;
        let plugin = current.split_whitespace().nth(1).unwrap_or_default();
        self.write_plugstack(Path::new(plugin), args)
    }
}
