#!/usr/bin/env bash
# Does memory stay flat over a long run? Runs `peft bench` for many steps and prints the
# process's VmRSS and VmHWM (kB) every 5 s.
#   scripts/rss_over_steps.sh MODEL_DIR [--method full --batch 4 --seq 64 --steps 1000]
set -euo pipefail
model="$1"
shift
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--method full --batch 4 --seq 64 --steps 1000)
peft="${PEFT:-target/release/peft}"
RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}" "$peft" bench --model "$model" "${args[@]}" &
pid=$!
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/VmRSS|VmHWM/ {printf "%s %s kB  ", $1, $2}' "/proc/$pid/status" 2>/dev/null || true)
  echo "$(($(date +%s) - start)) s  $rss"
  sleep 5
done
wait "$pid"
