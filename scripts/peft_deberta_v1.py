"""PEFT's own adapters on DeBERTa v1 with PEFT's default targets, and what PEFT predicts.

    /work/venv/bin/python scripts/peft_deberta_v1.py     # tests/fixtures/peft-deberta-v1/

DeBERTa v1 fuses query, key and value into one `attention.self.in_proj`; PEFT's default
targets for `model_type` deberta (its TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING)
are `in_proj` for LoRA and DoRA, and `in_proj` plus `output.dense` for IA3 (with
`output.dense` feed-forward). On tests/fixtures/tiny-deberta with 2 labels, for each of
LoRA (r 4, alpha 8), DoRA (the same with use_dora) and IA3, all with target_modules left
to PEFT: train 30 steps of AdamW (lr 1e-2, batch 8, dropout 0) on RTE-format rows made
here, save_pretrained, reload as a user would (fresh base + PeftModel.from_pretrained),
and score the dev rows. Writes tests/fixtures/peft-deberta-v1/<kind>/: adapter_config.json,
adapter_model.safetensors and expected.json (the dev rows, accuracy, softmax
probabilities, logits, versions), the format tests/it/adapters.rs `scores_as_python`
reads. CPU, float32, seeded.

Made with torch 2.15.0, transformers 5.25.0, peft 0.21.2 (/work/venv: pip install torch
transformers peft safetensors).
"""

import json
import random
from pathlib import Path

import peft
import torch
import transformers
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-deberta"
OUT = ROOT / "tests" / "fixtures" / "peft-deberta-v1"
LABELS = ["entailment", "not_entailment"]
WORDS = "cat dog man woman sat ran saw house car city river red blue big small happy sad old new".split()
STEPS, BATCH, LR = 30, 8, 1e-2


def rows(rng: random.Random, n: int):
    out = []
    for i in range(n):
        s1 = rng.sample(WORDS, 4)
        first = rng.choice(s1) if i % 2 == 0 else rng.choice([w for w in WORDS if w not in s1])
        s2 = [first] + rng.sample([w for w in WORDS if w != first], 2)
        out.append(("the " + " ".join(s1), " ".join(s2), LABELS[i % 2]))
    return out


def encode(tok, chunk):
    """Pairs as DeBERTa v1 was trained on them and transformers' DebertaTokenizer wrote
    them before 5.25: [CLS] A [SEP] B [SEP], token types 0 then 1 (transformers 5.25's
    template is RoBERTa's [CLS] A [SEP] [SEP] B [SEP] with no token types; peft keeps the
    original, docs/models.md). Padded on the right to the longest."""
    seqs, types = [], []
    for a, b, _ in chunk:
        ia = tok(a, add_special_tokens=False)["input_ids"]
        ib = tok(b, add_special_tokens=False)["input_ids"]
        seqs.append([tok.cls_token_id] + ia + [tok.sep_token_id] + ib + [tok.sep_token_id])
        types.append([0] * (len(ia) + 2) + [1] * (len(ib) + 1))
    n = max(map(len, seqs))
    pad = lambda v, x: v + [x] * (n - len(v))
    enc = {
        "input_ids": torch.tensor([pad(s, tok.pad_token_id) for s in seqs]),
        "token_type_ids": torch.tensor([pad(t, 0) for t in types]),
        "attention_mask": torch.tensor([pad([1] * len(s), 0) for s in seqs]),
    }
    return enc, torch.tensor([LABELS.index(r[2]) for r in chunk])


def base():
    return AutoModelForSequenceClassification.from_pretrained(
        TINY, num_labels=2, ignore_mismatched_sizes=True
    )


def config(kind: str):
    if kind == "ia3":
        return IA3Config(task_type="SEQ_CLS")
    return LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0,
                      use_dora=kind == "dora")


def make(kind: str, tok, train_rows, dev_rows) -> None:
    out = OUT / kind
    torch.manual_seed(0)
    model = get_peft_model(base(), config(kind))
    targets = sorted(model.peft_config["default"].target_modules)
    print(kind, "targets", targets)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()
    order = random.Random(1)
    for step in range(STEPS):
        chunk = order.sample(train_rows, BATCH)
        enc, labels = encode(tok, chunk)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{kind}: last train loss {loss.item():.4f}")
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    reloaded = PeftModel.from_pretrained(base(), out).eval()
    with torch.no_grad():
        enc, gold = encode(tok, dev_rows)
        logits = reloaded(**enc).logits
    expected = {
        "dev": [list(r) for r in dev_rows],
        "targets": targets,
        "accuracy": (logits.argmax(-1) == gold).sum().item() / len(dev_rows),
        "probabilities": torch.softmax(logits, -1).tolist(),
        "logits": logits.tolist(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"{kind}: dev accuracy {expected['accuracy']}")


def main():
    rng = random.Random(0)
    train_rows, dev_rows = rows(rng, 64), rows(rng, 16)
    tok = AutoTokenizer.from_pretrained(TINY)
    for kind in ["lora", "dora", "ia3"]:
        make(kind, tok, train_rows, dev_rows)


if __name__ == "__main__":
    main()
