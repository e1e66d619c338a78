"""VeRA as PEFT builds it, for tests/fixtures/vera/.

    python scripts/vera_reference.py      # from the repo root, torch + transformers + peft

On tests/fixtures/tiny-bert (BertForSequenceClassification, 2 labels, head drawn under
torch.manual_seed(0)) with PEFT's VeraConfig (r 4 on query and value, projection_prng_key
0, save_projection true, d_initial 0.1, no dropout): sets every vera_lambda_d and
vera_lambda_b to 0.5 * N(0, 1) (generator seed 1, in named_parameters order) so the
adapters act, and writes tests/fixtures/vera/vera.safetensors, in eval mode on the golden
batch of tests/fixtures/tiny-bert (labels i mod 2): the shared projections
(`vera_A` (r, max_in), `vera_B` (max_out, r), as PEFT drew them from the key), every
lambda under peft's name (`encoder.layer.N.attention.self.query.vera_lambda_d`),
`classifier.weight`/`bias`, `logits`, `loss`, `grad.<name>` for every trainable tensor,
and PEFT's merged query weight of layer 0 (`merged.…`). Also `rng.a` and `rng.b`: PEFT's
`_kaiming_init` of shapes (3, 10) then (5, 3) from one generator seeded with 7, to check
the projections' draw alone. The same adapter is saved with save_pretrained to
tests/fixtures/vera/adapter/ with its probabilities on the batch in expected.json.
"""

import json
from pathlib import Path

import peft
import torch
from peft import VeraConfig, get_peft_model
from peft.tuners.vera.model import _kaiming_init
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "vera"


def ours(name: str) -> str:
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".modules_to_save.default.", ".")
    return name.replace(".vera_lambda_d.default", ".vera_lambda_d").replace(
        ".vera_lambda_b.default", ".vera_lambda_b")


def model():
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )
    cfg = VeraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"],
                     projection_prng_key=0, save_projection=True)
    m = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "vera_lambda" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return m


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    g = load_file(TINY / "golden.safetensors")
    batch = {k: g[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    m = model().eval()
    out = m(**batch, labels=labels)
    out.loss.backward()
    t = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
    for n, p in m.named_parameters():
        if p.requires_grad:
            t[ours(n)] = p.detach().clone()
            t["grad." + ours(n)] = p.grad.detach().clone()
    t["vera_A"] = m.base_model.vera_A["default"].clone()
    t["vera_B"] = m.base_model.vera_B["default"].clone()
    gen = torch.Generator(device="cpu").manual_seed(7)
    t["rng.a"] = _kaiming_init((3, 10), generator=gen)
    t["rng.b"] = _kaiming_init((5, 3), generator=gen)
    merged = m.merge_and_unload()
    w = merged.bert.encoder.layer[0].attention.self.query.weight
    t["merged.encoder.layer.0.attention.self.query.weight"] = w.detach().clone()
    save_file({k: v.contiguous() for k, v in t.items()}, OUT / "vera.safetensors")
    m2 = model().eval()
    m2.save_pretrained(OUT / "adapter")
    (OUT / "adapter" / "README.md").unlink(missing_ok=True)
    with torch.no_grad():
        probs = m2(**batch).logits.softmax(-1)
    (OUT / "adapter" / "expected.json").write_text(json.dumps({
        "probabilities": probs.tolist(), "peft": peft.__version__, "torch": torch.__version__,
    }, indent=1) + "\n")
    print("loss", float(out.loss), "vera_A", tuple(t["vera_A"].shape), "vera_B", tuple(t["vera_B"].shape))


if __name__ == "__main__":
    main()
