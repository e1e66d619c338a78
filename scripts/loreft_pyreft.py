"""LoReFT made by pyreft itself (stanfordnlp/pyreft's LoreftIntervention, ReftConfig and
get_reft_model over pyvene) on tests/fixtures/tiny-bert: the reference for peft's
`--method loreft` (tests/it/adapters.rs, `loreft_matches_pyreft`).

pyreft pins transformers 4.45.1, so it runs from its own venv outside the repository
(pyreft is never copied into it); the pins on datasets, fsspec and gcsfs only spare pip's
resolver hours of backtracking among pyreft's unused dependencies:

    python3 -m venv /work/venv-reft
    /work/venv-reft/bin/pip install pyreft "datasets==4.0.0" "fsspec==2025.3.0" "gcsfs==2025.3.0"
    /work/venv-reft/bin/python scripts/loreft_pyreft.py
    # or, writing nothing, pyreft on another fixture's parameters against its outputs, e.g.
    # the transcription's (git show c8d3732:tests/fixtures/loreft/reference.safetensors):
    /work/venv-reft/bin/python scripts/loreft_pyreft.py --against OTHER.safetensors

Made with pyreft 0.1.0, pyvene 0.1.8, torch 2.15.0 (PyPI's +cu132 wheel, run on the CPU),
transformers 4.45.1.

The model as pyreft's GLUE recipe builds it (examples/loreft/train.py): one
LoreftIntervention(embed_dim, low_rank_dimension=2, dropout=0, dtype=float32) per layer
and group, on the output of each layer (pyvene knows no BERT, so the component is the
module path `bert.encoder.layer[L].output`, as the recipe's `roberta.encoder.layer[%s].output`
for RoBERTa), with `f1+l1` without `share_weights` doubling the layer list (interventions
L0 first, L1 first, L0 last, L1 last); positions from pyreft's own
`get_intervention_locations` with `last_position` the number of real tokens, as the
recipe's LoReftGLUEDataset (so [CLS] and the final [SEP]), handed to pyvene as
`unit_locations` as ReftTrainerForSequenceClassification hands them; the head trainable
(`--allow_cls_grad`); the loss as that trainer's (CrossEntropyLoss over the logits).
Deviations from the recipe, none in the function: eval mode (no dropout: the recipe trains
with the model's own dropout on, and LoreftIntervention's 0.05; scripts/loreft_pyreft_train.py
makes that train-mode fixture); the golden batch's token_type_ids passed (BERT's
sentence pairs; the recipe's RoBERTa has none); labels i mod 2.

One deviation in how R is parametrized, not in what it computes: pyreft wraps its
LowRankRotateLayer in torch's `orthogonal` with its defaults (the Householder map for a
d × r matrix, `use_trivialization=True`), which trains a tensor that starts at −I (d × r)
against a random d × d orthogonal `base` buffer, whose first r columns are the initial R.
peft trains R's own Householder vectors instead (torch's `use_trivialization=False`, see
src/model/reft.rs), so its `rotate` is that parametrization's `original`. Here each
intervention is made by pyreft (torch seed 0), then its parametrization is swapped in
place for `orthogonal(..., orthogonal_map="householder", use_trivialization=False)` of
the R pyreft drew (torch's remove_parametrizations keeps R; its QR gives the vectors); the
forward is pyreft's own, unchanged. As a check the script also runs pyreft unmodified
(trivialization on) with the same R, W, b and head: logits, loss and the gradients of W, b
and the head agree with the fixture (printed); the gradient of R's trained tensor does
not exist in peft's terms there, as that tensor is another one.

Writes tests/fixtures/loreft/reference.safetensors under peft's names: per layer L and group
`encoder.layer.L.loreft.{first,last}.rotate` (the parametrization's `original`, d × r),
`….source.weight` (r × d), `….source.bias` (r), `classifier.{weight,bias}`; `logits`,
`loss`, `labels`; `grad.<name>` for each of those 14 tensors; `materialised.<…>.rotate`, R
as torch materialises it (d × r, R's rows as columns).
"""

import sys
from importlib.metadata import version
from pathlib import Path

import pyreft
import torch
import transformers
from pyreft.dataset import get_intervention_locations
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "loreft"
RANK = 2
FIRST_N, LAST_N = 1, 1  # f1+l1


