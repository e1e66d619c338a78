#!/usr/bin/env bash
# Fuzz the readers of files peft reads back (tests/it/fuzz.rs: safetensors, pickle,
# config.json, grid plans, resume checkpoints) for a few minutes: each target reads CASES
# mutated files (default 100000: about four minutes on two cores; the dev profile builds the
# dependencies optimised). A panic fails the target with the smallest input proptest finds;
# an abort (a stack overflow) ends the run with its signal.
#
#   scripts/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-100000}"
start=$(date +%s)
PROPTEST_CASES="$cases" cargo test --test it fuzz:: -- --test-threads 2
echo "fuzz: $cases cases per target in $(( $(date +%s) - start )) s"
