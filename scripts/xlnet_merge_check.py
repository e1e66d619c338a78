"""transformers loads what `peft merge` writes for an XLNet run, and scores as `peft predict`.

    python scripts/xlnet_merge_check.py RUN MERGED INPUT [PEFT]

RUN is an XLNet classification run of `peft train`, MERGED the directory `peft merge
--checkpoint RUN --output MERGED` wrote, INPUT a text file of one example per line (a TAB
between a pair's texts), PEFT the binary (default target/release/peft). The script loads
MERGED with `AutoModelForSequenceClassification` and `AutoTokenizer` (XLNet's, which pads
on the left), asserts that no tensor is missing or unexpected, and compares each line's
predicted label and its probability with `peft predict --checkpoint RUN` (which pads on the
right): the labels must agree and the probabilities lie within 1e-5. Needs torch,
transformers, sentencepiece and safetensors.
"""

import json
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main() -> None:
    run, merged, path = sys.argv[1:4]
    peft = sys.argv[4] if len(sys.argv) > 4 else "target/release/peft"
    model, info = AutoModelForSequenceClassification.from_pretrained(
        merged, output_loading_info=True
    )
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[key], f"{key}: {info[key]}"
    model.eval()
    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.padding_side == "left", tok.padding_side
    lines = [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    pairs = [line.split("\t", 1) for line in lines]
    first = [p[0] for p in pairs]
    second = [p[1] for p in pairs] if all(len(p) == 2 for p in pairs) else None
    # The run's window, so that both sides truncate alike.
    with open(f"{run}/config.json", encoding="utf-8") as f:
        max_len = json.load(f)["train"]["data"]["max_seq_len"]
    enc = tok(first, second, padding=True, truncation=True, max_length=max_len,
              return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    ours = subprocess.run(
        [peft, "predict", "--checkpoint", run, "--input", path],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    assert len(ours) == len(lines), (len(ours), len(lines))
    worst = 0.0
    for row, line in zip(probs, ours):
        label, p = line.split("\t")[:2]
        top = int(row.argmax())
        assert model.config.id2label[top] == label, (model.config.id2label[top], label)
        worst = max(worst, abs(float(row[top]) - float(p)))
    assert worst < 1e-5, worst
    print(f"{len(lines)} examples: labels agree, probabilities within {worst:.2e}; "
          f"transformers loaded every tensor")


if __name__ == "__main__":
    main()
