"""LoRA+ learning-rate groups as PEFT makes them, for tests/fixtures/loraplus/groups.json.

    python scripts/loraplus_groups.py tests/fixtures/tiny-bert tests/fixtures/loraplus/groups.json

Builds a LoRA and a DoRA sequence classifier (r 2 on query and value) of the tiny BERT with
PEFT, groups its trainable tensors with PEFT's own `create_loraplus_optimizer` (ratio 16,
AdamW), and writes each tensor's learning rate over the base rate and its number of
dimensions, under peft's names (no `bert.` prefix, no `.default`, the head outside
`modules_to_save`). Needs torch, transformers and peft (0.21.2 made the committed file).
"""

import json
import sys

import peft
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers import AutoModelForSequenceClassification

RATIO = 16.0
LR = 1e-3


def ours(name: str) -> str:
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".modules_to_save.default.", ".")
    name = name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
    return name.replace(".default.", ".")


def groups(model_dir: str, dora: bool) -> dict:
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, ignore_mismatched_sizes=True)
    cfg = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"],
                     use_dora=dora)
    model = get_peft_model(base, cfg)
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO)
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in opt.param_groups:
        for p in g["params"]:
            out[ours(names[id(p)])] = {"dims": p.dim(), "lr_ratio": g["lr"] / LR}
    return out


def main() -> None:
    model_dir, dest = sys.argv[1:3]
    doc = {
        "peft": peft.__version__,
        "ratio": RATIO,
        "lora": groups(model_dir, False),
        "dora": groups(model_dir, True),
    }
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
