"""Make a trained LoRA adapter with Hugging Face PEFT, and what PEFT predicts with it.

    python scripts/peft_adapter_fixture.py            # tests/fixtures/peft-lora-trained/
    python scripts/peft_adapter_fixture.py --rslora   # tests/fixtures/peft-rslora-trained/
    python scripts/peft_adapter_fixture.py --init pissa  # tests/fixtures/peft-pissa-trained/
    python scripts/peft_adapter_fixture.py --init olora  # tests/fixtures/peft-olora-trained/

On tests/fixtures/tiny-bert: writes a small RTE-format data set (sentence2 is entailed
iff its first word occurs in sentence1 and it has no "not"), trains a PEFT LoRA model on
it (r 4, alpha 8, query and value, classifier in modules_to_save) with torch AdamW, saves
it with save_pretrained, reloads it from disk the way a user would (fresh base +
PeftModel.from_pretrained) and scores the dev split. Everything goes to
tests/fixtures/peft-lora-trained/:
    adapter_config.json, adapter_model.safetensors, and expected.json (the dev rows,
    dev accuracy, softmax probabilities and logits per dev row, versions).
With --rslora the adapter scales by alpha/sqrt(r) (PEFT's use_rslora) and goes to
tests/fixtures/peft-rslora-trained/. With --init pissa or olora, A and B start from each
wrapped weight (PEFT's init_lora_weights), which PEFT replaces by its residual; saved as
PEFT saves such an adapter (its trained A and B, init_lora_weights in the config), it is
reloaded onto a fresh base, where PEFT takes the start out of the weight again. CPU,
float32, seeded.
"""

import json
import random
import sys
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY_BERT = ROOT / "tests" / "fixtures" / "tiny-bert"
RSLORA = "--rslora" in sys.argv[1:]
INIT = sys.argv[sys.argv.index("--init") + 1] if "--init" in sys.argv else None
NAME = f"peft-{INIT}-trained" if INIT else ("peft-rslora-trained" if RSLORA else "peft-lora-trained")
OUT = ROOT / "tests" / "fixtures" / NAME
LABELS = ["entailment", "not_entailment"]  # label id = index
WORDS = (
    "cat dog man woman sat ran saw house car city river red blue big small happy sad old new"
).split()
EPOCHS, BATCH, LR = 20, 8, 5e-3


def make_rows(rng: random.Random, n: int):
    """(sentence1, sentence2, label); all words are in the vocab.

    sentence2 is entailed iff its first word occurs in sentence1 and it has no "not".
    Half the rows are entailed; a quarter fail by "not" (a lexical cue a tiny model can
    learn), a quarter by the first word (word matching it mostly cannot), so the trained
    model is real but imperfect.
    """
    rows = []
    for i in range(n):
        s1 = rng.sample(WORDS, 4)
        kind = i % 4  # 0, 2: entailment; 1: "not"; 3: first word missing from sentence1
        first = rng.choice([w for w in WORDS if w not in s1]) if kind == 3 else rng.choice(s1)
        rest = rng.sample([w for w in WORDS if w != first], 2)
        s2 = [first] + (["not"] if kind == 1 else []) + rest
        label = LABELS[0] if kind in (0, 2) else LABELS[1]
        rows.append(("the " + " ".join(s1), " ".join(s2), label))
    return rows


def batches(tok, rows, size):
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        enc = tok(
            [r[0] for r in chunk], [r[1] for r in chunk],
            max_length=128, truncation=True, padding="longest", return_tensors="pt",
        )
        yield enc, torch.tensor([LABELS.index(r[2]) for r in chunk])


def base_model():
    return AutoModelForSequenceClassification.from_pretrained(
        TINY_BERT, num_labels=2, ignore_mismatched_sizes=True
    )


def train(tok, train_rows) -> None:
    torch.manual_seed(0)
    cfg = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"],
        use_rslora=RSLORA, init_lora_weights=INIT or True,
    )
    model = get_peft_model(base_model(), cfg)
    model.print_trainable_parameters()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    order = random.Random(1)
    model.train()
    for epoch in range(EPOCHS):
        rows = train_rows[:]
        order.shuffle(rows)
        total = 0.0
        for enc, labels in batches(tok, rows, BATCH):
            loss = model(**enc, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1}: mean train loss {total / (len(rows) / BATCH):.4f}")
    model.save_pretrained(OUT)
    # save_pretrained writes a README model card; the fixture needs only config and weights.
    (OUT / "README.md").unlink(missing_ok=True)


def evaluate(tok, dev_rows) -> dict:
    # Reload from disk as a user would: a fresh base and the saved adapter.
    model = PeftModel.from_pretrained(base_model(), OUT).eval()
    logits = []
    with torch.no_grad():
        for enc, _ in batches(tok, dev_rows, 8):
            logits.append(model(**enc).logits)
    logits = torch.cat(logits)
    probs = torch.softmax(logits, dim=-1)
    gold = torch.tensor([LABELS.index(r[2]) for r in dev_rows])
    acc = (logits.argmax(-1) == gold).sum().item() / len(dev_rows)  # exact fraction
    return {
        "accuracy": acc,
        "probabilities": probs.tolist(),
        "logits": logits.tolist(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def main():
    rng = random.Random(0)
    train_rows, dev_rows = make_rows(rng, 64), make_rows(rng, 24)
    tok = AutoTokenizer.from_pretrained(TINY_BERT)
    train(tok, train_rows)
    with safe_open(OUT / "adapter_model.safetensors", "pt") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            print(f"{k} {list(t.shape)} max|x| {t.abs().max().item():.4g}")
        keys = list(f.keys())
    assert any("classifier" in k for k in keys), "classifier head not saved"
    assert any("lora_B" in k for k in keys) and any("lora_A" in k for k in keys)
    expected = evaluate(tok, dev_rows)
    # The dev rows themselves: the Rust test writes them as RTE's dev.tsv (no GLUE-format
    # file is committed).
    expected["dev"] = [list(r) for r in dev_rows]
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"dev accuracy {expected['accuracy']:.4f} over {len(dev_rows)} rows")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(ROOT)} {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
