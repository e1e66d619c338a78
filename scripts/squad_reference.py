"""Reference fixtures for SQuAD v1.1/v2.0 extractive QA: metrics, preprocessing, post-processing.

    /work/venv/bin/python scripts/squad_reference.py \
        --official-v2 /work/refs/squad/evaluate-v2.0.py \
        --official-v1 /work/refs/squad/evaluate-v1.1.py \
        --utils-qa /work/refs/squad/utils_qa.py \
        --run-qa /work/refs/squad/run_qa.py

--data defaults to /work/shared/data/squad/dev-v2.0-5articles.json, --out to
tests/fixtures/squad. The reference files are third-party code and are NOT in this
repository; keep them outside it (/work/refs/squad/ here). Get them with the `fetch` tool
(a bare git mirror each) and `git show`:

    # official SQuAD 2.0 script (rajpurkar/SQuAD-explorer)
    git --git-dir=$M/rajpurkar+SQuAD-explorer/repo show \
        eee5fdbf62f8613a7812b03419e6b29617b74fd1:evaluate-v2.0.py > $R/evaluate-v2.0.py
    # official SQuAD 1.1 script, verbatim copy (allenai/bi-att-flow; not in SQuAD-explorer)
    git --git-dir=$M/allenai+bi-att-flow/repo show \
        49004549e9a88b78c359b31481afa7792dbb3f4a:squad/evaluate-v1.1.py > $R/evaluate-v1.1.py
    # transformers' utils_qa.py, as copied into huggingface/optimum (same code; the
    # transformers snapshot is too big to fetch here)
    git --git-dir=$M/huggingface+optimum/repo show \
        364b44a35af0bc72f4705aa743362d26203ce9e3:examples/pytorch/question-answering/utils_qa.py \
        > $R/utils_qa.py

(M=/work/.mirror, R=/work/refs/squad), and transformers' own run_qa.py, which the fetch
tool cannot bring (the transformers snapshot is too big), through the code index:
read_file repo huggingface/transformers, path
examples/pytorch/question-answering/run_qa.py, commit
3af9a73ef80f9d0eb376a99792017b1864e775fd (two pages, offsets 0 and 16000), saved
verbatim as $R/run_qa.py: 30,314 characters, `git hash-object` 126c2ab1456af36b26bc69ddfc26d397c8b48005.
Its nested prepare_* functions are character for character those of huggingface/optimum's
copy, which git show gives (same features.json, checked):

    git --git-dir=$M/huggingface+optimum/repo show \
        843bd5d02691e958d0e404d00b28179b7374f7ea:examples/onnxruntime/training/question-answering/run_qa.py \
        > $R/run_qa.py   # git blob c63f7f6a19160a90bb39e46d115b1f025f6c3223

tests/fixtures/squad/README.md lists the sources in full.

Writes three files to tests/fixtures/squad/ (deterministic: fixed seeds, no clock, no set order):

official.json
    The official SQuAD evaluation scripts run (as subprocesses, unmodified) on predictions
    built here for all 208 questions of the first article of the slice ("Normans"): exact
    gold answers, gold answers with changed case / punctuation / articles, partial overlaps,
    wrong spans, "" (no answer), non-empty answers to unanswerable questions, whitespace- or
    punctuation-only answers and Unicode cases (random.Random(SEED_OFFICIAL)). Also a
    `na_probs` dict (ties, exactly 1.0, values above 1.0). Keys:
      predictions, na_probs, categories (qid -> how its prediction was built; for debugging),
      v2              evaluate-v2.0.py data.json preds.json --na-prob-file na_probs.json
                      (default --na-prob-thresh 1.0), its printed dict;
      v2_no_na_probs  evaluate-v2.0.py data.json preds.json;
      v2_na_prob_thresh_0.5   as v2, with --na-prob-thresh 0.5;
      v2_all_na_probs_tied    as v2, with every no-answer probability 0.5 (written in the
                      order of `predictions`, i.e. data-set order): best_exact/best_f1
                      then depend on the order find_best_thresh walks the tie in;
      v1              evaluate-v1.1.py on a v1.1-style data set: the Normans article with its
                      is_impossible questions removed, predictions restricted to the rest.

features.json
    transformers' examples/pytorch/question-answering/run_qa.py preprocessing: its own
    `prepare_train_features` and `prepare_validation_features`, the functions nested in its
    main(), taken out of --run-qa with ast and executed unmodified (load_run_qa,
    run_qa_functions) with the names main() binds for them (tokenizer, pad_on_right, the
    squad_v2 column names, max_seq_length, data_args.doc_stride / pad_to_max_length). The
    re-implementation below (`prepare_train_features` / `prepare_validation_features`, same
    steps) is only a cross-check: it must give the same features, or the script exits 1.
    max_seq_length 48, doc_stride 16, no padding, for the fast tokenizers
    of tests/fixtures/tiny-bert (WordPiece) and tests/fixtures/tiny-roberta (byte-level
    BPE) loaded with AutoTokenizer.from_pretrained. 10 examples (see EXAMPLES below), shared
    by both tokenizers. The train and validation passes make the same tokenizer call, so
    they give the same features in the same order (asserted); each feature holds both the
    train labels (start_position, end_position) and the validation offset_mapping (null
    for tokens outside the context).

postprocess.json
    transformers' examples/pytorch/question-answering/utils_qa.py
    `postprocess_qa_predictions` (imported from --utils-qa, unmodified) on the tiny-bert
    validation features with seeded standard-normal float32 start/end logits
    (numpy.random.default_rng(SEED_LOGITS)), one row of 48 (= max_seq_length) per feature,
    under several settings; the returned predictions and the null-score diffs it writes
    (null_odds.json) per setting, and the n-best list of one setting.
"""

