"""AdaLoRA as PEFT trains it, for tests/fixtures/adalora/.

    /work/venv/bin/python scripts/adalora_reference.py   # torch, transformers, peft (0.21.2)

On tests/fixtures/tiny-bert (sequence classifier, 2 labels, head drawn under
torch.manual_seed(0)) with PEFT's AdaLoraConfig (init_r 4, target_r 2, lora_alpha 8, no
dropout, query and value, tinit 1, tfinal 2, deltaT 1, total_step 6, orth_reg_weight 0.5),
in eval mode on the golden batch (labels i mod 2), PEFT's own loop for six steps:

    loss = model(**batch, labels=labels).loss     # PEFT adds the orthogonality penalty
    loss.backward(); clip_grad_norm_(trainable, 1.0); opt.step()
    model.base_model.update_and_allocate(step); opt.zero_grad()

with torch.optim.AdamW (lr 1e-2, weight decay 0). Writes tests/fixtures/adalora/steps.safetensors:
the start (`start.<name>`: every trainable tensor, under this crate's names), the first
step's `logits`, `loss` (with the penalty) and `grad.<name>` (before clipping), and after
each step s the tensors (`step<s>.<name>`); and steps.json: each step's budget, the rank
pattern PEFT holds after it, and the final state's rank pattern. Also the adapter saved
with save_pretrained to tests/fixtures/adalora/adapter/ (resized by its rank pattern) with
its probabilities on the golden batch in expected.json.
"""

import json
from pathlib import Path

import peft
import torch
from peft import AdaLoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "adalora"
STEPS = 6


def ours(name: str) -> str:
    name = name.removeprefix("base_model.model.").removeprefix("bert.")
    name = name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
    return name.replace(".default", "")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fixture = ROOT / "tests" / "fixtures" / "tiny-bert"
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        fixture, num_labels=2, ignore_mismatched_sizes=True, attn_implementation="eager")
    cfg = AdaLoraConfig(task_type="SEQ_CLS", init_r=4, target_r=2, lora_alpha=8, lora_dropout=0.0,
                        target_modules=["query", "value"], tinit=1, tfinal=2, deltaT=1,
                        total_step=STEPS, orth_reg_weight=0.5)
    m = get_peft_model(base, cfg).eval()
    g = load_file(fixture / "golden.safetensors")
    batch = {k: g[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2, weight_decay=0.0)
    t = {"labels": labels}
    for n, p in trainable:
        t["start." + ours(n)] = p.detach().clone()
    log = []
    for step in range(STEPS):
        out = m(**batch, labels=labels)
        out.loss.backward()
        if step == 0:
            t["logits"] = out.logits.detach()
            t["loss"] = out.loss.detach().reshape(1)
            for n, p in trainable:
                t["grad." + ours(n)] = p.grad.detach().clone()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        budget = m.base_model.rankallocator.budget_schedule(step)[0]
        m.base_model.update_and_allocate(step)
        opt.zero_grad()
        for n, p in trainable:
            t[f"step{step}." + ours(n)] = p.detach().clone()
        pattern = m.peft_config["default"].rank_pattern
        log.append({"step": step, "budget": budget,
                    "rank_pattern": {ours(k): v for k, v in pattern.items()} if pattern else None})
    save_file({k: v.contiguous() for k, v in t.items()}, OUT / "steps.safetensors")
    (OUT / "steps.json").write_text(json.dumps({"steps": log, "peft": peft.__version__,
                                                "torch": torch.__version__}, indent=1) + "\n")
    m.save_pretrained(OUT / "adapter")
    (OUT / "adapter" / "README.md").unlink(missing_ok=True)
    with torch.no_grad():
        probs = m(**batch).logits.softmax(-1)
    (OUT / "adapter" / "expected.json").write_text(json.dumps({
        "probabilities": probs.tolist(), "peft": peft.__version__, "torch": torch.__version__}, indent=1) + "\n")
    for entry in log:
        print(entry["step"], entry["budget"], entry["rank_pattern"])


if __name__ == "__main__":
    main()
