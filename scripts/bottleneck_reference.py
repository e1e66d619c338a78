"""Bottleneck adapters as AdapterHub's `adapters` library builds them, on
tests/fixtures/tiny-bert: the reference for peft's bottleneck-adapter method.

    python3 -m venv /work/venv-adapters
    /work/venv-adapters/bin/pip install adapters torch safetensors
    /work/venv-adapters/bin/python scripts/bottleneck_reference.py
    /work/venv-adapters/bin/python scripts/bottleneck_reference.py --load RUN [PEFT]

For each of `seq_bn` (SeqBnConfig(reduction_factor=4), Pfeiffer: one adapter after the FFN
output, ReLU) and `double_seq_bn` (DoubleSeqBnConfig(reduction_factor=4), Houlsby: one
after the attention output and one after the FFN output, SiLU), on a plain
BertForSequenceClassification (num_labels=2, head re-drawn under torch.manual_seed(0)):
`adapters.init(model)`, `model.add_adapter("a", config=...)`, `model.train_adapter("a")`
(which also activates "a"); every adapter tensor is then overwritten with
0.1 * N(0, 1) from a generator seeded with 1 (in `named_parameters` order) so that the
adapters change the output. Then, in eval mode (`train_adapter` leaves `bert` in train
mode, so `model.eval()` is called after it), on the golden batch of
tests/fixtures/tiny-bert (labels i mod 2), it writes
tests/fixtures/bottleneck/<config>.safetensors:

  - every adapter tensor under its `model.state_dict()` name,
    e.g. `bert.encoder.layer.0.output.adapters.a.adapter_down.0.weight`;
  - `classifier.weight`, `classifier.bias` (the head used; it trains too);
  - `labels`, `logits`, `loss` (mean cross-entropy, shape [1]), `last_hidden_state`;
  - `grad.<name>` for every tensor with requires_grad after train_adapter
    (the adapter tensors and the classifier).

and tests/fixtures/bottleneck/<config>/: the same adapter as
`model.save_adapter(dir, "a", use_safetensors=True)` writes it (adapter.safetensors,
adapter_config.json, model_head.safetensors, head_config.json).

Before writing, it checks every BertSelfOutput / BertOutput sublayer against the
formula in the docs (recomputed here from the module weights with plain torch ops)
and that the reloaded saved adapter gives the same logits.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import adapters
import transformers
from adapters import DoubleSeqBnConfig, SeqBnConfig
from transformers import BertForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = "tests/fixtures/tiny-bert"  # relative: adapter_config.json records it as model_name
OUT = ROOT / "tests" / "fixtures" / "bottleneck"

CONFIGS = {
    "seq_bn": SeqBnConfig(reduction_factor=4),
    "double_seq_bn": DoubleSeqBnConfig(reduction_factor=4),
}
ACT = {"relu": F.relu, "swish": F.silu}


def load_base():
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )


def build(cfg):
    model = load_base()
    adapters.init(model)
    model.add_adapter("a", config=cfg)
    model.train_adapter("a")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapters.a." in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def adapter_fn(mod, act):
    """The bottleneck as the docs write it: up(act(down(z))), recomputed from weights."""
    a = mod.adapters["a"]
    down, up = a.adapter_down[0], a.adapter_up
    return lambda z: F.linear(act(F.linear(z, down.weight, down.bias)), up.weight, up.bias)


def check_sublayers(model, batch, cfg):
    """Hook every BertSelfOutput/BertOutput, recompute its output by the formula."""
    seen = []
    act = ACT[cfg["non_linearity"]]

    def hook(name, mod):
        def f(module, args, out):
            x, r = args
            h = F.linear(x, module.dense.weight, module.dense.bias)  # dropout: eval
            ln = lambda t: F.layer_norm(  # noqa: E731
                t, (t.shape[-1],), module.LayerNorm.weight, module.LayerNorm.bias, module.LayerNorm.eps
            )
            has = "a" in module.adapters
            if not has:
                want = ln(h + r)
            elif cfg["original_ln_before"]:  # seq_bn: adapter reads LN(h + r), residual h
                want = ln(h + adapter_fn(module, act)(ln(h + r)) + r)
            else:  # double_seq_bn: adapter reads h, residual h
                want = ln(h + adapter_fn(module, act)(h) + r)
            err = (out - want).abs().max().item()
            seen.append((name, has, err))
            assert err < 1e-5, (name, err)

        return f

    handles = []
    for i, layer in enumerate(model.bert.encoder.layer):
        for name, mod in ((f"{i}.attention.output", layer.attention.output), (f"{i}.output", layer.output)):
            handles.append(mod.register_forward_hook(hook(name, mod)))
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return seen


def main():
    os.chdir(ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    golden = load_file(Path(TINY) / "golden.safetensors")
    batch = {k: golden[k].long() for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    print(f"adapters {adapters.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")

    for cname, cfg in CONFIGS.items():
        model = build(cfg)
        seen = check_sublayers(model, batch, cfg)

        out = model(**batch, labels=labels, output_hidden_states=True)
        out.loss.backward()
        tensors = {
            "labels": labels,
            "logits": out.logits.detach(),
            "loss": out.loss.detach().reshape(1),
            "last_hidden_state": out.hidden_states[-1].detach(),
        }
        ce = F.cross_entropy(out.logits.detach(), labels)
        assert torch.allclose(ce, out.loss.detach()), (ce, out.loss)
        model.set_active_adapters(None)  # the adapter must matter
        with torch.no_grad():
            plain = model(**batch).logits
        model.set_active_adapters("a")
        moved = (plain - out.logits.detach()).abs().max().item()
        assert moved > 1e-3, moved
        sd = model.state_dict()
        adapter_names = [n for n in sd if ".adapters.a." in n]
        for n in adapter_names + ["classifier.weight", "classifier.bias"]:
            tensors[n] = sd[n].detach().clone()
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        for n, p in model.named_parameters():
            if p.requires_grad:
                tensors["grad." + n] = p.grad.detach().clone()
        save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{cname}.safetensors")

        # the adapter as the library saves it, and a reload that must give the same logits
        d = OUT / cname
        shutil.rmtree(d, ignore_errors=True)
        model.save_adapter(str(d.relative_to(ROOT)), "a", use_safetensors=True)
        fresh = load_base()
        adapters.init(fresh)
        fresh.load_adapter(str(d.relative_to(ROOT)), use_safetensors=True, set_active=True)
        fresh.eval()
        with torch.no_grad():
            again = fresh(**batch).logits
        assert torch.allclose(again, out.logits.detach(), atol=1e-6), (again - out.logits).abs().max()

        print(f"\n{cname}: loss {out.loss.item():.6f}; adapter moves logits by {moved:.4f}; sublayers: "
              + ", ".join(f"{n}{'+A' if a else ''}({e:.1e})" for n, a, e in seen))
        print(f"  trainable after train_adapter: {len(trainable)} tensors")
        for n in trainable:
            print(f"    {n} {list(tensors[n].shape)}")
        print(f"  saved: {sorted(os.listdir(d))}")
        print(f"  adapter_config.json config: {json.load(open(d / 'adapter_config.json'))['config']}")


def load_ours(run: str, binary: str) -> None:
    """AdapterHub loads what `peft train --method adapter` exported to RUN/adapterhub/
    (adapter and head) onto a fresh base, and scores as `peft predict --checkpoint RUN`."""
    import json
    import subprocess
    import tempfile

    info = json.loads((Path(run) / "config.json").read_text())
    base_dir = info["base"]["path"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=info["num_labels"], ignore_mismatched_sizes=True,
        attn_implementation="eager")
    adapters.init(model)
    hub = str(Path(run) / "adapterhub")
    name = model.load_adapter(hub, use_safetensors=True, set_active=True)
    head = load_file(Path(hub) / "model_head.safetensors")
    model.load_state_dict(head, strict=False)
    model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(base_dir)
    texts = [("the cat sat", "a dog ran"), ("big red car in the city", "the car is red"),
             ("happy old man", "sad new woman saw the river")]
    enc = tok([a for a, _ in texts], [b for _, b in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{a}\t{b}\n" for a, b in texts))
    rows = subprocess.run([binary, "predict", "--checkpoint", run, "--input", f.name],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    worst = max(abs(float(r.split("\t")[1]) - float(p.max())) for r, p in zip(rows, probs))
    print(f"AdapterHub ({name}) on our export vs peft predict: max |probability diff| {worst:.3g}")
    assert worst < 1e-5, worst


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_ours(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "target/release/peft")
    else:
        main()
