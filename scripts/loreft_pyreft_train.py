"""LoReFT made by pyreft in TRAIN mode, drawing peft's dropout masks: the train-mode
reference for peft's `--method loreft` (the eval-mode one is scripts/loreft_pyreft.py).

    /work/venv-reft/bin/python scripts/loreft_pyreft_train.py

The model is scripts/loreft_pyreft.py's (same seed, so the same R, W, b and head; peft's
parametrization of R), with LoreftIntervention's dropout at 0.05 (pyreft's GLUE recipe,
examples/loreft/train.py) and tiny-bert in train mode, its own dropouts on (hidden 0.1,
attention 0.1, the classifier's 0.1: tests/fixtures/tiny-bert/config.json). torch's
`F.dropout` is replaced by tests/golden/make_dropout_golden.py's PeftMasks(SEED), which
keeps exactly the elements peft's `Ctx::train(SEED)` keeps, call n of the forward drawing
with key n (p = 0 or eval draws nothing). Every dropout here goes through `F.dropout`:
transformers' and pyreft's nn.Dropout call it as the module attribute, and attention is
eager (transformers 4.45.1's BERT would otherwise use SDPA, its dropout inside
scaled_dot_product_attention).

pyvene's IntervenableModel.train() only reaches the wrapped model; the interventions
(a ModuleDict beside it) keep their own flag, which is torch's default, training, and are
set to train explicitly here.

Order of the masks (each row one call, printed when the script runs), 12 in all:
embeddings; per layer L: attention probabilities (batch, heads, seq, seq), the attention
output's and the layer output's hidden dropouts (batch, seq, d), then that layer's
interventions, first then last, each dropping what pyvene hands it: the edited states
gathered at its positions, (batch, positions, d) = (batch, 1, d) for f1+l1, not the whole
hidden state; after the last layer, the classifier's dropout of the pooled output.

Writes tests/fixtures/loreft/train_reference.safetensors: the tensors of
reference.safetensors under the same names (parameters, `grad.<name>`, `materialised.*`,
`logits`, `loss`, `labels`) and `seed`, `calls` (int64 [1]). Made with pyreft 0.1.0,
pyvene 0.1.8, torch 2.15.0 (on the CPU), transformers 4.45.1.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "golden"))
from loreft_pyreft import OUT, TINY, build, golden, params_of, unit_locations, untrivialize  # noqa: E402
from make_dropout_golden import SEED, PeftMasks  # noqa: E402

DROPOUT = 0.05  # LoreftIntervention's, as pyreft's GLUE recipe


class LoggedMasks(PeftMasks):
    """PeftMasks, noting each draw: (call, the calling nn.Dropout's name, shape, p)."""

    def __init__(self, seed, names):
        super().__init__(seed)
        self.log, self.names = [], names

    def __call__(self, x, p=0.5, training=True, inplace=False):
        if training and p != 0.0:
            # The caller is nn.Dropout.forward (pyvene removes every forward hook of the
            # model, so no hook could name it).
            caller = sys._getframe(1).f_locals.get("self")
            name = self.names.get(caller, f"not an nn.Dropout: {type(caller).__name__}")
            self.log.append((self.calls, name, tuple(x.shape), p))
        return super().__call__(x, p, training, inplace)


def dropout_names(reft, ivs):
    """Every nn.Dropout of the model and the interventions, by a readable name."""
    names = {m: n for n, m in reft.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    for name, iv in ivs.items():
        names[iv.dropout] = f"{name}.dropout"
    return names


def run_train(reft, ivs, batch, labels):
    """Forward and backward in train mode with peft's masks; the loss as
    ReftTrainerForSequenceClassification's."""
    reft.train()
    for iv in ivs.values():
        iv.train()
    names = dropout_names(reft, ivs)
    assert all(m.training for m in names), "a dropout is not in train mode"
    masks = LoggedMasks(SEED, names)
    F.dropout = masks
    try:
        _, out = reft(
            dict(batch),
            unit_locations=unit_locations(batch, len(reft.interventions)),
            labels=labels,
        )
        loss = torch.nn.CrossEntropyLoss()(out.logits.view(-1, 2), labels.view(-1))
        loss.backward()
    finally:
        F.dropout = masks.original
    return out.logits.detach(), loss.detach(), masks


def main():
    batch, labels = golden()
    reft, ivs = build(seed=0, dropout=DROPOUT)
    for iv in ivs.values():
        untrivialize(iv)
    logits, loss, masks = run_train(reft, ivs, batch, labels)

    for n, module, shape, p in masks.log:
        print(f"  mask {n:2}: {module} {list(shape)} p={p}")
    b, d = batch["input_ids"].shape[0], reft.model.config.hidden_size
    iv_calls = [(m, s) for _, m, s, _ in masks.log if ".loreft." in m]
    assert len(iv_calls) == len(ivs), iv_calls
    assert all(s == (b, 1, d) for _, s in iv_calls), iv_calls
    # The model alone draws what its train golden drew; each intervention one more.
    base = load_file(TINY / "train_golden.safetensors")["calls"].item()
    assert masks.calls == base + len(ivs), (masks.calls, base)

    tensors = {
        "seed": torch.tensor([SEED], dtype=torch.int64),
        "calls": torch.tensor([masks.calls], dtype=torch.int64),
        "logits": logits,
        "loss": loss.reshape(1),
        "labels": labels,
    }
    params = params_of(reft, ivs)
    for n, p in params.items():
        tensors[n] = p.detach().clone()
        tensors["grad." + n] = p.grad.detach().clone()
    for name, iv in ivs.items():
        tensors[f"materialised.{name}.rotate"] = iv.rotate_layer.weight.detach().clone()

    # The same names as the eval fixture, and (same seed) the same parameters.
    eval_path = OUT / "reference.safetensors"
    if eval_path.exists():
        ref = load_file(eval_path)
        assert set(tensors) == set(ref) | {"seed", "calls"}, set(tensors) ^ set(ref)
        for n in params:
            assert torch.equal(tensors[n], ref[n]), f"{n} differs from the eval fixture's"
        print(f"parameters as {eval_path.name}'s; eval logits differ by "
              f"{(logits - ref['logits']).abs().max().item():.3g} (dropout)")

    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "train_reference.safetensors")
    print(f"calls {masks.calls}, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
