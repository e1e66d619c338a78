#!/usr/bin/env bash
# Where a training step's time goes: `perf record` of `peft bench` (training steps only) and
# each sample put in one bucket by its call stack.
#
#   scripts/profile_step.sh MODEL_DIR METHOD BATCH SEQ [PEFT]
#
# Buckets, first match wins, leaf first: optimizer (AdamW), allocation (page faults on
# fresh memory, memset, malloc/free), attention (our fused attention, its gemms included),
# gemm (the linear layers' matrix products), elementwise (our SIMD rows: LayerNorm, GELU,
# softmax, dropout; candle's elementwise maps), other (thread pools, barriers, the rest).
# Needs perf and a release build with debug info (the default release profile here).
set -eu
MODEL=$1 METHOD=$2 BATCH=$3 SEQ=$4 PEFT=${5:-target/release/peft}
DATA=$(mktemp)
perf record -F 199 --call-graph dwarf,32768 -o "$DATA" "$PEFT" bench --model "$MODEL" --method "$METHOD" \
  --batch "$BATCH" --seq "$SEQ" --warmup 1 --steps 3 --no-inference >&2
perf script -i "$DATA" 2>/dev/null | python3 -c '
import re, sys
buckets = ["optimizer", "allocation", "attention", "gemm", "elementwise", "other"]
rules = [
    ("optimizer", r"adamw"),
    ("allocation", r"clear_page|page_fault|do_anonymous_page|memset|_int_malloc|_int_free|malloc|munmap|mmap"),
    ("attention", r"kernels::attention"),
    ("gemm", r"gemm"),
    ("elementwise", r"kernels::simd|binary_map|unary_map|cpu_backend"),
]
counts = dict.fromkeys(buckets, 0)
stack = []
def flush():
    if not stack:
        return
    text = "\n".join(stack)
    leaf = stack[0]
    for name, pat in rules:
        # allocation judged by the leaf alone; the rest by any frame
        where = leaf if name == "allocation" else text
        if re.search(pat, where):
            counts[name] += 1
            break
    else:
        counts["other"] += 1
    stack.clear()
for line in sys.stdin:
    if not line.strip():
        flush()
    elif line.startswith((" ", "\t")):
        stack.append(line.strip())
flush()
total = sum(counts.values())
print(f"{total} samples")
for b in buckets:
    print(f"{b:<12} {100 * counts[b] / total:5.1f}%")
'
rm -f "$DATA"
