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

step "a checkpointed computation, requeued in the middle, resumes where it was"
cat > "$DIR/work/count.py" <<'PY'
import hashlib, time
h = hashlib.sha256()
for i in range(40):
    h.update(str(i).encode())
    print(f"step {i:2d}  digest {h.hexdigest()[:12]}", flush=True)
    time.sleep(0.5)
print("RESULT", h.hexdigest()[:16], flush=True)
PY
cat > "$DIR/work/resume.sh" <<JOB
#!/bin/bash
#SBATCH --checkpoint=5s
#SBATCH --job-name=torpor-resume
echo "job \$SLURM_JOB_ID: computing"
python3 $DIR/work/count.py
echo "job \$SLURM_JOB_ID: done"
JOB
chown "$USER_" "$DIR/work/resume.sh" "$DIR/work/count.py"
cat "$DIR/work/resume.sh"
job=$(as_user env TORPOR_VERBOSE=1 sbatch --parsable --chdir="$DIR/work" \
      --output="$DIR/work/%j.out" --error="$DIR/work/%j.err" "$DIR/work/resume.sh")
echo "submitted job $job; waiting for its first checkpoints"
for _ in $(seq 120); do
    grep -q 'step 14' "$DIR/work/$job.out" 2>/dev/null && break
    sleep 0.5
done
echo "progress before the requeue: $(tail -1 "$DIR/work/$job.out")"
echo "images: $(find "$DIR/images" -name 'gen-*' -type d | sed "s|$DIR/images/||" | sort | tr '\n' ' ')"
step "scontrol requeue $job (SIGTERM: final checkpoint; the job goes back to the queue)"
scontrol requeue "$job"
for _ in $(seq 240); do
    state=$(scontrol -o show job "$job" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    restarts=$(scontrol -o show job "$job" | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
    [ "$state" = COMPLETED ] && [ "${restarts:-0}" -ge 1 ] && break
    case "$state" in FAILED|CANCELLED|TIMEOUT) break ;; esac
    sleep 0.5
done
echo "job $job: $state after $restarts requeue(s)"
step "the job's output (one run's worth: nothing lost, nothing repeated)"
cat "$DIR/work/$job.out"
step "torpor's log for the job (stderr): checkpoints, the final one on SIGTERM, the restore"
grep -E 'torpor' "$DIR/work/$job.err" | sed -E 's/ \(pause.*//' | tail -6
python3 "$DIR/work/count.py" | tail -1 > "$DIR/work/uninterrupted.txt"
if grep -qxF "$(cat "$DIR/work/uninterrupted.txt")" "$DIR/work/$job.out"; then
    echo "RESULT matches an uninterrupted run: $(cat "$DIR/work/uninterrupted.txt")"
else
    echo "RESULT differs from an uninterrupted run ($(cat "$DIR/work/uninterrupted.txt"))"; exit 1
fi

step "stopping the cluster"
