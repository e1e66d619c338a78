#!/usr/bin/env bash
# Child-Tuning's task transfer with the tasks the shared data has: fine-tune
# all-MiniLM-L6-v2 on MRPC with each method's recipe from configs/, then freeze the encoder
# and train only a new linear classifier (`--init RUN --method head`) on CoLA and on
# STS-B (QNLI's training split and QQP are not in the shared data). Prints one row per
# source run: method, seed, MRPC dev accuracy, CoLA dev Matthews correlation and STS-B dev
# Pearson correlation of the probes (each x100, at the best evaluation).
#   scripts/task_transfer.sh OUT_DIR [SEEDS, e.g. 42,43,44] [GLUE_DIR]
# The probe: lr 1e-3 (the head method's default), batch 32, 3 epochs, max length 128,
# 6% warm-up, no weight decay, the source run's seed. PEFT=path/to/peft picks the binary
# (default target/release/peft). Finished runs are kept: the same command again only
# scores them.
set -euo pipefail
out=$1 seeds=${2:-42} glue=${3:-../shared/data/glue}
peft=${PEFT:-target/release/peft}
model=$(bash scripts/get_minilm.sh models)
mkdir -p "$out"
metric() { python3 -c 'import json, sys; print(round(100 * json.load(sys.stdin)["metrics"][sys.argv[1]], 2))' "$1"; }
echo "method seed mrpc_dev_acc cola_probe_mcc stsb_probe_pearson"
for seed in ${seeds//,/ }; do
  for method in full child-d child-f layernorm; do
    recipe=$method
    case $method in child-d) recipe=child-tuning-d ;; child-f) recipe=child-tuning-f ;; esac
    run=$out/mrpc-$method-$seed
    if [ ! -f "$run/last.safetensors" ]; then
      "$peft" train --model "$model" --data-dir "$glue" --task mrpc --config "$recipe" \
        --seed "$seed" --output-dir "$run" --overwrite > "$run.log" 2>&1
    fi
    row="$method $seed $("$peft" eval --checkpoint "$run" --json | metric accuracy)"
    for task in cola stsb; do
      probe=$out/$task-head-from-$method-$seed
      if [ ! -f "$probe/last.safetensors" ]; then
        "$peft" train --init "$run" --data-dir "$glue" --task "$task" --method head \
          --lr 1e-3 --batch-size 32 --epochs 3 --max-seq-len 128 --warmup-ratio 0.06 \
          --weight-decay 0 --seed "$seed" --output-dir "$probe" --overwrite > "$probe.log" 2>&1
      fi
      case $task in cola) key=mcc ;; stsb) key=pearson ;; esac
      row="$row $("$peft" eval --checkpoint "$probe" --json | metric $key)"
    done
    echo "$row"
  done
done
