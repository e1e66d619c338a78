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
mkdir -p "$out/glue/RTE"
# A few synthetic sentence pairs in RTE's layout (not GLUE's text).
python3 - "$out/glue/RTE" <<'PY'
import sys, random
words = "the a cat dog sat on mat ran fast slow red blue house tree bird sang".split()
rng = random.Random(7)
for split, n in [("train", 16), ("dev", 8)]:
    with open(f"{sys.argv[1]}/{split}.tsv", "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for i in range(n):
            a = " ".join(rng.choice(words) for _ in range(3 + i % 5))
            b = " ".join(rng.choice(words) for _ in range(2 + i % 3))
            label = "entailment" if b.split()[0] in a.split() else "not_entailment"
            f.write(f"{i}\t{a}\t{b}\t{label}\n")
PY
for method in lora layernorm; do
  "$OLD" train --model tests/fixtures/tiny-bert --task rte --data-dir "$out/glue" \
    --method "$method" --max-steps 2 --eval-steps 1 --batch-size 4 --max-seq-len 32 --seed 1 \
    --output-dir "$out/$method"
  # What the old binary scores: the current one must give the same logits.
  "$OLD" eval --checkpoint "$out/$method" --predictions "$out/$method.predictions.jsonl" >/dev/null
done
# Which version wrote them (OLD_REV: its commit).
printf "%s\n" "${OLD_REV:-unrecorded}" "$("$OLD" --version)" > "$out/VERSION"