import argparse
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TQDM_DISABLE"] = "1"  # utils_qa wraps its loop in tqdm

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/work/shared/data/squad/dev-v2.0-5articles.json")
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "squad"

SEED_OFFICIAL = 20240611
SEED_LOGITS = 7
MAX_SEQ_LENGTH = 48
DOC_STRIDE = 16
TOKENIZERS = ["tiny-bert", "tiny-roberta"]


# --------------------------------------------------------------------------------------
# helpers


def dumps(obj, indent=0):
    """JSON text: dicts one key a line; lists of scalars, and of pairs (offsets), on one
    line; a list of longer lists (logit rows) one row a line.

    ASCII only (non-ASCII and control characters as \\u escapes), floats as Python's repr
    (shortest string that reads back to the same float64)."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [
            f'{pad} {json.dumps(str(k))}: {dumps(v, indent + 1)}' for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        flat = all(
            not isinstance(x, (dict, list))
            or (isinstance(x, list) and len(x) <= 2
                and all(not isinstance(y, (dict, list)) for y in x))
            for x in obj
        )
        if flat:
            return json.dumps(obj, separators=(",", ":"))
        items = [f"{pad} {dumps(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def write(path, obj):
    path.write_text(dumps(obj) + "\n", encoding="ascii")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"wrote {shown} ({path.stat().st_size} bytes)")


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------
# (a) official evaluation scripts

# Unicode cases, cycled through in order so that each is used. What the official
# normalize_answer (lower -> drop string.punctuation (ASCII only) -> re.sub(r'\b(a|an|the)\b')
# with Python's Unicode \b -> ' '.join(s.split())) does with each is noted.
UNICODE_CASES = [
    # U+00A0 / U+2003 are whitespace for str.split(): same as the gold answer
    ("nbsp-padding", lambda g: "\u00a0" + g + "\u2003"),
    # tabs and newlines are whitespace too
    ("tab-newline", lambda g: "\t" + g.replace(" ", " \n\t ") + "\n"),
    # U+001F is whitespace for Python's str.split() (and str.isspace), not for Unicode
    # White_Space (Rust's char::is_whitespace / split_whitespace)
    ("unit-separator", lambda g: g.replace(" ", "\x1f") if " " in g else g + "\x1fx"),
    # curly quotes are not in string.punctuation: they stay, glued to the first/last token
    ("curly-quotes", lambda g: "\u201c" + g + "\u201d"),
    # U+2019 stays too ("...\u2019s" is one token)
    ("right-quote-s", lambda g: g + "\u2019s"),
    # no accent folding: an added accent makes a different token
    ("accent", lambda g: re.sub("e", "\u00e9", g, count=1) if "e" in g else "\u00e9" + g),
    # an em dash is one more token
    ("em-dash", lambda g: g + " \u2014"),
    # full-width letters lower-case to full-width letters (no NFKC)
    ("fullwidth", lambda g: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in g)),
    # Python's \b: U+0301 is not a word character for Python's re, so "a" + U+0301 loses
    # its "a" (the combining mark stays as a token)
    ("combining-acute", lambda g: "a\u0301 " + g),
    # U+00B2 is a word character for Python's re (str.isalnum), so "the\u00b2" keeps "the"
    ("superscript-the", lambda g: "the\u00b2 " + g),
]

CASE_VARIANTS = [
    ("upper", lambda g: g.upper()),
    ("lower", lambda g: g.lower()),
    ("the-prefix", lambda g: "The " + g),
    ("the-prefix-period", lambda g: "the " + g + "."),
    ("trailing-period", lambda g: g + "."),
    ("quoted-comma", lambda g: '"' + g + '",'),
    ("an-prefix-bang", lambda g: "AN " + g + "!"),
    ("parens-a", lambda g: "(a) " + g),
    ("double-spaces", lambda g: "  " + g.replace(" ", "   ") + "  "),
    ("hyphen-article", lambda g: "the-" + g),  # '-' is dropped first: "the" glues to g
]


PARTIAL_KINDS = ["drop-first", "drop-last", "add-next", "add-previous"]


def words_span(rng, context, n):
    words = context.split()
    i = rng.randrange(0, max(1, len(words) - n))
    return " ".join(words[i : i + n])


def neighbour_word(context, start, end, after):
    if after:
        m = re.match(r"\s*\S+", context[end:])
        return context[start : end + m.end()] if m else context[start:end]
    m = re.search(r"\S+\s*$", context[:start])
    return context[m.start() : end] if m else context[start:end]


def build_predictions(article):
    rng = random.Random(SEED_OFFICIAL)
    preds, na_probs, cats = {}, {}, {}
    n_uni = n_var = 0
    n_part = [0, 0]  # one-word golds, longer golds
    for para in article["paragraphs"]:
        ctx = para["context"]
        for qa in para["qas"]:
            qid = qa["id"]
            golds = qa["answers"]
            r = rng.random()
            if golds:
                gold = rng.choice(golds)
                g, s = gold["text"], gold["answer_start"]
                if r < 0.25:
                    cat, p = "exact", g
                elif r < 0.45:
                    name, f = CASE_VARIANTS[n_var % len(CASE_VARIANTS)]
                    n_var += 1
                    cat, p = "variant:" + name, f(g)
                elif r < 0.60:
                    ws = g.split()
                    # cycle through the kinds that apply (no dropping from a one-word answer)
                    kinds = PARTIAL_KINDS if len(ws) > 1 else PARTIAL_KINDS[2:]
                    kind = kinds[n_part[len(ws) > 1] % len(kinds)]
                    n_part[len(ws) > 1] += 1
                    if kind == "drop-first":
                        p = " ".join(ws[1:])
                    elif kind == "drop-last":
                        p = " ".join(ws[:-1])
                    else:
                        p = neighbour_word(ctx, s, s + len(g), kind == "add-next")
                    cat = "partial:" + kind
                elif r < 0.70:
                    cat, p = "wrong-span", words_span(rng, ctx, rng.randint(1, 4))
                elif r < 0.80:
                    cat, p = "empty", ""
                elif r < 0.90:
                    name, f = UNICODE_CASES[n_uni % len(UNICODE_CASES)]
                    n_uni += 1
                    cat, p = "unicode:" + name, f(g)
                elif r < 0.95:
                    cat, p = "article-only", rng.choice(["the", "A", "an."])
                else:
                    cat, p = "other-gold", golds[-1]["text"]
            else:
                if r < 0.70:
                    cat, p = "empty", ""
                elif r < 0.80:
                    plaus = qa.get("plausible_answers") or [{"text": words_span(rng, ctx, 2)}]
                    cat, p = "plausible-answer", plaus[0]["text"]
                elif r < 0.88:
                    cat, p = "wrong-span", words_span(rng, ctx, rng.randint(1, 3))
                elif r < 0.94:
                    # normalises to "" (EM/F1 1 on a no-answer question) but is a non-empty
                    # string, so find_best_thresh counts it as answered (diff -1)
                    cat, p = "whitespace-only", rng.choice(["   ", "\t", "\u00a0"])
                else:
                    cat, p = "punctuation-only", rng.choice([".", "?!", "the"])
            preds[qid], cats[qid] = p, cat
            # no-answer probability: higher when the prediction is empty, two decimals so
            # that there are ties, some exactly 1.0 (not > thresh), some above 1.0
            u, v = rng.random(), rng.random()
            if v < 0.05:
                na = 1.0
            elif v < 0.12:
                na = max(round(1.0 + 0.3 * u, 2), 1.01)  # above the default threshold 1.0
            elif p == "":
                na = round(0.45 + 0.7 * u, 2)
            else:
                na = round(0.75 * u, 2)
            na_probs[qid] = na
    assert n_uni >= len(UNICODE_CASES), n_uni
    return preds, na_probs, cats


def run_script(script, *args):
    out = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        check=True, capture_output=True, text=True,
    )
    if out.stderr.strip():
        raise RuntimeError(f"{script} wrote to stderr:\n{out.stderr}")
    return json.loads(out.stdout)


def official(data, v2_script, v1_script, out_dir):
    article = data["data"][0]
    assert article["title"] == "Normans"
    nq = sum(len(p["qas"]) for p in article["paragraphs"])
    assert nq == 208, nq
    preds, na_probs, cats = build_predictions(article)
    assert len(preds) == nq
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data-v2.json").write_text(json.dumps({"version": "v2.0", "data": [article]}))
        (tmp / "preds.json").write_text(json.dumps(preds))
        (tmp / "na_probs.json").write_text(json.dumps(na_probs))
        v2 = run_script(v2_script, tmp / "data-v2.json", tmp / "preds.json",
                        "--na-prob-file", tmp / "na_probs.json")
        v2_plain = run_script(v2_script, tmp / "data-v2.json", tmp / "preds.json")
        v2_thresh = run_script(v2_script, tmp / "data-v2.json", tmp / "preds.json",
                               "--na-prob-file", tmp / "na_probs.json", "--na-prob-thresh", "0.5")
        # one tie over all questions: find_best_thresh walks them in the na_probs file's
        # order (a stable sort), and its best prefix can end inside a tie
        (tmp / "na_tied.json").write_text(json.dumps({k: 0.5 for k in preds}))
        v2_tied = run_script(v2_script, tmp / "data-v2.json", tmp / "preds.json",
                             "--na-prob-file", tmp / "na_tied.json")
        # v1.1-style data: same article, is_impossible questions removed
        art1 = {
            "title": article["title"],
            "paragraphs": [
                {
                    "context": p["context"],
                    "qas": [
                        {"id": q["id"], "question": q["question"], "answers": q["answers"]}
                        for q in p["qas"]
                        if not q["is_impossible"]
                    ],
                }
                for p in article["paragraphs"]
            ],
        }
        keep = {q["id"] for p in art1["paragraphs"] for q in p["qas"]}
        preds1 = {k: v for k, v in preds.items() if k in keep}
        (tmp / "data-v1.json").write_text(json.dumps({"version": "1.1", "data": [art1]}))
        (tmp / "preds-v1.json").write_text(json.dumps(preds1))
        v1 = run_script(v1_script, tmp / "data-v1.json", tmp / "preds-v1.json")
    write(out_dir / "official.json", {
        "article": "Normans",
        "seed": SEED_OFFICIAL,
        "predictions": preds,
        "na_probs": na_probs,
        "categories": cats,
        "v2": v2,
        "v2_no_na_probs": v2_plain,
        "v2_na_prob_thresh_0.5": v2_thresh,
        "v2_all_na_probs_tied": v2_tied,
        "v1_question_count": len(preds1),
        "v1": v1,
    })


# --------------------------------------------------------------------------------------
# (b) run_qa.py preprocessing

# (article title, paragraph index, question id, question override or None, context cut)
EXAMPLES = [
    ("Normans", 29, "56de49a8cffd8e1900b4b7a9", None, None),  # non-ASCII context
    ("Normans", 29, "56de49a8cffd8e1900b4b7a8", None, None),  # answer "Enrique P\u00e9rez de Guzm\u00e1n"
    ("Southern_California", 5, "5705e99452bb891400689689", None, None),  # golds differ; 1st near end
    ("Southern_California", 8, "5705eccb52bb8914006896b8", None, None),
    # is_impossible; trailing whitespace added here (kept by run_qa; the tokenizers drop it)
    ("Southern_California", 8, "5ad0228a77cf76001a686b5a", "Which coast is the desert on?  ", None),
    ("Southern_California", 26, "57060a6e52bb8914006897f9", None, None),
    # is_impossible; leading whitespace added here (run_qa lstrips questions)
    ("Southern_California", 37, "5ad0511577cf76001a686fcb", "  \tWhat is the UCS mascot?", None),
    # is_impossible, context cut to its first sentence (fewer windows)
    ("Southern_California", 26, "5ad0461477cf76001a686f7b", None, (0, 61)),
    # context cut to " Edward the Confessor had set up ... the Welsh." (its second sentence
    # with the space before it): a context with LEADING whitespace; the answer starts at 1
    ("Normans", 21, "56de3d594396321400ee26cc", None, (89, 236)),
    # context cut to "gave their name to Normandy, a region in France": the one-token
    # answer "France" ends the context, so in the last window the answer starts at the
    # last context token and run_qa's start-label loop runs past it onto the final
    # separator (start_position = index of the last token, end_position = "France").
    ("Normans", 0, "56ddde6b9a695914005b9628", None, (118, 165)),
]


def build_examples(data):
    by_title = {a["title"]: a for a in data["data"]}
    out = []
    for title, pi, qid, q_override, cut in EXAMPLES:
        para = by_title[title]["paragraphs"][pi]
        qa = next(q for q in para["qas"] if q["id"] == qid)
        ctx = para["context"]
        answers = [dict(text=a["text"], answer_start=a["answer_start"]) for a in qa["answers"]]
        ex = {"id": qid}
        note = f"{title} paragraph {pi}"
        if q_override is not None:
            assert q_override.strip() == qa["question"].strip()
            note += f"; question whitespace changed from {qa['question']!r}"
        if cut is not None:
            a, b = cut
            ctx = ctx[a:b]
            answers = [
                dict(text=x["text"], answer_start=x["answer_start"] - a)
                for x in answers
                if a <= x["answer_start"] and x["answer_start"] + len(x["text"]) <= b
            ]
            ex["id"] = qid + "-cut"
            note += f"; context cut to original[{a}:{b}], answer_start shifted by -{a}"
        for x in answers:
            assert ctx[x["answer_start"] : x["answer_start"] + len(x["text"])] == x["text"]
        ex.update(
            question=q_override if q_override is not None else qa["question"],
            context=ctx,
            answers=answers,
            is_impossible=qa["is_impossible"],
            source=note,
        )
        out.append(ex)
    return out


def as_batch(examples):
    """A `datasets` batch (dict of columns) in the squad_v2 layout run_qa reads."""
    return {
        "id": [e["id"] for e in examples],
        "question": [e["question"] for e in examples],
        "context": [e["context"] for e in examples],
        "answers": [
            {"text": [a["text"] for a in e["answers"]],
             "answer_start": [a["answer_start"] for a in e["answers"]]}
            for e in examples
        ],
    }


def cls_index_of(tokenizer, input_ids):
    # run_qa.py (current main): the CLS token, else BOS, else 0; older run_qa.py used
    # input_ids.index(tokenizer.cls_token_id) only. Same result for both tokenizers here.
    if tokenizer.cls_token_id in input_ids:
        return input_ids.index(tokenizer.cls_token_id)
    if tokenizer.bos_token_id in input_ids:
        return input_ids.index(tokenizer.bos_token_id)
    return 0


def tokenize_pairs(tokenizer, examples, max_seq_length, doc_stride, pad_to_max_length):
    pad_on_right = tokenizer.padding_side == "right"
    return tokenizer(
        examples["question" if pad_on_right else "context"],
        examples["context" if pad_on_right else "question"],
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )


def prepare_train_features(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length=False):
    """run_qa.py, main() -> prepare_train_features, re-implemented (same steps): only a
    cross-check of what run_qa.py's own function gives (cross_check_reimplementation)."""
    pad_on_right = tokenizer.padding_side == "right"
    examples = dict(examples)
    # questions are left-stripped (long leading whitespace would eat the context's room)
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tok = tokenize_pairs(tokenizer, examples, max_seq_length, doc_stride, pad_to_max_length)
    sample_mapping = tok.pop("overflow_to_sample_mapping")
    offset_mapping = tok.pop("offset_mapping")
    tok["start_positions"] = []
    tok["end_positions"] = []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tok["input_ids"][i]
        cls_index = cls_index_of(tokenizer, input_ids)
        sequence_ids = tok.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            tok["start_positions"].append(cls_index)
            tok["end_positions"].append(cls_index)
            continue
        # the FIRST gold answer only
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        context_id = 1 if pad_on_right else 0
        token_start_index = 0
        while sequence_ids[token_start_index] != context_id:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != context_id:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            # answer not wholly inside this window: label the CLS token
            tok["start_positions"].append(cls_index)
            tok["end_positions"].append(cls_index)
        else:
            # note: this loop walks over every token whose START offset is <= start_char,
            # special tokens after the context included ((0, 0) offsets)
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            tok["start_positions"].append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            tok["end_positions"].append(token_end_index + 1)
    return tok


