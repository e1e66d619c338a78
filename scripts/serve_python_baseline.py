"""The server a Python user would write for many adapters, to load beside `peft serve`:
FastAPI + transformers + PEFT, one PeftModel holding every adapter, `set_adapter` per
request under a lock, torch on 2 threads. Same /predict API as `peft serve` (TEI's shape).

    PYTHON scripts/serve_python_baseline.py --model MODEL_DIR --port 8090 NAME=RUN_DIR ...

RUN_DIR is a `peft train` run directory of LoRA over MODEL_DIR: its adapter_config.json and
adapter_model.safetensors (PEFT's format, the classifier in modules_to_save) are what
PEFT loads. PEFT holds adapters of one kind per model, hence LoRA only.
"""

import argparse
import json
import os
import threading

import torch
import uvicorn
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("adapters", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pairs = [a.split("=", 1) for a in args.adapters]
    with open(os.path.join(pairs[0][1], "config.json")) as f:
        labels = json.load(f).get("labels") or ["entailment", "not_entailment"]  # RTE's order
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(labels))
    model = PeftModel.from_pretrained(base, pairs[0][1], adapter_name=pairs[0][0])
    for name, path in pairs[1:]:
        model.load_adapter(path, adapter_name=name)
    model.eval()
    lock = threading.Lock()
    app = FastAPI()

    # A plain (sync) handler: FastAPI runs it on its thread pool, the lock keeps one
    # adapter active per forward.
    @app.post("/predict")
    def predict(body: dict = Body(...)):
        a, b = body["inputs"]
        enc = tok(a, b, truncation=True, max_length=128, return_tensors="pt")
        with lock, torch.no_grad():
            model.set_adapter(body["adapter"])
            logits = model(**enc).logits[0]
        p = torch.softmax(logits.double(), -1).tolist()
        out = sorted(({"label": labels[i], "score": s} for i, s in enumerate(p)), key=lambda x: -x["score"])
        return JSONResponse(out)

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
