"""IA3 as Hugging Face PEFT builds it, on tests/fixtures/tiny-bert: the reference for
peft's `--method ia3` (tests/it/adapters.rs).

    python scripts/ia3_reference.py

PEFT's IA3Config for a sequence classifier with its defaults for BERT: learned vectors on
`key`, `value` and `output.dense`, matched by suffix, so the attention output dense layer
too; `feedforward_modules=["output.dense"]`, by suffix again, so both dense output layers
scale their input and key and value their output. The vectors start at one; here they are
set to 1 + 0.2·N(0, 1) (seeded) so that they matter, and the head is seeded too. On the
golden batch of tests/fixtures/tiny-bert (labels i mod 2), in eval mode, it writes
tests/fixtures/ia3/reference.safetensors: every vector and the head under peft's names,
the logits, the loss and every trainable gradient (`grad.<name>`); and the adapter as
PEFT's save_pretrained writes it, in tests/fixtures/ia3/adapter/.
Made with torch 2.15, transformers 5.24, peft 0.21.2.
"""

from pathlib import Path

import torch
from peft import IA3Config, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "ia3"


def ours(name: str) -> str:
    """PEFT's parameter name → peft's: no wrapper, no `bert.`, no adapter name."""
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".ia3_l.default", ".ia3_l")
    return name.replace(".modules_to_save.default.", ".")


def main():
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )
    model = get_peft_model(base, IA3Config(task_type="SEQ_CLS"))
    model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ia3_l" in n:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    golden = load_file(TINY / "golden.safetensors")
    batch = {k: golden[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    out = model(**batch, labels=labels)
    out.loss.backward()
    tensors = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
    names = []
    for n, p in model.named_parameters():
        if not p.requires_grad or "original_module" in n:
            continue
        names.append(ours(n))
        tensors[ours(n)] = p.detach().clone()
        tensors["grad." + ours(n)] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "reference.safetensors")
    model.save_pretrained(OUT / "adapter")
    (OUT / "adapter" / "README.md").unlink(missing_ok=True)
    print(f"loss {out.loss.item():.6f}; trainable: {len(names)} tensors")
    for n in sorted(names):
        print(f"  {n} {list(tensors[n].shape)}")


if __name__ == "__main__":
    main()