def prepare_validation_features(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length=False):
    """run_qa.py, main() -> prepare_validation_features, re-implemented (same steps): only a
    cross-check, as prepare_train_features."""
    pad_on_right = tokenizer.padding_side == "right"
    examples = dict(examples)
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tok = tokenize_pairs(tokenizer, examples, max_seq_length, doc_stride, pad_to_max_length)
    sample_mapping = tok.pop("overflow_to_sample_mapping")
    tok["example_id"] = []
    for i in range(len(tok["input_ids"])):
        sequence_ids = tok.sequence_ids(i)
        context_index = 1 if pad_on_right else 0
        tok["example_id"].append(examples["id"][sample_mapping[i]])
        tok["offset_mapping"][i] = [
            (o if sequence_ids[k] == context_index else None)
            for k, o in enumerate(tok["offset_mapping"][i])
        ]
    tok["_sample_mapping"] = list(sample_mapping)  # kept for the fixture only
    return tok


def tokenizer_json_diffs(tok_dir, examples, raw_tok):
    """Where tokenizers.Tokenizer.from_file(tokenizer.json) (what a Rust `tokenizers` user
    loads) gives other ids/offsets than the transformers-loaded tokenizer (`raw_tok`: run_qa's
    tokenizer call, offsets not yet masked)."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    raw.enable_truncation(max_length=MAX_SEQ_LENGTH, stride=DOC_STRIDE, strategy="only_second")
    encs = []
    for e in examples:
        enc = raw.encode(e["question"].lstrip(), e["context"])
        encs += [enc] + list(enc.overflowing)
    diffs = []
    assert len(encs) == len(raw_tok["input_ids"])
    for f, enc in enumerate(encs):
        if enc.ids != raw_tok["input_ids"][f]:
            diffs.append({"feature": f, "what": "input_ids differ"})
        seq = raw_tok.sequence_ids(f)
        for k, (o_raw, o_tf) in enumerate(zip(enc.offsets, raw_tok["offset_mapping"][f])):
            if tuple(o_raw) != tuple(o_tf):
                diffs.append({"feature": f, "position": k, "sequence_id": seq[k],
                              "transformers": list(o_tf), "tokenizer_json": list(o_raw)})
    return diffs


PREPARE = ("prepare_train_features", "prepare_validation_features")


def load_run_qa(run_qa_path):
    """run_qa.py's prepare_train_features and prepare_validation_features, the functions
    nested in its main(), taken out with ast (their source unmodified) and compiled."""
    import ast

    src = Path(run_qa_path).read_text(encoding="utf-8")
    tree = ast.parse(src, filename=str(run_qa_path))
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{run_qa_path}: no single top-level main()"
    fns = {n.name: n for n in mains[0].body
           if isinstance(n, ast.FunctionDef) and n.name in PREPARE}
    assert sorted(fns) == sorted(PREPARE), f"{run_qa_path}: main() defines {sorted(fns)}"
    return compile(ast.Module(body=[fns[n] for n in PREPARE], type_ignores=[]),
                   str(run_qa_path), "exec")


def run_qa_functions(code, tokenizer):
    """Define the two functions (`code`, from load_run_qa) with the names main() has bound
    when it defines them, as for a squad_v2-layout data set (question / context / answers
    columns), --max_seq_length 48 --doc_stride 16 and no --pad_to_max_length."""
    import types

    ns = dict(
        tokenizer=tokenizer,
        pad_on_right=tokenizer.padding_side == "right",
        question_column_name="question",
        context_column_name="context",
        answer_column_name="answers",
        max_seq_length=min(MAX_SEQ_LENGTH, tokenizer.model_max_length),
        data_args=types.SimpleNamespace(doc_stride=DOC_STRIDE, pad_to_max_length=False),
    )
    exec(code, ns)
    return ns["prepare_train_features"], ns["prepare_validation_features"]


def offsets_as_lists(rows):
    return [[None if o is None else list(o) for o in om] for om in rows]


def cross_check_reimplementation(name, tokenizer, batch, max_len, train, val, example_index):
    """The re-implementation above must give what run_qa.py's own functions gave; exit 1
    if it does not."""
    train_r = prepare_train_features(batch, tokenizer, max_len, DOC_STRIDE)
    val_r = prepare_validation_features(batch, tokenizer, max_len, DOC_STRIDE)
    pairs = [
        ("example index", example_index, val_r["_sample_mapping"]),
        ("example_id", val["example_id"], val_r["example_id"]),
        ("offset_mapping", offsets_as_lists(val["offset_mapping"]),
         offsets_as_lists(val_r["offset_mapping"])),
    ]
    for key in ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"):
        if key in train or key in train_r:
            pairs.append((key, train.get(key), train_r.get(key)))
    bad = [what for what, theirs, ours in pairs if theirs != ours]
    if bad:
        print(f"{name}: the re-implementation in {Path(__file__).name} disagrees with run_qa.py's "
              f"own prepare_* functions on: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


def features(data, run_qa_path, out_dir):
    """Features from run_qa.py's own prepare_train_features / prepare_validation_features."""
    from transformers import AutoTokenizer

    code = load_run_qa(run_qa_path)
    examples = build_examples(data)
    ids = [e["id"] for e in examples]
    assert len(set(ids)) == len(ids)
    result = {
        "reference": "transformers examples/pytorch/question-answering/run_qa.py: "
        "prepare_train_features + prepare_validation_features (the functions nested in its "
        "main(), executed unmodified by scripts/squad_reference.py)",
        "max_seq_length": MAX_SEQ_LENGTH,
        "doc_stride": DOC_STRIDE,
        "pad_to_max_length": False,
        "examples": examples,
        "tokenizers": {},
    }
    for name in TOKENIZERS:
        tok_dir = ROOT / "tests" / "fixtures" / name
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        assert tokenizer.is_fast, name
        assert tokenizer.padding_side == "right"
        max_len = min(MAX_SEQ_LENGTH, tokenizer.model_max_length)
        prep_train, prep_val = run_qa_functions(code, tokenizer)
        # both lstrip the question column of the batch they are given, in place: a fresh
        # batch for each call
        train = prep_train(as_batch(examples))
        val = prep_val(as_batch(examples))
        assert train["input_ids"] == val["input_ids"], name
        # run_qa drops overflow_to_sample_mapping; example_id (unique here) gives it back
        example_index = [ids.index(x) for x in val["example_id"]]
        # run_qa's tokenizer call once more, for the unmasked offsets (tokenizer_json_diffs)
        batch = as_batch(examples)
        raw_tok = tokenize_pairs(tokenizer, dict(batch, question=[q.lstrip() for q in batch["question"]]),
                                 max_len, DOC_STRIDE, False)
        assert raw_tok["input_ids"] == val["input_ids"], name
        assert list(raw_tok["overflow_to_sample_mapping"]) == example_index, name
        cross_check_reimplementation(name, tokenizer, as_batch(examples), max_len, train, val,
                                     example_index)
        feats = []
        for i in range(len(val["input_ids"])):
            f = {
                "example_index": example_index[i],
                "example_id": val["example_id"][i],
                "input_ids": val["input_ids"][i],
            }
            if "token_type_ids" in val:
                f["token_type_ids"] = val["token_type_ids"][i]
            assert all(m == 1 for m in val["attention_mask"][i])
            f["start_position"] = train["start_positions"][i]
            f["end_position"] = train["end_positions"][i]
            f["offset_mapping"] = offsets_as_lists(val["offset_mapping"][i:i + 1])[0]
            feats.append(f)
        n_per_ex = [sum(1 for f in feats if f["example_index"] == j) for j in range(len(examples))]
        result["tokenizers"][name] = {
            "dir": f"tests/fixtures/{name}",
            "class": type(tokenizer).__name__,
            "is_fast": tokenizer.is_fast,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "num_special_tokens_pair": tokenizer.num_special_tokens_to_add(pair=True),
            "returns_token_type_ids": "token_type_ids" in val,
            "features_per_example": n_per_ex,
            "features": feats,
            "tokenizer_json_diffs": tokenizer_json_diffs(tok_dir, examples, raw_tok),
        }
        print(f"{name}: {len(feats)} features from {run_qa_path}'s prepare_* functions "
              "(the re-implementation agrees)")
    check_feature_coverage(result)
    write(out_dir / "features.json", result)
    return result


