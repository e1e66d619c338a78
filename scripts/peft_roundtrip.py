"""Check our LoRA export against Hugging Face PEFT itself.

    python scripts/peft_roundtrip.py reference OUT_DIR
        Build a PEFT LoRA model on tests/fixtures/tiny-bert (r 4, query and value, 2
        labels), save it with save_pretrained: the key names and config PEFT writes
        (tests/fixtures/peft-lora-bert/ was made this way).

    python scripts/peft_roundtrip.py compare RUN MERGED
        Load our LoRA run directory with PeftModel.from_pretrained over its base and
        compare its logits with transformers' on `peft merge --checkpoint RUN --which best`
        output MERGED (which tests/it/adapters.rs holds to our own adapter forward within 1e-5).

    python scripts/peft_roundtrip.py predict RUN [PEFT]
        For adapters nothing folds (prompt tuning): load our run directory with
        PeftModel.from_pretrained over its base and compare its probabilities on TEXTS with
        `peft predict --checkpoint RUN` (PEFT: the binary, default target/release/peft).

Made with torch 2.x, transformers 5.24.0, peft 0.21.2.
"""

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY_BERT = ROOT / "tests" / "fixtures" / "tiny-bert"
TEXTS = [
    ("the cat sat", "a dog ran"),
    ("big red car in the city", "the car is red"),
    ("happy old man", "sad new woman saw the river"),
]


def reference(out: Path) -> None:
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        TINY_BERT, num_labels=2, ignore_mismatched_sizes=True
    )
    cfg = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]
    )
    model = get_peft_model(base, cfg)
    model.save_pretrained(out)
    # save_pretrained writes a README model card; the fixture needs only config and weights.
    (out / "README.md").unlink(missing_ok=True)
    print(json.dumps(json.loads((out / "adapter_config.json").read_text()), indent=1))


def logits(model, tok) -> torch.Tensor:
    enc = tok([a for a, _ in TEXTS], [b for _, b in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def compare(run: Path, merged: Path) -> None:
    info = json.loads((run / "config.json").read_text())
    base_dir = info["base"]["path"]
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=info["num_labels"], ignore_mismatched_sizes=True
    )
    peft_model = PeftModel.from_pretrained(base, run).eval()
    ours = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(base_dir)
    a, b = logits(peft_model, tok), logits(ours, tok)
    diff = (a - b).abs().max().item()
    print(f"PEFT on our adapter files vs our merged model: max |logit diff| {diff:.3g}")
    if diff > 1e-5:
        sys.exit(f"logits differ by {diff}")


def predict(run: Path, binary: str) -> None:
    import subprocess
    import tempfile

    info = json.loads((run / "config.json").read_text())
    base_dir = info["base"]["path"]
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=info["num_labels"], ignore_mismatched_sizes=True
    )
    peft_model = PeftModel.from_pretrained(base, run).eval()
    probs = logits(peft_model, AutoTokenizer.from_pretrained(base_dir)).softmax(-1)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{a}\t{b}\n" for a, b in TEXTS))
    rows = subprocess.run([binary, "predict", "--checkpoint", str(run), "--input", f.name],
                          check=True, capture_output=True, text=True).stdout.splitlines()
    worst = max(abs(float(r.split("\t")[1]) - float(p.max())) for r, p in zip(rows, probs))
    print(f"PEFT on our adapter files vs peft predict: max |probability diff| {worst:.3g}")
    if worst > 1e-5:
        sys.exit(f"probabilities differ by {worst}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "reference":
        reference(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "predict":
        predict(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else "target/release/peft")
    else:
        sys.exit(__doc__)
