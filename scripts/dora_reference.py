"""DoRA as Hugging Face PEFT builds it, on tests/fixtures/tiny-bert: the reference for
peft's `--method dora` (tests/it/adapters.rs).

    python scripts/dora_reference.py

PEFT's LoraConfig with use_dora=True (Liu et al., 2024) for a sequence classifier: r 4,
alpha 8, no dropout, on PEFT's default BERT targets, query and value. Each wrapped layer
computes m ⊙ (W + s·BA)x / ‖W + s·BA‖ + b with the row norms detached from the gradient
(the paper's section 4.3, as PEFT does). lora_B starts at zero and the magnitude at ‖W‖,
which would make the adapter a no-op and A's gradient zero; here A, B and the magnitudes
are perturbed (seeded) so that every part matters, and the head is seeded too. On the
golden batch of tests/fixtures/tiny-bert (labels i mod 2), in eval mode, it writes
tests/fixtures/dora/reference.safetensors: every adapter tensor and the head under peft's
names, the logits, the loss and every trainable gradient (`grad.<name>`), and the logits
of PEFT's merge_and_unload (`merged_logits`); and the adapter as PEFT's save_pretrained
writes it, in tests/fixtures/dora/adapter/.
Made with torch 2.15, transformers 5.24, peft 0.21.2.
"""

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "dora"


def ours(name: str) -> str:
    """PEFT's parameter name → peft's: no wrapper, no `bert.`, no adapter name."""
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".default.", ".").replace(".lora_magnitude_vector.weight", ".lora_magnitude_vector")
    return name.replace(".modules_to_save.", ".")


def main():
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )
    cfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True)
    model = get_peft_model(base, cfg)
    model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
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
    model.save_pretrained(OUT / "adapter")
    (OUT / "adapter" / "README.md").unlink(missing_ok=True)
    with torch.no_grad():
        tensors["merged_logits"] = model.merge_and_unload()(**batch).logits
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "reference.safetensors")
    print(f"loss {out.loss.item():.6f}; trainable: {len(names)} tensors")
    for n in sorted(names):
        print(f"  {n} {list(tensors[n].shape)}")
    saved = load_file(OUT / "adapter" / "adapter_model.safetensors")
    print("saved:", *sorted(saved)[:6], "...", sep="\n  ")


if __name__ == "__main__":
    main()