def build(seed=0, dropout=0.0):
    """tiny-bert with pyreft's interventions, as the GLUE recipe builds them, each with
    LoreftIntervention's `dropout` (0 here; scripts/loreft_pyreft_train.py uses the
    recipe's 0.05). Returns the ReftModel and {peft name of an intervention: the pyreft
    intervention}."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )
    d = model.config.hidden_size
    layers = list(range(model.config.num_hidden_layers))
    layers += layers  # train.py: `if "+" in position and not share_weights: layers += layers`
    groups = ["first"] * (len(layers) // 2) + ["last"] * (len(layers) // 2)
    representations = [
        {
            "component": f"bert.encoder.layer[{l}].output",
            "low_rank_dimension": RANK,
            "intervention": pyreft.LoreftIntervention(
                embed_dim=d,
                low_rank_dimension=RANK,
                dropout=dropout,
                dtype=torch.float32,
                act_fn=None,
                device="cpu",
                add_bias=True,
            ),
        }
        for l in layers
    ]
    names = [f"encoder.layer.{l}.loreft.{g}" for l, g in zip(layers, groups)]
    reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=representations))
    # train.py with --allow_cls_grad: the head trains too.
    for p in reft.model.classifier.parameters():
        p.requires_grad_(True)
    # pyvene keeps the interventions it was handed, in the config's order.
    ivs = list(reft.interventions.values())
    assert [id(v) for v in ivs] == [id(r["intervention"]) for r in representations]
    return reft, dict(zip(names, ivs))


def untrivialize(iv):
    """Swap pyreft's `orthogonal` (trivialization on) for peft's parametrization
    (`use_trivialization=False`) of the same R, in place."""
    parametrize.remove_parametrizations(iv.rotate_layer, "weight", leave_parametrized=True)
    orthogonal(iv.rotate_layer, orthogonal_map="householder", use_trivialization=False)


def golden():
    g = load_file(TINY / "golden.safetensors")
    batch = {k: g[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    return batch, labels


def unit_locations(batch, n_interventions):
    """pyreft's positions for f1+l1, as LoReftGLUEDataset and the trainer give them:
    (interventions, batch, positions)."""
    lens = batch["attention_mask"].sum(1).tolist()
    per_example = [
        get_intervention_locations(
            last_position=n,
            first_n=FIRST_N,
            last_n=LAST_N,
            pad_mode="last",
            num_interventions=n_interventions,
            share_weights=False,
        )
        for n in lens
    ]
    locs = torch.tensor(per_example)  # (batch, interventions, positions)
    return {"sources->base": (None, locs.permute(1, 0, 2).tolist())}


def run(reft, batch, labels):
    """Forward in eval mode and the loss as ReftTrainerForSequenceClassification's."""
    reft.eval()
    _, out = reft(
        dict(batch),
        unit_locations=unit_locations(batch, len(reft.interventions)),
        labels=labels,
    )
    loss = torch.nn.CrossEntropyLoss()(out.logits.view(-1, 2), labels.view(-1))
    loss.backward()
    return out.logits.detach(), loss.detach()


def params_of(reft, ivs):
    """peft's name -> the parameter of pyreft's model it stands for."""
    params = {f"classifier.{n}": p for n, p in reft.model.classifier.named_parameters()}
    for name, iv in ivs.items():
        params[f"{name}.source.weight"] = iv.learned_source.weight
        params[f"{name}.source.bias"] = iv.learned_source.bias
        params[f"{name}.rotate"] = iv.rotate_layer.parametrizations.weight.original
    return params


