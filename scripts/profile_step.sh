#!/usr/bin/env bash
# Where a training step's time goes: `perf record` of `peft bench`'s timed training steps
# (not the loading or the warm-up step) and each sample put in one bucket by its call stack.
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
# Only the timed steps: a dry run measures the start (loading, the warm-up step), and
# perf starts sampling that long after it starts the process.
ARGS=(bench --model "$MODEL" --method "$METHOD" --batch "$BATCH" --seq "$SEQ" --warmup 1 --no-inference)
t0=$(date +%s%N)
STEP_MS=$("$PEFT" "${ARGS[@]}" --steps 1 | awk -v m="$METHOD" '$1 == m {printf "%d", $2}')
DELAY_MS=$(( ($(date +%s%N) - t0) / 1000000 - STEP_MS ))
echo "start (load + warm-up) ${DELAY_MS} ms, one step ${STEP_MS} ms" >&2
perf record -F 199 -D "$DELAY_MS" --call-graph dwarf,32768 -o "$DATA" "$PEFT" "${ARGS[@]}" --steps 3 >&2
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
