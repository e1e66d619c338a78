#!/usr/bin/env bash
# The Fisher estimate's cost against a training pass, on RTE with all-MiniLM-L6-v2, in one
# run (issue: "Fisher at the speed of a training pass"). Prints wall seconds of:
#   layernorm-32x32   a layernorm run of 32 steps of 32 (1,024 examples), dev evaluation included
#   layernorm-1       a 1-step layernorm run
#   fisher-layernorm  a 1-step fisher-layernorm run with the default 1,024-example estimate (cold cache)
#   fisher-cached     the same seed again at another learning rate (the estimate from the cache)
#   full-32x32        a full fine-tuning run of 32 steps of 32, dev evaluation included
#   fisher-all        `peft fisher` over every parameter, per-example, 1,024 examples
#   ratio             fisher-layernorm / layernorm-32x32, fisher-cached / layernorm-1 and
#                     fisher-all / full-32x32
#   scripts/fisher_speed.sh [OUT_DIR] [GLUE_DIR]      PEFT=path/to/peft (default target/release/peft)
set -euo pipefail
out=${1:-/tmp/fisher-speed} glue=${2:-../shared/data/glue}
peft=${PEFT:-target/release/peft}
model=$(bash scripts/get_minilm.sh models)
rm -rf "$out" && mkdir -p "$out"
export PEFT_CACHE_DIR=$out/cache
timed() { # name, then the command
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  python3 -c "import sys; print(f'{sys.argv[1]} {float(sys.argv[3]) - float(sys.argv[2]):.1f}')" \
    "$name" "$t0" "$(date +%s.%N)"
}
run() { # name, then train args
  local name=$1; shift
  timed "$name" "$peft" train --model "$model" --data-dir "$glue" --task rte --seed 42 \
    --output-dir "$out/$name" --overwrite "$@"
}
{
  run layernorm-32x32 --method layernorm --max-steps 32 --batch-size 32
  run layernorm-1 --method layernorm --max-steps 1 --batch-size 32
  run fisher-layernorm --method fisher-layernorm --fraction 0.1 --max-steps 1 --batch-size 32
  run fisher-cached --method fisher-layernorm --fraction 0.1 --max-steps 1 --batch-size 32 --lr 5e-4
  run full-32x32 --method full --max-steps 32 --batch-size 32
  timed fisher-all "$peft" fisher --model "$model" --data-dir "$glue" --task rte --seed 42 \
    --samples 1024 --output "$out/fisher-all"
} | tee "$out/times.txt"
python3 - "$out/times.txt" <<'PY'
import sys
t = dict(l.split() for l in open(sys.argv[1]))
t = {k: float(v) for k, v in t.items()}
print(f"ratio fisher-layernorm/layernorm-32x32 {t['fisher-layernorm'] / t['layernorm-32x32']:.2f}")
print(f"ratio fisher-cached/layernorm-1 {t['fisher-cached'] / t['layernorm-1']:.2f}")
print(f"ratio fisher-all/full-32x32 {t['fisher-all'] / t['full-32x32']:.2f}")
PY
