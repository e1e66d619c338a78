#!/usr/bin/env bash
# `peft grid --emit slurm` on a real Slurm: starts a one-node cluster on this machine
# (slurmctld, slurmd and munged as root, state in a temporary folder), submits the emitted
# array job for a small plan (tiny BERT, RTE, 2 methods x 2 seeds), waits for it, checks
# that every cell finished, submits it again and checks that every task skipped its cell,
# and stops the daemons. Needs root and Debian's packages:
#   apt-get install -y slurm-wlm munge
#   scripts/slurm_check.sh            (from the repository root; GLUE in ../shared/data/glue)
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
glue="${PEFT_GLUE_DIR:-$root/../shared/data/glue}"
[ -d "$glue/RTE" ] || { echo "no RTE under $glue (set PEFT_GLUE_DIR)" >&2; exit 2; }
for tool in slurmctld slurmd munged sbatch sinfo; do
  command -v "$tool" > /dev/null || { echo "$tool not found: apt-get install -y slurm-wlm munge" >&2; exit 2; }
done
cargo build --release --quiet
peft="$root/target/release/peft"

work="$(mktemp -d /tmp/peft-slurm.XXXXXX)"
host="$(hostname -s)"
export SLURM_CONF="$work/slurm.conf"
mkdir -p "$work/state" "$work/spool" "$work/munge"
stop() {
  scontrol shutdown > /dev/null 2>&1 || true
  sleep 1
  [ -f "$work/munged.pid" ] && kill "$(cat "$work/munged.pid")" 2> /dev/null || true
}
trap stop EXIT

# munge: a fresh key, its own socket and pid file.
dd if=/dev/urandom bs=1 count=1024 of="$work/munge/munge.key" 2> /dev/null
chmod 400 "$work/munge/munge.key"
munged --force --key-file="$work/munge/munge.key" --socket="$work/munge/socket" \
  --pid-file="$work/munged.pid" --log-file="$work/munged.log" --seed-file="$work/munge/seed"

cpus="$(nproc)"
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
cat > "$SLURM_CONF" <<EOF
ClusterName=peftcheck
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld
slurmd
for _ in $(seq 60); do
  sinfo -h -o %t 2> /dev/null | grep -q idle && break
  sleep 1
done
sinfo

# A small plan: 4 cells of a few steps each.
cat > "$work/plan.toml" <<EOF
output_dir = "$work/runs"
[base]
model = "$root/tests/fixtures/tiny-bert"
task = "rte"
data_dir = "$glue"
max_seq_len = 32
max_steps = 3
eval_steps = 3
[grid]
method = ["layernorm", "bitfit"]
seed = [1, 2]
EOF
"$peft" grid "$work/plan.toml" --emit slurm > "$work/grid.sbatch"
# One CPU a task, so that both of this machine's cores run a cell each.
sed -i 's/^#SBATCH --cpus-per-task=.*/#SBATCH --cpus-per-task=1/; s/^#SBATCH --mem=.*/#SBATCH --mem=1G/' \
  "$work/grid.sbatch"
grep '^#SBATCH' "$work/grid.sbatch"

echo "== first submission"
sbatch --wait "$work/grid.sbatch"
"$peft" grid "$work/plan.toml" --list | tee "$work/list.txt"
cells=$(wc -l < "$work/list.txt")
done_cells=$(grep -c $'\tdone\t' "$work/list.txt" || true)
[ "$done_cells" = "$cells" ] || { echo "FAIL: $done_cells of $cells cells done" >&2; tail -n 20 "$work"/runs/slurm-*.out >&2; exit 1; }

echo "== second submission"
rm -f "$work"/runs/slurm-*.out
sbatch --wait "$work/grid.sbatch"
skipped=$(cat "$work"/runs/slurm-*.out | grep -c "already done with these settings: skipped" || true)
[ "$skipped" = "$cells" ] || { echo "FAIL: $skipped of $cells tasks skipped their cell" >&2; cat "$work"/runs/slurm-*.out >&2; exit 1; }
echo "OK: the array ran all $cells cells once; resubmitted, all $cells tasks skipped their cell"
"$peft" report "$work/runs"
