"""HRA's orthogonality regulariser as the HRA authors add it, for tests/fixtures/hra/orth.safetensors.

    /work/venv/bin/python scripts/hra_orth_reference.py   # torch, transformers, peft (0.21.2)

PEFT's HRA has no regulariser. The authors' code (github.com/DaShenZi721/HRA, commit
8e0c6371e4928df6f69a56baae4ff90fb2619ccb) adds it to the loss inside their Trainer's
`compute_loss` (llama/finetune_32.py; commented out, with weight 1e-6, in
nlu/DeBERTa/training/trainer.py): for every adapted layer's reflection vectors U
(in × r), columns normalised to Û, loss += λ·‖I − ÛᵀÛ‖_F, summed over layers. That loop is
inline in their trainer, not a function one can call, so it is restated below.

On PEFT's HRA model of scripts/hra_reference.py (tiny BERT, r 4 on query and value) with
every hra_u set to tests/fixtures/hra/plain.safetensors' values, in eval mode on the
golden batch (labels i mod 2), with λ = 0.1: `loss` (cross-entropy plus the regulariser),
`orth` (the regulariser alone, unweighted) and `grad.<name>` of every trainable tensor.
"""

from pathlib import Path

import torch
from peft import HRAConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-bert"
OUT = ROOT / "tests" / "fixtures" / "hra"
LAMBDA = 0.1


def ours(name: str) -> str:
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    return name.replace(".modules_to_save.default.", ".").replace(".hra_u.default", ".hra_u")


def main() -> None:
    plain = load_file(OUT / "plain.safetensors")
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager")
    m = get_peft_model(base, HRAConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                p.copy_(plain[ours(n)])
    g = load_file(TINY / "golden.safetensors")
    batch = {k: g[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    loss = m(**batch, labels=labels).loss
    orth = 0.0
    for name, param in m.named_parameters():
        if "hra_u" in name:
            u = param / param.norm(dim=0)
            orth = orth + torch.norm(torch.eye(u.size(1)) - u.t() @ u)
    loss = loss + LAMBDA * orth
    loss.backward()
    t = {"loss": loss.detach().reshape(1), "orth": orth.detach().reshape(1), "labels": labels}
    for n, p in m.named_parameters():
        if p.requires_grad:
            t["grad." + ours(n)] = p.grad.detach().clone()
    save_file({k: v.contiguous() for k, v in t.items()}, OUT / "orth.safetensors")
    print("loss", float(loss), "orth", float(orth))


if __name__ == "__main__":
    main()