def check_feature_coverage(result):
    """The cases the fixture is meant to hold are there."""
    exs = result["examples"]
    assert any(e["is_impossible"] for e in exs)
    assert any(e["question"] != e["question"].lstrip() for e in exs)
    for name, t in result["tokenizers"].items():
        feats = t["features"]
        assert sum(1 for n in t["features_per_example"] if n > 1) >= 3, name
        # answerable examples with some windows labelled CLS (answer outside) and some not
        mixed = 0
        for j, e in enumerate(exs):
            fs = [f for f in feats if f["example_index"] == j]
            labels = {f["start_position"] == 0 for f in fs}
            if not e["answers"]:
                assert labels == {True}
            mixed += labels == {True, False}
        assert mixed >= 3, (name, mixed)
        # the start label that overshoots onto the final separator
        assert any(f["start_position"] > f["end_position"] for f in feats), name


# --------------------------------------------------------------------------------------
# (c) utils_qa.py post-processing


class Rows(list):
    """Enough of datasets.Dataset for postprocess_qa_predictions: rows, and columns by name."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        return list.__getitem__(self, key)


def f32_short(x):
    """Shortest decimal that reads back (as float32, or as float64 then cast) to x."""
    v = float(str(np.float32(x)))
    assert np.float32(v) == np.float32(x)
    return v


# example index -> amount added to the start and end logits at position 0 of its features
CLS_BOOST = {2: 2.0, 4: 4.0, 6: 4.0, 7: 3.5, 8: 1.5}

SETTINGS = [
    ("v1", dict(version_2_with_negative=False, n_best_size=20, max_answer_length=30)),
    ("v2_thresh_0", dict(version_2_with_negative=True, n_best_size=20, max_answer_length=30,
                         null_score_diff_threshold=0.0)),
    ("v2_thresh_1.5", dict(version_2_with_negative=True, n_best_size=20, max_answer_length=30,
                           null_score_diff_threshold=1.5)),
    ("v1_max_answer_length_3", dict(version_2_with_negative=False, n_best_size=20, max_answer_length=3)),
]
NBEST_SETTING = "v2_thresh_0"
NBEST_TOP = 6  # first entries of each n-best list kept in the fixture


def postprocess(feat_result, utils_qa_path, out_dir):
    utils_qa = load_module(utils_qa_path, "utils_qa_reference")
    name = "tiny-bert"
    examples = Rows({"id": e["id"], "context": e["context"]} for e in feat_result["examples"])
    feats = Rows(
        {"example_id": f["example_id"],
         "offset_mapping": [None if o is None else tuple(o) for o in f["offset_mapping"]]}
        for f in feat_result["tokenizers"][name]["features"]
    )
    rng = np.random.default_rng(SEED_LOGITS)
    shape = (len(feats), MAX_SEQ_LENGTH)
    start = rng.standard_normal(shape, dtype=np.float32)
    end = rng.standard_normal(shape, dtype=np.float32)
    # Pure noise almost never prefers the null answer (its score is the MINIMUM over an
    # example's features of start[0] + end[0], against the best of many spans), so the
    # CLS logits (position 0) of some examples' features are raised, in float32.
    for j, boost in CLS_BOOST.items():
        rows = [i for i, f in enumerate(feats) if f["example_id"] == examples[j]["id"]]
        start[rows, 0] += np.float32(boost)
        end[rows, 0] += np.float32(boost)
    # np.argsort (default kind) is not stable: keep every row free of ties
    for row in np.concatenate([start, end]):
        assert len(set(row.tolist())) == len(row)
    out = {
        "reference": "transformers examples/pytorch/question-answering/utils_qa.py: "
        "postprocess_qa_predictions (imported unmodified)",
        "tokenizer": name,
        "features": "features.json -> tokenizers.tiny-bert.features (offset_mapping, example_id); "
        "examples: features.json -> examples (id, context)",
        "seed": SEED_LOGITS,
        "cls_boost": {str(k): v for k, v in CLS_BOOST.items()},
        "logits_note": "float32, numpy.random.default_rng(seed).standard_normal((n_features, 48), "
        "dtype=float32), start then end, then cls_boost[example index] added (float32) at "
        "position 0 of start and end of that example's features; written as the shortest decimal of each float32 "
        "(parse as f32, or as f64 then cast to f32: same value). Rows are 48 long for every "
        "feature: positions at or past a shorter feature's length stand for padding and "
        "still compete for the n-best argsort slots (then dropped by the offset check).",
        "start_logits": [[f32_short(x) for x in row] for row in start],
        "end_logits": [[f32_short(x) for x in row] for row in end],
        "settings": {},
    }
    for sname, kw in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            preds = utils_qa.postprocess_qa_predictions(
                examples, feats, (start, end), output_dir=tmp, **kw
            )
            if isinstance(preds, tuple):  # some versions return (predictions, diffs)
                preds = preds[0]
            entry = {"args": kw, "predictions": dict(preds)}
            null_odds = Path(tmp) / "null_odds.json"
            if null_odds.exists():
                entry["scores_diff"] = json.loads(null_odds.read_text())
            if sname == NBEST_SETTING:
                nbest = json.loads((Path(tmp) / "nbest_predictions.json").read_text())
                entry["nbest_top"] = NBEST_TOP
                entry["nbest"] = {k: v[:NBEST_TOP] for k, v in nbest.items()}
        out["settings"][sname] = entry
    check_postprocess_coverage(out)
    write(out_dir / "postprocess.json", out)


def check_postprocess_coverage(out):
    s = out["settings"]
    # the max_answer_length=3 setting changes some answers
    assert s["v1"]["predictions"] != s["v1_max_answer_length_3"]["predictions"]
    for k in ("v2_thresh_0", "v2_thresh_1.5"):
        vals = set(s[k]["predictions"].values())
        assert "" in vals and len(vals) > 1, (k, vals)
    assert s["v2_thresh_0"]["predictions"] != s["v2_thresh_1.5"]["predictions"]


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official-v2", required=True, type=Path, help="evaluate-v2.0.py")
    ap.add_argument("--official-v1", required=True, type=Path, help="evaluate-v1.1.py")
    ap.add_argument("--utils-qa", required=True, type=Path, help="transformers' utils_qa.py")
    ap.add_argument("--run-qa", required=True, type=Path, help="transformers' run_qa.py: "
                    "features.json is what its nested prepare_* functions give")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.data.read_text())
    official(data, args.official_v2, args.official_v1, args.out)
    feat = features(data, args.run_qa, args.out)
    postprocess(feat, args.utils_qa, args.out)


if __name__ == "__main__":
    main()
