#!/usr/bin/env bash
# Do two peft binaries compute the same arithmetic? Each trains the same short runs on RTE
# (12 steps of full fine-tuning with dropout, layernorm, LoRA, DoRA, IA3 and LoReFT) from
# all-MiniLM-L6-v2, and the trained tensors must be byte-identical.
#   scripts/same_weights.sh OLD_PEFT NEW_PEFT [GLUE_DIR]     (run from the repo root)
set -euo pipefail
old=$1 new=$2 glue=${3:-../shared/data/glue}
model=$(bash scripts/get_minilm.sh models)
tmp=$(mktemp -d)
status=0
for method in full layernorm lora dora ia3 loreft; do
  for side in old new; do
    bin=$old; [ $side = new ] && bin=$new
    "$bin" train --model "$model" --data-dir "$glue" --task rte --method $method \
      --max-steps 12 --batch-size 32 --max-seq-len 128 --lr 5e-5 --warmup-ratio 0.06 \
      --seed 42 --output-dir "$tmp/$method-$side" > "$tmp/$method-$side.log" 2>&1
  done
  if cmp -s "$tmp/$method-old/last.safetensors" "$tmp/$method-new/last.safetensors"; then
    echo "$method: 12 steps, byte-identical tensors ($(stat -c %s "$tmp/$method-new/last.safetensors") bytes)"
  else
    echo "$method: the trained tensors DIFFER"; status=1
  fi
done
rm -rf "$tmp"
exit $status