def stock_pyreft_check(tensors, batch, labels):
    """pyreft unmodified (trivialization on) with the fixture's R, W, b and head: logits,
    loss and every gradient but R's must be the fixture's."""
    reft, ivs = build(seed=1)  # another draw, another base: it must not matter
    with torch.no_grad():
        for name, iv in ivs.items():
            R = tensors[f"materialised.{name}.rotate"]
            # pyreft's own load_state_dict route: R in the base's first r columns, with
            # the rest completed to an orthogonal basis so the buffer stays a rotation.
            full = torch.cat([R, torch.randn(R.shape[0], R.shape[0] - R.shape[1])], 1)
            q, rr = torch.linalg.qr(full)
            q = q * rr.diagonal().sign()
            q[:, : R.shape[1]] = R
            iv.rotate_layer.parametrizations.weight[0].base.copy_(q)
            iv.learned_source.weight.copy_(tensors[f"{name}.source.weight"])
            iv.learned_source.bias.copy_(tensors[f"{name}.source.bias"])
            assert (iv.rotate_layer.weight - R).abs().max() < 1e-6
        for n, p in reft.model.classifier.named_parameters():
            p.copy_(tensors[f"classifier.{n}"])
    logits, loss = run(reft, batch, labels)
    params = params_of(reft, ivs)
    worst = {
        "logits": (logits - tensors["logits"]).abs().max().item(),
        "loss": (loss.reshape(1) - tensors["loss"]).abs().max().item(),
    }
    grads = max(
        relative(p.grad, tensors["grad." + n])
        for n, p in params.items()
        if not n.endswith(".rotate")
    )
    worst["W, b, head gradients (relative)"] = grads
    return worst


def relative(got, want):
    """As the Rust test: max |got − want| over max(max |want|, 1e-6)."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


def against(path, batch, labels):
    """Another fixture's parameters (e.g. the transcription's, scripts/loreft_reference.py
    --write) in pyreft's model (peft's parametrization): its outputs against that file's."""
    ref = load_file(path)
    assert torch.equal(ref["labels"], labels), "that fixture's labels are not i mod 2"
    reft, ivs = build(seed=0)
    for iv in ivs.values():
        untrivialize(iv)
    params = params_of(reft, ivs)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(ref[n])
    logits, loss = run(reft, batch, labels)
    return {
        "logits": (logits - ref["logits"]).abs().max().item(),
        "loss": (loss.reshape(1) - ref["loss"]).abs().max().item(),
        "R": max(
            (iv.rotate_layer.weight - ref[f"materialised.{n}.rotate"]).abs().max().item()
            for n, iv in ivs.items()
        ),
        "gradients (relative)": max(relative(p.grad, ref["grad." + n]) for n, p in params.items()),
        "gradients (absolute)": max(
            (p.grad - ref["grad." + n]).abs().max().item() for n, p in params.items()
        ),
    }


def main():
    print(
        f"pyreft {version('pyreft')}, pyvene {version('pyvene')}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    batch, labels = golden()
    if "--against" in sys.argv:
        path = sys.argv[sys.argv.index("--against") + 1]
        worst = against(path, batch, labels)
        for what, d in worst.items():
            print(f"pyreft vs {path}, {what}: max diff {d:.3g}")
        bounds = {"logits": 1e-5, "loss": 1e-5, "R": 1e-6, "gradients (relative)": 1e-4}
        bad = [w for w, b in bounds.items() if not worst[w] < b]
        if bad:
            sys.exit(f"pyreft differs from {path} in {', '.join(bad)}")
        return
    reft, ivs = build(seed=0)
    for iv in ivs.values():
        untrivialize(iv)
    logits, loss = run(reft, batch, labels)
    tensors = {"logits": logits, "loss": loss.reshape(1), "labels": labels}
    params = params_of(reft, ivs)
    for n, p in params.items():
        tensors[n] = p.detach().clone()
        tensors["grad." + n] = p.grad.detach().clone()
    for name, iv in ivs.items():
        tensors[f"materialised.{name}.rotate"] = iv.rotate_layer.weight.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "reference.safetensors")
    print(f"loss {loss.item():.6f}; {len(params)} trainable tensors")
    for n in sorted(params):
        print(f"  {n} {list(params[n].shape)} |grad| {params[n].grad.abs().max().item():.3g}")
    worst = stock_pyreft_check(tensors, batch, labels)
    for what, d in worst.items():
        print(f"stock pyreft (trivialization on) vs fixture, {what}: max diff {d:.3g}")
    bounds = {"logits": 1e-5, "loss": 1e-5, "W, b, head gradients (relative)": 1e-4}
    bad = [w for w, b in bounds.items() if not worst[w] < b]
    if bad:
        sys.exit(f"stock pyreft differs from the fixture in {', '.join(bad)}")


if __name__ == "__main__":
    main()
