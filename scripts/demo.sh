#!/usr/bin/env bash
# `make demo`: start a local 3-node Slurm cluster, submit a job with --checkpoint, show what
# the job saw, stop the cluster. Run after `cargo build --release --workspace` (make does it).
set -euo pipefail
cd "$(dirname "$0")/.."

REL=${TORPOR_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}}/release
DIR=${TORPOR_DEMO_DIR:-/tmp/torpor-demo}
USER_=${TORPOR_TEST_USER:-torpor-test}
DEV="$REL/torpor-devcluster"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting a demo cluster in $DIR (munged, slurmctld, slurmd n1..n3)"
rm -rf "$DIR.prev"; [ -d "$DIR" ] && { "$DEV" stop "$DIR" "$USER_" >/dev/null 2>&1 || true; mv "$DIR" "$DIR.prev"; }
"$DEV" start "$DIR" "$USER_"
trap '"$DEV" stop "$DIR" "$USER_"' EXIT
export SLURM_CONF="$DIR/slurm.conf"
as_user() { runuser -u "$USER_" -- env SLURM_CONF="$SLURM_CONF" PATH=/usr/bin:/bin "$@"; }

cat > "$DIR/work/demo.sh" <<'JOB'
#!/bin/bash
#SBATCH --checkpoint=10m
#SBATCH --job-name=torpor-demo
echo "batch step on $(hostname), job $SLURM_JOB_ID"
env | grep -E '^(LD_PRELOAD|TORPOR_)' | sort
echo "-- an srun step:"
srun bash -c 'env | grep -E "^(LD_PRELOAD|TORPOR_(STEP|TASK)_ID)" | sort'
JOB
chown "$USER_" "$DIR/work/demo.sh"

step "sbatch --help lists the torpor options"
as_user sbatch --help | grep -A1 -- '--checkpoint'

step "a bad value is refused at submit time (nothing is submitted)"
as_user sbatch --checkpoint=banana "$DIR/work/demo.sh" || true

step "submitting $DIR/work/demo.sh as $USER_ (#SBATCH --checkpoint=10m)"
cat "$DIR/work/demo.sh"
job=$(as_user sbatch --parsable --chdir="$DIR/work" --output="$DIR/work/%j.out" "$DIR/work/demo.sh")
echo "submitted job $job"
for _ in $(seq 120); do
    state=$(scontrol -o show job "$job" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL) break ;; esac
    sleep 0.5
done
echo "job $job: $state"

step "what the job saw (agent in LD_PRELOAD, TORPOR_* for the agent)"
cat "$DIR/work/$job.out"

step "stopping the cluster"
