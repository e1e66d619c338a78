"""A model directory with random weights of a real shape, for speed and memory checks.

    python scripts/random_model.py SHAPE_DIR OUT_DIR

SHAPE_DIR holds a real `config.json` and tokenizer files and no weights (e.g.
`../shared/models/roberta-large-shape`). transformers builds the base model from the config
with its own initialisation (seed 0) and writes `model.safetensors` beside copies of the
config and tokenizer files, so `peft bench`, `scripts/bench_torch.py` and
`scripts/compare_speed.py` load the same weights. Only the shapes matter for speed; the
numbers the model computes mean nothing.
"""

import argparse
import os
import shutil


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape_dir")
    ap.add_argument("out_dir")
    a = ap.parse_args()
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(a.shape_dir)
    model = AutoModel.from_config(config)
    os.makedirs(a.out_dir, exist_ok=True)
    model.save_pretrained(a.out_dir, safe_serialization=True)
    for name in os.listdir(a.shape_dir):
        if name != "config.json" and os.path.isfile(os.path.join(a.shape_dir, name)):
            shutil.copy(os.path.join(a.shape_dir, name), os.path.join(a.out_dir, name))
    n = sum(p.numel() for p in model.parameters())
    print(f"{a.out_dir}: {config.model_type}, {n:,} parameters")


if __name__ == "__main__":
    main()
