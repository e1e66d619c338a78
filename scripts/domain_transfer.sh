#!/usr/bin/env bash
# Child-Tuning's domain transfer with the tasks the shared data has: fine-tune
# all-MiniLM-L6-v2 on RTE (2,490 examples, under the paper's 5k sample, so all of them)
# with each method's recipe from configs/, then score each run, unchanged, on RTE's dev
# set and on QNLI's (whose labels are RTE's, so no --label-map). Prints one row per run:
# method, seed, RTE dev accuracy, QNLI dev accuracy.
#   scripts/domain_transfer.sh OUT_DIR [SEEDS, e.g. 42,43,44] [GLUE_DIR]
# PEFT=path/to/peft picks the binary (default target/release/peft). Finished runs are
# kept: the same command again only scores them.
set -euo pipefail
out=$1 seeds=${2:-42} glue=${3:-../shared/data/glue}
peft=${PEFT:-target/release/peft}
model=$(bash scripts/get_minilm.sh models)
mkdir -p "$out"
accuracy() { python3 -c 'import json, sys; print(round(100 * json.load(sys.stdin)["metrics"]["accuracy"], 2))'; }
echo "method seed rte_dev qnli_dev"
for seed in ${seeds//,/ }; do
  for method in full child-d child-f layernorm; do
    recipe=$method
    case $method in child-d) recipe=child-tuning-d ;; child-f) recipe=child-tuning-f ;; esac
    run=$out/rte-$method-$seed
    if [ ! -f "$run/last.safetensors" ]; then
      "$peft" train --model "$model" --data-dir "$glue" --task rte --config "$recipe" \
        --seed "$seed" --output-dir "$run" --overwrite > "$run.log" 2>&1
    fi
    rte=$("$peft" eval --checkpoint "$run" --json | accuracy)
    qnli=$("$peft" eval --checkpoint "$run" --task qnli --data-dir "$glue" --json 2>/dev/null | accuracy)
    echo "$method $seed $rte $qnli"
  done
done
