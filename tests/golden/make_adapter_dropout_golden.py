"""Train-mode goldens for the adapters with a dropout, made by Hugging Face PEFT with
peft's dropout masks (make_dropout_golden.py's PeftMasks: torch's F.dropout replaced by
peft's hash of seed, call and element).

    /work/venv/bin/python tests/golden/make_adapter_dropout_golden.py

On tests/fixtures/tiny-bert with 2 labels, in train mode (the model's own dropouts on
too), PEFT's LoRA and DoRA (use_dora) with r 4, alpha 8, lora_dropout 0.1 on PEFT's
default BERT targets, query and value; lora_B and DoRA's magnitudes perturbed (seeded) so
that every part matters. PEFT drops the adapter's input before lora_A (and, for DoRA,
feeds the dropped input to both of its terms). On the golden batch (labels i mod 2) it
writes tests/fixtures/adapter-dropout/<kind>.safetensors: every trained tensor and the
head under peft's names, `seed`, `calls`, the logits, the loss, `labels` and every
trainable gradient (`grad.<name>`). Made with torch 2.15.0, transformers 5.25.0, peft 0.21.2.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dropout_golden import SEED, PeftMasks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
TINY = ROOT / "tiny-bert"
OUT = ROOT / "adapter-dropout"


def ours(name: str) -> str:
    """PEFT's parameter name → peft's: no wrapper, no `bert.`, no adapter name."""
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".default.", ".").replace(".lora_magnitude_vector.weight", ".lora_magnitude_vector")
    return name.replace(".modules_to_save.", ".")


def build(kind: str) -> None:
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager"
    )
    cfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1,
                     use_dora=kind == "dora")
    model = get_peft_model(base, cfg)
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
    model.train()
    masks = PeftMasks(SEED)
    F.dropout = masks
    try:
        out = model(**batch, labels=labels)
        out.loss.backward()
    finally:
        F.dropout = masks.original
    tensors = {
        "seed": torch.tensor([SEED]),
        "calls": torch.tensor([masks.calls]),
        "logits": out.logits.detach(),
        "loss": out.loss.detach().reshape(1),
        "labels": labels,
    }
    for n, p in model.named_parameters():
        if not p.requires_grad or "original_module" in n:
            continue
        tensors[ours(n)] = p.detach().clone()
        tensors["grad." + ours(n)] = p.grad.detach().clone()
    OUT.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{kind}.safetensors")
    print(f"{kind}: {masks.calls} masks, loss {out.loss.item():.6f}")


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["lora", "dora"]:
        build(kind)
