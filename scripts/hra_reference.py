"""HRA (Householder reflection adaptation) as PEFT builds it, for tests/fixtures/hra/.

    python scripts/hra_reference.py      # from the repo root, torch + transformers + peft

On tests/fixtures/tiny-bert (BertForSequenceClassification, 2 labels, head drawn under
torch.manual_seed(0)) with PEFT's HRAConfig (r 4 on query and value): checks that the
symmetric start (pairs of equal reflections) leaves the model unchanged, then sets every
hra_u to 0.5 * N(0, 1) (generator seed 1, in named_parameters order) so the reflections
act, and writes (apply_GS false, PEFT's default; with apply_GS the symmetric start's second
vector of each pair orthogonalises to zero, and its normalisation to NaN), in eval mode on the golden batch of
tests/fixtures/tiny-bert (labels i mod 2), tests/fixtures/hra/plain.safetensors:
every hra_u under peft's name (`encoder.layer.N.attention.self.query.hra_u`),
`classifier.weight`/`bias`, `logits`, `loss`, and `grad.<name>` for every trainable
tensor (the hra_u and the classifier, PEFT's modules_to_save for SEQ_CLS); and the merged
query weight of layer 0 (`merged.encoder.layer.0.attention.self.query.weight`, PEFT's
merge_and_unload). The same adapter is also saved with save_pretrained to
tests/fixtures/hra/adapter/ (adapter_config.json, adapter_model.safetensors) with its
probabilities on the batch in expected.json, for `peft eval --adapter`.
"""

import json
from pathlib import Path

import peft
import torch
from peft import HRAConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "hra"


def ours(name: str) -> str:
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".modules_to_save.default.", ".").replace(".hra_u.default", ".hra_u")
    return name


def model(apply_gs: bool):
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )
    cfg = HRAConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], apply_GS=apply_gs)
    return get_peft_model(base, cfg)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    g = load_file(TINY / "golden.safetensors")
    batch = {k: g[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    for gs in (False,):
        m = model(gs).eval()
        with torch.no_grad():
            start = m(**batch).logits
            with m.disable_adapter():
                base = m(**batch).logits
        assert (start - base).abs().max() < 1e-5, "the symmetric start changes the model"
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "hra_u" in n:
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        out = m(**batch, labels=labels)
        out.loss.backward()
        t = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
        for n, p in m.named_parameters():
            if p.requires_grad:
                t[ours(n)] = p.detach().clone()
                t["grad." + ours(n)] = p.grad.detach().clone()
        merged = m.merge_and_unload()
        w = merged.bert.encoder.layer[0].attention.self.query.weight
        t["merged.encoder.layer.0.attention.self.query.weight"] = w.detach().clone()
        name = "gs" if gs else "plain"
        save_file({k: v.contiguous() for k, v in t.items()}, OUT / f"{name}.safetensors")
        if not gs:
            m2 = model(False).eval()
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for n, p in m2.named_parameters():
                    if "hra_u" in n:
                        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            m2.save_pretrained(OUT / "adapter")
            (OUT / "adapter" / "README.md").unlink(missing_ok=True)
            with torch.no_grad():
                probs = m2(**batch).logits.softmax(-1)
            (OUT / "adapter" / "expected.json").write_text(json.dumps({
                "probabilities": probs.tolist(), "peft": peft.__version__,
                "torch": torch.__version__,
            }, indent=1) + "\n")
        print(name, "loss", float(out.loss), "max |logit - base|", float((out.logits - base).abs().max()))


if __name__ == "__main__":
    main()
