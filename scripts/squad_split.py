#!/usr/bin/env python3
"""Split a SQuAD-format JSON file by article: the first N-1 articles train, the last scores.

    scripts/squad_split.py ../shared/data/squad/dev-v2.0-5articles.json /tmp/squad5 [v2.0]

writes /tmp/squad5/train-v2.0.json (four articles) and /tmp/squad5/dev-v2.0.json (the
fifth), the layout `peft train --task squad_v2 --data-dir /tmp/squad5` reads. With
`v1.1` as the third argument it keeps only the answerable questions and writes
train-v1.1.json and dev-v1.1.json, for `--task squad`. Standard library only.
"""
import json
import os
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    version = sys.argv[3] if len(sys.argv) == 4 else "v2.0"
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    articles = data["data"]
    if len(articles) < 2:
        sys.exit(f"{src}: needs at least two articles, has {len(articles)}")
    os.makedirs(out, exist_ok=True)
    if version == "v1.1":
        articles = [answerable(a) for a in articles]
    for split, part in (("train", articles[:-1]), ("dev", articles[-1:])):
        path = os.path.join(out, f"{split}-{version}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"version": data.get("version", version), "data": part}, f)
        n = sum(len(p["qas"]) for a in part for p in a["paragraphs"])
        print(f"{path}: {len(part)} articles, {n} questions")


def answerable(article):
    """The article without its unanswerable questions (SQuAD 1.1 has none)."""
    paragraphs = []
    for p in article["paragraphs"]:
        qas = [q for q in p["qas"] if q.get("answers") and not q.get("is_impossible")]
        if qas:
            paragraphs.append({**p, "qas": qas})
    return {**article, "paragraphs": paragraphs}


if __name__ == "__main__":
    main()
