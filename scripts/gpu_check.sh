#!/usr/bin/env bash
# The checks of the `cuda` feature on a machine with an NVIDIA GPU and a Python with torch,
# transformers and peft; run from the repo root:
#
#   scripts/gpu_check.sh PEFT PARITY GLUE_DIR MINILM_DIR OUT_DIR
#
# PEFT is `cargo build --release --features cuda`'s binary, PARITY the integration tests built
# the same way (`cargo test --release --features cuda --test it --no-run`; step 1 runs their
# parity module), GLUE_DIR holds
# RTE, MINILM_DIR all-MiniLM-L6-v2's config and tokenizer (the weights are drawn at random
# here: speed depends on shapes only). Each step runs even if an earlier one failed; the
# log and the runs' metrics land in OUT_DIR.
#   1. tests/it/parity.rs on the GPU: forward and every gradient against transformers.
#   2. every method trains a few steps on the GPU (tiny BERT), and a short full run gives
#      the same losses on the GPU as on the CPU.
#   3. one RTE epoch, full and layernorm, peft against scripts/torch_epoch.py.
#   2b. --precision bf16: three methods, and 200 steps of f32 against bf16 (losses within 1%).
#   4. scripts/compare_speed.py --device cuda: steps at batch 32 x 128.
#   5. the same with --precision bf16 against torch.autocast at bert-base 32 x 128 and
#      roberta-large 16 x 128 (full, layernorm, inference; peak GPU memory by nvidia-smi).
# QUICK=1 runs steps 1, 2 and 2b only, for a short device budget.
set -u
PEFT=$1 PARITY=$2 GLUE=$3 MINILM=$4 OUT=$5
mkdir -p "$OUT"
TMP=$(mktemp -d)
TINY=tests/fixtures/tiny-bert
step() { echo; echo "== $* ($(date +%T))"; }

step "1. parity on the GPU"
nvidia-smi -L
PEFT_TEST_DEVICE=cuda timeout 300 "$PARITY" parity:: --test-threads 1 || echo "FAILED: parity on cuda"

step "2. every method on the GPU, tiny BERT, 6 steps"
for m in full bitfit layernorm lora ina child-f child-d fisher-layernorm random-layernorm random; do
  extra=$(case $m in child-d) echo "--fisher-samples 32";; fisher-layernorm) echo "--fisher-samples 32 --fraction 0.2";;
    random*) echo "--fraction 0.2";; esac)
  timeout 120 "$PEFT" train --device cuda --model $TINY --data-dir "$GLUE" --task rte --method $m $extra \
    --max-steps 6 --batch-size 8 --max-seq-len 64 --output-dir "$TMP/m-$m" >"$TMP/m-$m.log" 2>&1 \
    && echo "ok $m: $(tail -1 "$TMP/m-$m/metrics.jsonl" | cut -c1-160)" \
    || { echo "FAILED: $m"; tail -5 "$TMP/m-$m.log"; }
done
timeout 60 "$PEFT" eval --device cuda --checkpoint "$TMP/m-lora" || echo "FAILED: eval on cuda"
timeout 120 "$PEFT" fisher --device cuda --model $TINY --data-dir "$GLUE" --task rte --samples 32 --max-seq-len 64 \
  --output "$TMP/fisher" 2>&1 | tail -4 || echo "FAILED: fisher on cuda"
for d in cpu cuda; do
  timeout 300 "$PEFT" train --device $d --model $TINY --data-dir "$GLUE" --task rte --method full \
    --max-steps 40 --eval-steps 20 --batch-size 16 --max-seq-len 64 --output-dir "$TMP/same-$d" >"$TMP/same-$d.log" 2>&1 \
    || { echo "FAILED: 40 steps on $d"; tail -5 "$TMP/same-$d.log"; }
done
python3 - "$TMP" <<'EOF'
import json, sys
rows = {d: [json.loads(l) for l in open(f"{sys.argv[1]}/same-{d}/metrics.jsonl")] for d in ("cpu", "cuda")}
for c, g in zip(rows["cpu"], rows["cuda"]):
    print(f"step {c.get('step')}: train loss cpu {c.get('train_loss')} cuda {g.get('train_loss')}; "
          f"dev cpu {c['dev']['dev']} cuda {g['dev']['dev']}")
EOF

step "2b. --precision bf16 on the GPU: methods, and 200 steps against f32"
for m in full layernorm lora; do
  timeout 120 "$PEFT" train --device cuda --precision bf16 --model $TINY --data-dir "$GLUE" --task rte \
    --method $m --max-steps 6 --batch-size 8 --max-seq-len 64 --output-dir "$TMP/bf16-$m" >"$TMP/bf16-$m.log" 2>&1 \
    && echo "ok bf16 $m: $(tail -1 "$TMP/bf16-$m/metrics.jsonl" | cut -c1-160)" \
    || { echo "FAILED: bf16 $m"; tail -5 "$TMP/bf16-$m.log"; }
