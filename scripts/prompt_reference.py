"""Prompt tuning as PEFT builds it, for tests/fixtures/prompt/.

    python scripts/prompt_reference.py      # from the repo root, torch + transformers + peft

On tests/fixtures/tiny-bert and tests/fixtures/tiny-roberta (sequence classifiers, 2
labels, head drawn under torch.manual_seed(0)) with PEFT's PromptTuningConfig (4 virtual
tokens, RANDOM start): sets the prompt to 0.5 * N(0, 1) (generator seed 1) and writes, in
eval mode on each model's golden batch (tests/fixtures/<model>/golden.safetensors, labels
i mod 2), tests/fixtures/prompt/<model>.safetensors: `prompt_embeddings`,
`classifier.*`, `logits`, `loss`, and `grad.<name>` for every trainable tensor (the
prompt and the head, PEFT's modules_to_save). Also, for tiny-bert, the TEXT start PEFT
makes from "the cat sat" with 5 virtual tokens (`text_start`), and the adapter saved with
save_pretrained to tests/fixtures/prompt/adapter/ with its probabilities in expected.json.
"""

import json
from pathlib import Path

import peft
import torch
from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "prompt"


def ours(name: str) -> str:
    # Prompt learning wraps the transformers model directly: `base_model.classifier…`.
    name = name.removeprefix("base_model.model.").removeprefix("base_model.")
    name = name.removeprefix("bert.").removeprefix("roberta.")
    name = name.replace(".modules_to_save.default.", ".")
    if name == "prompt_encoder.default.embedding.weight":
        return "prompt_embeddings"
    return name


def model(fixture: str, n: int = 4, text=None):
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        ROOT / "tests" / "fixtures" / fixture, num_labels=2, ignore_mismatched_sizes=True,
        attn_implementation="eager",
    )
    if text:
        cfg = PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=n,
                                 prompt_tuning_init=PromptTuningInit.TEXT,
                                 prompt_tuning_init_text=text,
                                 tokenizer_name_or_path=str(ROOT / "tests" / "fixtures" / fixture))
        return get_peft_model(base, cfg)
    cfg = PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=n)
    m = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "prompt_encoder" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return m


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for fixture in ("tiny-bert", "tiny-roberta"):
        g = load_file(ROOT / "tests" / "fixtures" / fixture / "golden.safetensors")
        batch = {k: g[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in g}
        labels = torch.arange(batch["input_ids"].shape[0]) % 2
        m = model(fixture).eval()
        out = m(**batch, labels=labels)
        out.loss.backward()
        t = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
        for n, p in m.named_parameters():
            if p.requires_grad:
                t[ours(n)] = p.detach().clone()
                t["grad." + ours(n)] = p.grad.detach().clone()
        if fixture == "tiny-bert":
            tm = model(fixture, 5, "the cat sat")
            t["text_start"] = tm.prompt_encoder["default"].embedding.weight.detach().clone()
            m.save_pretrained(OUT / "adapter")
            (OUT / "adapter" / "README.md").unlink(missing_ok=True)
            with torch.no_grad():
                probs = m(**batch).logits.softmax(-1)
            (OUT / "adapter" / "expected.json").write_text(json.dumps({
                "probabilities": probs.tolist(), "peft": peft.__version__,
                "torch": torch.__version__}, indent=1) + "\n")
        save_file({k: v.contiguous() for k, v in t.items()}, OUT / f"{fixture}.safetensors")
        print(fixture, "loss", float(out.loss), sorted(k for k in t if not k.startswith("grad.")))


if __name__ == "__main__":
    main()
