"""LoReFT as pyreft's LoreftIntervention computes it, on tests/fixtures/tiny-bert: the
reference for peft's `--method loreft` (tests/it/adapters.rs).

    python scripts/loreft_reference.py

pyreft's formula and layers (Wu et al., 2024; stanfordnlp/pyreft, LoreftIntervention with
LowRankRotateLayer): Φ(h) = h + (W h + b − R h) R... written out here in PyTorch, since
pyreft pins older transformers: R's transpose is a (d × r) parameter under
torch.nn.utils.parametrizations.orthogonal (Householder map), the source an nn.Linear(d, r).
The only change from pyreft: `use_trivialization=False`, which peft follows (see
src/model/reft.rs: the same R, no random d × d basis to store).

Interventions on the output of both layers of tiny-bert (pyreft's `block_output`), at the
first and the last real token of each sequence (`f1+l1`, one intervention per group and
layer, pyreft's default without shared weights), rank 2; eval mode (no dropout). On the
golden batch (labels i mod 2) it writes tests/fixtures/loreft/reference.safetensors: each
intervention's tensors under peft's names (`encoder.layer.L.loreft.{first,last}.rotate` =
the parametrization's `original`, `….source.{weight,bias}`), the head, the logits, the
loss and every trainable gradient (`grad.<name>`), and each `R` as materialised
(`materialised.<name>`).
Made with torch 2.15, transformers 5.24.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import orthogonal
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "loreft"
RANK = 2


class LowRankRotateLayer(nn.Module):
    """pyreft's: a (d × r) weight, orthogonal at init; x ↦ x·weight."""

    def __init__(self, n, m):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, m))
        nn.init.orthogonal_(self.weight)

    def forward(self, x):
        return torch.matmul(x.to(self.weight.dtype), self.weight)


class Loreft(nn.Module):
    def __init__(self, d, r):
        super().__init__()
        self.rotate_layer = orthogonal(
            LowRankRotateLayer(d, r), orthogonal_map="householder", use_trivialization=False
        )
        self.learned_source = nn.Linear(d, r)

    def forward(self, base):
        rotated = self.rotate_layer(base)
        return base + torch.matmul(self.learned_source(base) - rotated, self.rotate_layer.weight.T)


def main():
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    ).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    d = model.config.hidden_size
    golden = load_file(TINY / "golden.safetensors")
    batch = {k: golden[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    lens = batch["attention_mask"].sum(1)
    rows = torch.arange(lens.shape[0])
    where = {"first": torch.zeros_like(lens), "last": lens - 1}
    interventions = {}
    for i, layer in enumerate(model.bert.encoder.layer):
        for group in ("first", "last"):
            interventions[f"encoder.layer.{i}.loreft.{group}"] = Loreft(d, RANK)

        def hook(module, args, output, i=i):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            for group in ("first", "last"):
                iv = interventions[f"encoder.layer.{i}.loreft.{group}"]
                pos = where[group]
                h[rows, pos] = iv(h[rows, pos])
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        layer.register_forward_hook(hook)
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    out = model(**batch, labels=labels)
    out.loss.backward()
    tensors = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
    params = {f"classifier.{n}": p for n, p in model.classifier.named_parameters()}
    for name, iv in interventions.items():
        params[f"{name}.rotate"] = iv.rotate_layer.parametrizations.weight.original
        params[f"{name}.source.weight"] = iv.learned_source.weight
        params[f"{name}.source.bias"] = iv.learned_source.bias
        tensors[f"materialised.{name}.rotate"] = iv.rotate_layer.weight.detach()
    for n, p in params.items():
        tensors[n] = p.detach().clone()
        tensors["grad." + n] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "reference.safetensors")
    print(f"loss {out.loss.item():.6f}; {len(params)} trainable tensors")
    for n in sorted(params):
        print(f"  {n} {list(params[n].shape)} |grad| {params[n].grad.abs().max().item():.3g}")


if __name__ == "__main__":
    main()
