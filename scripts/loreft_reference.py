"""LoReFT as pyreft's LoreftIntervention computes it, on tests/fixtures/tiny-bert, transcribed
into PyTorch: the independent check of tests/fixtures/loreft/reference.safetensors, which
pyreft itself now makes (scripts/loreft_pyreft.py, from its own venv; this transcription made
the fixture before).

    python scripts/loreft_reference.py            # check the fixture (the default)
    python scripts/loreft_reference.py --write    # overwrite it with the transcription's own

Checking, it puts the fixture's parameters (R's `original`, W, b, the head) into the
transcription, runs the golden batch, and prints the largest differences from the fixture's
logits, loss, gradients and materialised R; it fails past the Rust test's bounds (1e-5 on
logits and loss, 1e-4 relative on gradients, 1e-6 on R).

pyreft's formula and layers (Wu et al., 2024; stanfordnlp/pyreft, LoreftIntervention with
LowRankRotateLayer): Φ(h) = h + (W h + b − R h) R... written out here in PyTorch, since
pyreft pins older transformers: R's transpose is a (d × r) parameter under
torch.nn.utils.parametrizations.orthogonal (Householder map), the source an nn.Linear(d, r).
The only change from pyreft: `use_trivialization=False`, which peft follows (see
src/model/reft.rs: the same R, no random d × d basis to store).

Interventions on the output of both layers of tiny-bert (pyreft's `block_output`), at the
first and the last real token of each sequence (`f1+l1`, one intervention per group and
layer, pyreft's default without shared weights), rank 2; eval mode (no dropout). On the
golden batch (labels i mod 2) `--write` writes tests/fixtures/loreft/reference.safetensors: each
intervention's tensors under peft's names (`encoder.layer.L.loreft.{first,last}.rotate` =
the parametrization's `original`, `….source.{weight,bias}`), the head, the logits, the
loss and every trainable gradient (`grad.<name>`), and each `R` as materialised
(`materialised.<name>`).
Made with torch 2.15, transformers 5.24; the check last run with torch 2.15.0,
transformers 5.25.0.
"""

import sys
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
    params = {f"classifier.{n}": p for n, p in model.classifier.named_parameters()}
    for name, iv in interventions.items():
        params[f"{name}.rotate"] = iv.rotate_layer.parametrizations.weight.original
        params[f"{name}.source.weight"] = iv.learned_source.weight
        params[f"{name}.source.bias"] = iv.learned_source.bias
    if "--write" not in sys.argv:
        return check(model, batch, labels, params, interventions)
    out = model(**batch, labels=labels)
    out.loss.backward()
    tensors = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
    for name, iv in interventions.items():
        tensors[f"materialised.{name}.rotate"] = iv.rotate_layer.weight.detach()
    for n, p in params.items():
        tensors[n] = p.detach().clone()
        tensors["grad." + n] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "reference.safetensors")
    print(f"loss {out.loss.item():.6f}; {len(params)} trainable tensors")
    for n in sorted(params):
        print(f"  {n} {list(params[n].shape)} |grad| {params[n].grad.abs().max().item():.3g}")


def check(model, batch, labels, params, interventions):
    """The fixture's parameters in the transcription: its outputs against the fixture's."""
    ref = load_file(OUT / "reference.safetensors")
    assert torch.equal(ref["labels"], labels), "the fixture's labels are not i mod 2"
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ref[n])
    out = model(**batch, labels=labels)
    out.loss.backward()
    worst = {
        "logits": (out.logits.detach() - ref["logits"]).abs().max().item(),
        "loss": (out.loss.detach().reshape(1) - ref["loss"]).abs().max().item(),
        "R": max(
            (iv.rotate_layer.weight - ref[f"materialised.{name}.rotate"]).abs().max().item()
            for name, iv in interventions.items()
        ),
        "gradients (relative)": max(
            (
                (p.grad - ref["grad." + n]).abs().max()
                / ref["grad." + n].abs().max().clamp_min(1e-6)
            ).item()
            for n, p in params.items()
        ),
        "gradients (absolute)": max(
            (p.grad - ref["grad." + n]).abs().max().item() for n, p in params.items()
        ),
    }
    bounds = {"logits": 1e-5, "loss": 1e-5, "R": 1e-6, "gradients (relative)": 1e-4}
    for what, d in worst.items():
        print(f"transcription vs fixture, {what}: max diff {d:.3g}")
    bad = [w for w, b in bounds.items() if not worst[w] < b]
    if bad:
        sys.exit(f"the transcription differs from the fixture in {', '.join(bad)}")


if __name__ == "__main__":
    main()
