#!/usr/bin/env bash
# Run directories as peft wrote them before its settings were grouped by concern
# (config.json flat): the fixtures in tests/fixtures/old-runs/ that tests/it/old_runs.rs
# reads with the current binary (eval, predict, merge, diff, report, --resume).
#
#   OLD=path/to/old/peft OLD_REV=e42d220 scripts/make_old_runs.sh
#
# OLD is a peft built from a commit before the grouping (the committed fixtures: e42d220,
# `cargo build --release` in a worktree). Paths in config.json are recorded as given, so
# this runs from the repository root with relative paths, as the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${OLD:?set OLD to a peft binary built before the settings were grouped}
out=tests/fixtures/old-runs
rm -rf "$out"
glue=$(mktemp -d)
mkdir -p "$glue/RTE"
# The RTE-format files tests/it/common.rs's write_rte(dir, 16, 8) writes (the tests write
# them again rather than commit them), so that eval scores the same examples.
python3 - "$glue/RTE" <<'PY'
import sys
W = ("the cat dog man woman sat ran saw house car city river red blue big small happy sad "
     "old new").split()
def sentence(i, n):
    return " ".join(W[(i * 7 + k * 13 + i * k) % len(W)] for k in range(n))
for split, n, off in [("train", 16, 0), ("dev", 8, 1000)]:
    with open(f"{sys.argv[1]}/{split}.tsv", "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for i in range(n):
            a, b = sentence(i + off, 3 + i % 9), sentence(i * 3 + off + 1, 2 + i % 4)
            label = "entailment" if b.split(" ")[0] in a.split(" ") else "not_entailment"
            f.write(f"{i}\t{a}\t{b}\t{label}\n")
PY
for method in lora layernorm; do
  "$OLD" train --model tests/fixtures/tiny-bert --task rte --data-dir "$glue" \
    --method "$method" --max-steps 2 --eval-steps 1 --batch-size 4 --max-seq-len 32 --seed 1 \
    --output-dir "$out/$method"
  # What the old binary scores: the current one must give the same logits.
  "$OLD" eval --checkpoint "$out/$method" --data-dir "$glue" --predictions "$out/$method.predictions.jsonl" >/dev/null
done
# Which version wrote them (OLD_REV: its commit).
printf "%s\n" "${OLD_REV:-unrecorded}" "$("$OLD" --version)" > "$out/VERSION"