done
# The issue's check: bf16 losses within 1% of f32's over 200 steps (random MiniLM weights,
# made here and used again by steps 3 and 4; SST-2 where it was carried, else RTE).
TASK=$([ -d "$GLUE/SST-2" ] && echo sst2 || echo rte)
python3 - "$MINILM" "$TMP/minilm" <<'EOF2'
import shutil, sys, torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
BertModel(BertConfig.from_pretrained(sys.argv[1])).save_pretrained(sys.argv[2])
for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(f"{sys.argv[1]}/{f}", sys.argv[2])
EOF2
for p in f32 bf16; do
  timeout 240 "$PEFT" train --device cuda --precision $p --model "$TMP/minilm" --data-dir "$GLUE" --task $TASK \
    --method full --max-steps 200 --eval-steps 50 --batch-size 32 --max-seq-len 128 --lr 5e-5 \
    --output-dir "$TMP/p200-$p" >"$TMP/p200-$p.log" 2>&1 || { echo "FAILED: 200 steps $p"; tail -5 "$TMP/p200-$p.log"; }
  cp "$TMP/p200-$p/metrics.jsonl" "$OUT/p200-$p.jsonl" 2>/dev/null
done
python3 - "$TMP" <<'EOF2'
import json, sys
rows = {p: [json.loads(l) for l in open(f"{sys.argv[1]}/p200-{p}/metrics.jsonl")] for p in ("f32", "bf16")}
worst = 0.0
for a, b in zip(rows["f32"], rows["bf16"]):
    d = abs(a["train_loss"] - b["train_loss"]) / a["train_loss"]
    worst = max(worst, d)
    print(f"step {a['step']}: train loss f32 {a['train_loss']:.5f} bf16 {b['train_loss']:.5f} ({d:.2%})")
print(("ok" if worst < 0.01 else "FAILED") + f": bf16 against f32, worst {worst:.2%} (target < 1%)")
EOF2

if [ "${QUICK:-0}" = 1 ]; then step "done (QUICK=1: steps 3 to 5 skipped)"; exit 0; fi

step "3. one RTE epoch on the GPU, step 2b's random MiniLM weights"
for m in full layernorm; do
  lr=$([ $m = full ] && echo 5e-5 || echo 1e-3)
  timeout 300 "$PEFT" train --device cuda --model "$TMP/minilm" --data-dir "$GLUE" --task rte --method $m \
    --epochs 1 --batch-size 32 --max-seq-len 128 --lr $lr --warmup-ratio 0.06 --weight-decay 0.01 \
    --max-grad-norm 1.0 --output-dir "$TMP/epoch-$m" >"$TMP/epoch-$m.log" 2>&1 \
    && python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][-1]; print('peft $m epoch s', 2490 / r['train_examples_per_s'])" "$TMP/epoch-$m/metrics.jsonl" \
    || { echo "FAILED: epoch $m"; tail -5 "$TMP/epoch-$m.log"; }
  cp "$TMP/epoch-$m/metrics.jsonl" "$OUT/epoch-$m.jsonl" 2>/dev/null
  timeout 300 python3 scripts/torch_epoch.py "$TMP/minilm" "$GLUE" --method $m --device cuda 2>/dev/null \
    || echo "FAILED: torch epoch $m"
done

step "4. compare_speed on the GPU"
timeout 240 python3 scripts/compare_speed.py "$TMP/minilm" --peft "$PEFT" --device cuda --rounds 2 \
  --steps 20 --threads 16 || echo "FAILED: compare_speed"
step "5. bf16 against torch.autocast(bfloat16): bert-base 32 x 128, roberta-large 16 x 128"
python3 - "$TMP" <<'EOF2'
import sys, torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel
torch.manual_seed(0)
BertModel(BertConfig()).save_pretrained(f"{sys.argv[1]}/bert-base")  # bert-base-uncased's shape
RobertaModel(RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
             bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)).save_pretrained(f"{sys.argv[1]}/roberta-large")
EOF2
for shape in "bert-base 32" "roberta-large 16"; do
  set -- $shape
  timeout 200 python3 scripts/compare_speed.py "$TMP/$1" --peft "$PEFT" --device cuda --precision bf16 \
    --batch $2 --seq 128 --rounds 1 --steps 10 --threads 16 --method full,layernorm \
    | tee "$OUT/speed-bf16-$1.md" || echo "FAILED: compare_speed bf16 $1"
done
step "done"
