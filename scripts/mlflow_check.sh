#!/usr/bin/env bash
# Train a short run against a real MLflow server and read it back with MLflow's client.
#
#   scripts/mlflow_check.sh PYTHON_WITH_MLFLOW [PEFT_BINARY]
#
# Starts `mlflow server` (sqlite backend, a free port, a temporary folder), trains the tiny
# BERT on a few RTE rows with `--report-to jsonl,mlflow --logging-steps 1`, then reads the
# run with mlflow.tracking.MlflowClient: its name, tags, the learning-rate param, every
# evaluation's accuracy at its step against the run's metrics.jsonl, and the run's files
# as artifacts (through the server's artifact proxy, byte for byte); exits non-zero on a
# difference. Needs ../shared/data/glue (RTE) beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$1"
PEFT="${2:-target/release/peft}"
DIR="$(mktemp -d)"
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$(dirname "$PY")/mlflow" server --backend-store-uri "sqlite:///$DIR/mlflow.db" \
  --artifacts-destination "$DIR/artifacts" --host 127.0.0.1 --port "$PORT" > "$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  sleep 1
done
mkdir -p "$DIR/glue/RTE"
head -65 ../shared/data/glue/RTE/train.tsv > "$DIR/glue/RTE/train.tsv"
head -33 ../shared/data/glue/RTE/dev.tsv > "$DIR/glue/RTE/dev.tsv"
MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT" "$PEFT" train --model tests/fixtures/tiny-bert \
  --data-dir "$DIR/glue" --task rte --method lora --max-steps 8 --eval-steps 4 --batch-size 8 \
  --max-seq-len 64 --logging-steps 1 --report-to jsonl,mlflow --mlflow-experiment peft-check \
  --output-dir "$DIR/run" 2>&1 | tail -2
"$PY" - "$DIR/run" "http://127.0.0.1:$PORT" <<'PYEOF'
import json, sys
from mlflow.tracking import MlflowClient
run_dir, uri = sys.argv[1], sys.argv[2]
c = MlflowClient(tracking_uri=uri)
exp = c.get_experiment_by_name("peft-check")
runs = c.search_runs([exp.experiment_id])
assert len(runs) == 1, runs
r = runs[0]
print("run", r.info.run_name, r.info.status, "tags", {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")})
assert r.info.status == "FINISHED"
assert r.data.tags["method"] == "lora" and r.data.tags["task"] == "rte"
cfg = json.load(open(f"{run_dir}/config.json"))
assert float(r.data.params["optimisation.lr"]) == cfg["train"]["optimisation"]["lr"]
got = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "eval/dev/accuracy")}
want = {json.loads(l)["step"]: json.loads(l)["dev"]["dev"]["accuracy"] for l in open(f"{run_dir}/metrics.jsonl")}
print("eval/dev/accuracy", got, "metrics.jsonl", want)
assert got == want, (got, want)
losses = c.get_metric_history(r.info.run_id, "train/loss")
print("train/loss points", len(losses), "params", len(r.data.params))
assert len(losses) == 8
import os, tempfile
names = sorted(a.path for a in c.list_artifacts(r.info.run_id))
print("artifacts", names)
for name in ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", "metrics.jsonl", "trainable.safetensors"]:
    assert name in names, (name, names)
    got = c.download_artifacts(r.info.run_id, name, tempfile.mkdtemp())
    assert open(got, "rb").read() == open(os.path.join(run_dir, name), "rb").read(), name
print("ok: MLflow holds the run as metrics.jsonl does, and its files byte for byte")
PYEOF
