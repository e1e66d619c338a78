"""Train-mode goldens: transformers with dropout on, drawing the masks peft draws.

    /work/venv/bin/python tests/golden/make_dropout_golden.py    # every tiny fixture

The eval-mode goldens (make_golden.py) leave every dropout path unchecked. Here each tiny
checkpoint runs in train mode with torch's `F.dropout` replaced by peft's mask: peft draws
call n of a forward with seed s from the key mix(s·φ ⊕ n) and keeps element i of the
contiguous tensor iff mix(key ⊕ i·φ) < ⌊keep·2⁶⁴⌋, scaling survivors by 1/keep in f32
(src/kernels/dropout.rs, simd.rs; φ = 0x9e3779b97f4a7c15, mix = splitmix64's finaliser).
A dropout with p = 0 draws nothing on either side. So both sides drop the same elements
exactly when they call dropout in the same order on tensors of the same layout, and the
test (tests/it/parity.rs) then compares logits, loss and every gradient.

Writes tests/fixtures/tiny-<kind>/train_golden.safetensors: `seed`, `calls` (how many
masks the forward drew), `logits`, `loss` and `grad.<name>` for every parameter, on the
golden batch and labels of golden.safetensors, eager attention. Made with torch 2.15.0,
transformers 5.25.0.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
KINDS = ["bert", "roberta", "electra", "deberta", "deberta-v2"]
SEED = 7
PHI = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def mix(z):
    """splitmix64's finaliser on numpy uint64 (wrapping) or a Python int."""
    if isinstance(z, int):
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & M64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & M64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class PeftMasks:
    """F.dropout with peft's masks, call after call."""

    def __init__(self, seed):
        self.seed, self.calls = seed, 0
        self.original = F.dropout

    def __call__(self, x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return x
        n, self.calls = self.calls, self.calls + 1
        key = mix(((self.seed * PHI) & M64) ^ n)
        keep = 1.0 - p
        threshold = np.uint64(int(keep * 18446744073709551616.0))
        i = np.arange(x.numel(), dtype=np.uint64)
        with np.errstate(over="ignore"):
            kept = mix(np.uint64(key) ^ (i * np.uint64(PHI))) < threshold
        mask = torch.from_numpy(kept.reshape(tuple(x.shape))).to(x.dtype)
        return x * (mask * torch.tensor(np.float32(1.0 / keep)))


def build(kind):
    d = ROOT / f"tiny-{kind}"
    g = load_file(d / "golden.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained(d, attn_implementation="eager")
    model.train()
    masks = PeftMasks(SEED)
    F.dropout = masks
    torch.nn.functional.dropout = masks
    try:
        kwargs = {"input_ids": g["input_ids"].long(), "attention_mask": g["attention_mask"].long()}
        if model.config.type_vocab_size > 0:
            kwargs["token_type_ids"] = g["token_type_ids"].long()
        out = model(**kwargs, labels=g["labels"].long())
        out.loss.backward()
    finally:
        F.dropout = masks.original
        torch.nn.functional.dropout = masks.original
    tensors = {
        "seed": torch.tensor([SEED]),
        "calls": torch.tensor([masks.calls]),
        "logits": out.logits.detach().clone(),
        "loss": out.loss.detach().reshape(1).clone(),
    }
    for name, p in model.named_parameters():
        if p.grad is not None:
            tensors["grad." + name] = p.grad.detach().clone()
    save_file(tensors, d / "train_golden.safetensors")
    print(f"{kind}: {masks.calls} masks, loss {out.loss.item():.6f}")


if __name__ == "__main__":
    for kind in sys.argv[1:] or KINDS:
        build(kind)
