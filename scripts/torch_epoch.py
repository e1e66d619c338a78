"""One training epoch of GLUE RTE in PyTorch + transformers, timed: the reference loop
that `peft train --epochs 1` is compared with (issue #7, "real epochs").

    python scripts/torch_epoch.py MODEL_DIR GLUE_DIR [--method full|layernorm] [--threads 2]
        [--device cpu|cuda]

Shuffled batches of 32 padded to the longest example in each batch (max length 128,
longest-first truncation), AdamW (lr 5e-5 full, 1e-3 layernorm), 6% warm-up then linear
decay, weight decay 0.01 except biases and LayerNorm, clipping at 1.0, dropout on. Prints
the seconds the loop took (tokenisation and loading excluded) and examples per second as
one JSON line.
"""

import argparse
import csv
import json
import os
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("glue")
    ap.add_argument("--method", default="full", choices=["full", "layernorm"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    with open(os.path.join(a.glue, "RTE", "train.tsv"), encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    labels = {"entailment": 0, "not_entailment": 1}
    tok = AutoTokenizer.from_pretrained(a.model)
    enc = [tok(r[1], r[2], truncation="longest_first", max_length=128) for r in rows]
    ys = [labels[r[3]] for r in rows]

    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2).to(dev)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad = a.method == "full" or "LayerNorm" in name or name.startswith("classifier")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in params if not no_decay(n)], "weight_decay": 0.01},
         {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0}],
        lr=5e-5 if a.method == "full" else 1e-3)
    order = torch.randperm(len(enc)).tolist()
    batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * len(batches)), len(batches))

    start = time.perf_counter()
    for b in batches:
        batch = tok.pad([enc[i] for i in b], padding="longest", return_tensors="pt").to(dev)
        out = model(**batch, labels=torch.tensor([ys[i] for i in b], device=dev))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "examples_per_s": len(enc) / seconds,
                      "steps": len(batches), "method": a.method}))


if __name__ == "__main__":
    main()
