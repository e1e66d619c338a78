"""Golden fixtures for XLNet: the content stream only, as fine-tuning runs it (no memory,
no permutation mask, no target mapping, so no query stream).

    /work/venv/bin/python tests/golden/make_xlnet_golden.py

Writes tests/fixtures/tiny-xlnet/:

  spiece.model           a SentencePiece Unigram model trained here on the tests' texts,
                         laid out as xlnet-base-cased's: <unk> 0, <s> 1, </s> 2, control
                         pieces <cls> 3, <sep> 4, <pad> 5, <mask> 6, <eod> 7, user-defined
                         pieces <eop> 8 . ( ) " - – £ € (9-16), as XLNet's README trains it
                         (--control_symbols=<cls>,<sep>,<pad>,<mask>,<eod>
                         --user_defined_symbols=<eop>,.,(,),",-,–,£,€); no tokenizer.json.
  tokenizer_config.json  XLNetTokenizer, do_lower_case false, remove_space true,
                         keep_accents false, padding_side left.
  config.json, model.safetensors
                         XLNetForSequenceClassification (d_model 32, 2 layers, 4 heads of 8,
                         d_inner 64, gelu, bi attention, untie_r, summary "last" with a tanh
                         projection, 3 labels); every parameter moved off its init.
  golden.safetensors     the golden batch (singles and pairs, left-padded by transformers to
                         the longest, at most 24 tokens), eval mode: every layer's hidden
                         states, the last one, the relative position embedding, logits, loss,
                         `grad.<name>`; a regression head (`reg_*`); the per-example Fisher of
                         the first three examples (each example's last n tokens: XLNet pads
                         on the left).
  golden_texts.json      the batch's texts.
  train_golden.safetensors
                         the same forward in train mode with peft's dropout masks
                         (make_dropout_golden.py's PeftMasks, seed 7).
  qa_golden.safetensors  XLNetForQuestionAnsweringSimple on the same encoder: question-
                         context windows of one length (no padding, as make_qa_golden.py),
                         and, under `padded.`, a left-padded batch's start and end logits.
  tokenizer_golden.json  transformers' ids, type ids, offsets and sequence ids on texts where
                         tokenizers part ways.

and tests/fixtures/tiny-xlnet-fast/: the tokenizer.json transformers builds from
spiece.model, with its tokenizer_config.json, to be paired with tiny-xlnet's weights.

transformers 5 has one XLNetTokenizer, backed by `tokenizers` and converted from
spiece.model on load (XLNetTokenizerFast is the same class). The script also runs the
SentencePiece algorithm of transformers 4's slow XLNetTokenizer (`slow_encode`) on every
golden text and prints where it disagrees: only on digits before a comma ("1,500": the
slow tokenizer splits the "▁1," piece into "▁", "1", ","; transformers 5 keeps it).
transformers 5's XLNetTokenizer returns token_type_ids only when asked
(return_token_type_ids=True, as here: without them XLNetModel leaves out the segment term)
and pads them with 0 (transformers 4: 3); real tokens' outputs do not depend on it, the
padding positions' hidden states do. Made with torch 2.15.0, transformers 5.25.0,
tokenizers 0.23.3, sentencepiece 0.2.3.
"""

import json
import os
import shutil
import sys
import tempfile
import unicodedata

import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import (
    AutoTokenizer,
    XLNetConfig,
    XLNetForQuestionAnsweringSimple,
    XLNetForSequenceClassification,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_dropout_golden import SEED, PeftMasks  # noqa: E402
from make_golden import MAX_LEN, PAIRS, SENTENCES, corpus  # noqa: E402
from make_qa_golden import CONTEXT, QUESTIONS  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
OUT = os.path.join(ROOT, "tiny-xlnet")
FAST = os.path.join(ROOT, "tiny-xlnet-fast")

CONTROL = ["<cls>", "<sep>", "<pad>", "<mask>", "<eod>"]
USER_DEFINED = ["<eop>", ".", "(", ")", '"', "-", "\u2013", "\u00a3", "\u20ac"]

# Lines beyond make_golden's corpus: accents, TeX quotes, whitespace runs, brackets and
# dashes (user-defined pieces), digits with commas (a "▁1," piece, which transformers 4's
# slow tokenizer splits), and enough ordinary text for a vocabulary near 300.
EXTRA = [
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00fcber \u00e9lan d\u00e9j\u00e0 vu.",
    "He said ``hello'' and she said ''goodbye'' to the children.",
    "Double  spaces  here and   there, then  more.",
    "\"Quoted\" text (with brackets) - and a dash \u2013 too.",
    "Prices: \u00a35, \u20ac10 and 3,000 dollars in 2019, 1,500 in 2020.",
    "The numbers 1, 2, 3 and 10, 20, 30 are small.",
    "Every morning the children walked to school along the river.",
    "My grandmother bakes bread and sings old songs in the kitchen.",
    "The weather was cold, so we stayed inside and played games.",
    "Scientists discovered a new species of frog in the forest.",
    "Would you like some coffee or tea with your breakfast?",
    "The train leaves the station at seven o'clock every evening.",
    "Students were reading books quietly in the library yesterday.",
    "The quick brown fox jumps over the lazy dog.",
    "Mountains, rivers and oceans cover most of the planet.",
    "Nobody expected the small team to win the championship.",
    "Her brother plays the piano beautifully and writes poems.",
    "They're building a bridge across the valley this summer.",
]

# The golden batch: three singles and three pairs of different lengths; the long ones
# are cut at MAX_LEN, the short ones padded on the left.
BATCH_SINGLES = [SENTENCES[0], SENTENCES[4], SENTENCES[5]]
BATCH_PAIRS = [PAIRS[0], PAIRS[3], PAIRS[1]]

# Texts where tokenizers part ways (tokenizer_golden.json).
TRICKY = [
    ("  Leading and trailing spaces  ", None),
    ("Tabs\tand\nnew lines,   runs   of  spaces.", None),
    ("Caf\u00e9 na\u00efve", "cafe\u0301 and e\u0301"),
    ("He said ``hello'' and ''bye'' to \"them\".", None),
    ("Prices: 3,000 and 1,500, or 1, 2, 10, 20.", None),
    ("The \ufb01sh \u2460 \u216b", "UPPER lower MiXeD"),
    ("e.g. state-of-the-art (2019) \u2013 \u00a35", None),
    ("\u4e2d\u6587 and \u00a7 symbols \u2603 \U0001F600 here", None),
    ("Where is the cat?", "The cat sat on the mat in the house."),
    ("<sep> and <cls> in the text <mask> too", None),
    ("End.<eop> Next <eod> c", None),
]


def train_spm(out):
    """spiece.model: one training thread, so that rerunning writes the same pieces."""
    prefix = os.path.join(out, "spiece")
    lines = corpus() + QUESTIONS + [CONTEXT] + EXTRA
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_prefix=prefix, model_type="unigram",
        vocab_size=300, hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>",
        eos_piece="</s>", control_symbols=CONTROL, user_defined_symbols=USER_DEFINED,
        minloglevel=2)
    os.remove(prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    want = ["<unk>", "<s>", "</s>"] + CONTROL + USER_DEFINED
    got = [sp.id_to_piece(i) for i in range(len(want))]
    assert got == want, got
    return sp


def write_tokenizer_config(out):
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "XLNetTokenizer", "do_lower_case": False,
                   "remove_space": True, "keep_accents": False, "padding_side": "left",
                   "model_max_length": 512}, f, indent=1)


def slow_encode(sp, a, b=None):
    """transformers 4's slow XLNetTokenizer on SentencePiece: the text split on special
    tokens (<mask> strips the space before it), each chunk through `preprocess_text`
    (whitespace runs to one space, stripped; `` and '' to "; NFKD and no combining marks)
    and `_tokenize` (a piece ending in digit + "," is split before the comma), then
    A <sep> [B <sep>] <cls> with types 0, [1,] 2."""
    specials = ["<unk>", "<s>", "</s>"] + CONTROL + ["<eop>"]

    def chunks(text):
        out, i, cur = [], 0, ""
        while i < len(text):
            hit = next((s for s in specials if text.startswith(s, i)), None)
            if hit is None:
                cur += text[i]
                i += 1
                continue
            if hit == "<mask>":
                cur = cur.rstrip()
            out += [cur, hit] if cur else [hit]
            cur, i = "", i + len(hit)
        return out + ([cur] if cur else [])

    def pieces(text):
        text = " ".join(text.strip().split())
        text = text.replace("``", '"').replace("''", '"')
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
        new = []
        for piece in sp.encode(text, out_type=str):
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                cur = sp.encode(piece[:-1].replace("\u2581", ""), out_type=str)
                if piece[0] != "\u2581" and cur[0][0] == "\u2581":
                    cur = cur[1:] if len(cur[0]) == 1 else [cur[0][1:]] + cur[1:]
                new += cur + [piece[-1]]
            else:
                new.append(piece)
        return new

    def ids(text):
        out = []
        for c in chunks(text):
            out += [sp.piece_to_id(c)] if c in specials else [sp.piece_to_id(p) for p in pieces(c)]
        return out

    sep, cls = sp.piece_to_id("<sep>"), sp.piece_to_id("<cls>")
    first = ids(a) + [sep]
    if b is None:
        return first + [cls], [0] * len(first) + [2]
    second = ids(b) + [sep]
    return first + second + [cls], [0] * len(first) + [1] * len(second) + [2]


def tokenizer_golden(tok, sp, out):
    """tokenizer_golden.json, as make_golden.py writes it for DeBERTa; prints where
    transformers 4's slow algorithm (slow_encode) disagrees."""
    rows = []
    for a, b in TRICKY:
        enc = tok(a, b, return_offsets_mapping=True, return_token_type_ids=True)
        rows.append({"first": a, "second": b, "ids": enc["input_ids"],
                     "type_ids": enc["token_type_ids"],
                     "offsets": [list(o) for o in enc["offset_mapping"]],
                     "sequence_ids": enc.sequence_ids()})
    with open(os.path.join(out, "tokenizer_golden.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    return rows


def compare_tokenizers(tok, fast_dir, sp, texts):
    """transformers from spiece.model, transformers from tokenizer.json, `tokenizers`
    alone on tokenizer.json (what a Rust reader of tokenizer.json gets) and the slow
    algorithm: print every text where they part."""
    tok_json = AutoTokenizer.from_pretrained(fast_dir)
    raw = Tokenizer.from_file(os.path.join(fast_dir, "tokenizer.json"))
    disagree = []
    for a, b in texts:
        enc = tok(a, b, return_token_type_ids=True)
        ids, types = enc["input_ids"], enc["token_type_ids"]
        enc_json = tok_json(a, b, return_token_type_ids=True)
        assert (enc_json["input_ids"], enc_json["token_type_ids"]) == (ids, types), (a, b)
        r = raw.encode(a, b)
        assert (r.ids, r.type_ids) == (ids, types), (a, b, r.ids, ids)
        slow = slow_encode(sp, a, b)
        if slow != (ids, types):
            disagree.append((a, b, tok.convert_ids_to_tokens(ids),
                             [sp.id_to_piece(i) for i in slow[0]]))
    for a, b, fast_pieces, slow_pieces in disagree:
        print(f"slow and fast differ on {a!r} / {b!r}:\n  fast {fast_pieces}\n  slow {slow_pieces}")
    print(f"tokenizers: spiece.model, tokenizer.json (transformers and tokenizers) agree on "
          f"{len(texts)} texts; the slow algorithm differs on {len(disagree)}")


def config(vocab_size, tok, num_labels=3, **extra):
    """xlnet-base-cased's settings at a tiny size. `untie_r` is not a field of transformers
    5's XLNetConfig (the biases are always per layer); it is written to config.json as
    the hub's configs have it."""
    return XLNetConfig(
        vocab_size=vocab_size, d_model=32, n_layer=2, n_head=4, d_head=8, d_inner=64,
        ff_activation="gelu", untie_r=True, attn_type="bi", bi_data=False, clamp_len=-1,
        mem_len=None, reuse_len=None, same_length=False, dropout=0.1, layer_norm_eps=1e-12,
        summary_type="last", summary_use_proj=True, summary_activation="tanh",
        summary_last_dropout=0.1, use_mems_eval=True, use_mems_train=False,
        start_n_top=5, end_n_top=5, num_labels=num_labels,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, **extra)


def perturb(model, seed, only=None):
    """make_golden.py's perturb with XLNet's names: LayerNorm weights 1 + 0.2·N(0,1),
    everything else (biases, r_w_bias, r_r_bias, r_s_bias, seg_embed, mask_emb) 0.1·N(0,1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only is not None and not only(name):
                continue
            noise = torch.randn(p.shape, generator=g)
            if "layer_norm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def is_head(name):
    return name.startswith("sequence_summary.") or name.startswith("logits_proj.")


def golden_batch(tok):
    """Singles and pairs tokenized as separate calls, then padded together by
    transformers (on the left, XLNet's side)."""
    singles = tok(BATCH_SINGLES, truncation=True, max_length=MAX_LEN, return_token_type_ids=True)
    pairs = tok([a for a, _ in BATCH_PAIRS], [b for _, b in BATCH_PAIRS],
                truncation="longest_first", max_length=MAX_LEN, return_token_type_ids=True)
    rows = []
    for enc in (singles, pairs):
        for i in range(len(enc["input_ids"])):
            rows.append({k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")})
    assert tok.padding_side == "left"
    batch = tok.pad(rows, padding="longest", return_tensors="pt")
    return {k: batch[k].long() for k in ("input_ids", "token_type_ids", "attention_mask")}


def grads(model, prefix="grad."):
    out, none = {}, []
    for name, p in model.named_parameters():
        if p.grad is None:
            none.append(name)
        else:
            out[prefix + name] = p.grad.detach().clone()
    return out, none


def build():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    sp = train_spm(OUT)
    write_tokenizer_config(OUT)
    tok = AutoTokenizer.from_pretrained(OUT)
    assert type(tok).__name__ == "XLNetTokenizer" and tok.padding_side == "left"
    assert len(tok) == sp.get_piece_size(), (len(tok), sp.get_piece_size())
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (5, 3, 4, 6)

    # The tokenizer.json transformers builds from spiece.model.
    shutil.rmtree(FAST, ignore_errors=True)
    os.makedirs(FAST)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), FAST)
    write_tokenizer_config(FAST)
    with open(os.path.join(FAST, "README.md"), "w") as f:
        f.write("The tokenizer.json that transformers 5.25 builds from tiny-xlnet/spiece.model "
                "(tests/golden/make_xlnet_golden.py); no weights: the Rust tests pair it with "
                "tests/fixtures/tiny-xlnet's config.json and model.safetensors.\n")

    rows = tokenizer_golden(tok, sp, OUT)
    golden_texts = [(a, None) for a in BATCH_SINGLES] + list(BATCH_PAIRS)
    qa_texts = [(q, CONTEXT) for q in QUESTIONS]
    compare_tokenizers(tok, FAST, sp, [(r["first"], r["second"]) for r in rows]
                       + golden_texts + qa_texts)

    # The classification model.
    torch.manual_seed(0)
    cfg = config(len(tok), tok)
    model = XLNetForSequenceClassification(cfg)
    perturb(model, seed=8)
    model.eval()
    model.save_pretrained(OUT, safe_serialization=True)
    with open(os.path.join(OUT, "config.json")) as f:
        saved = json.load(f)
    assert saved.get("untie_r") is True and saved.get("mem_len") is None, saved

    batch = golden_batch(tok)
    input_ids = batch["input_ids"]
    n = input_ids.shape[0]
    labels = torch.tensor([i % 3 for i in range(n)], dtype=torch.long)
    out = model(**batch, labels=labels, output_hidden_states=True)
    out.loss.backward()
    tensors = {
        **batch,
        "labels": labels,
        "last_hidden_state": out.hidden_states[-1].detach().clone(),
        "logits": out.logits.detach(),
        "loss": out.loss.detach().reshape(1),
    }
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.detach().clone()
    width = input_ids.shape[1]
    with torch.no_grad():
        enc_out = model.transformer(**batch)
        assert torch.equal(enc_out.last_hidden_state, out.hidden_states[-1])
        tensors["pos_emb"] = model.transformer.relative_positional_encoding(width, width)[:, 0]
    g, none = grads(model)
    tensors.update(g)
    print(f"classification: parameters without a gradient: {none}")
    assert none == ["transformer.mask_emb"], none

    # Per-example Fisher of the first three examples, each on its own tokens: the last n
    # (XLNet pads on the left).
    fisher = {}
    for i in range(3):
        model.zero_grad()
        k = int(batch["attention_mask"][i].sum())
        one = {key: v[i:i + 1, width - k:] for key, v in batch.items()}
        model(**one, labels=labels[i:i + 1]).loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                fisher[name] = fisher.get(name, 0) + p.grad.detach() ** 2 / 3
    for name, f in fisher.items():
        tensors["fisher." + name] = f
    model.zero_grad()

    # Regression (STS-B): the same encoder, a fresh head (sequence_summary and
    # logits_proj, as fine-tuning from a pretrained XLNet creates both) with one output,
    # seeded and perturbed, mean squared error.
    torch.manual_seed(3)
    reg_cfg = config(len(tok), tok, num_labels=1, problem_type="regression")
    reg = XLNetForSequenceClassification(reg_cfg)
    missing = reg.load_state_dict({k: v for k, v in model.state_dict().items() if not is_head(k)},
                                  strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in reg.state_dict() if is_head(k)), missing
    perturb(reg, seed=9, only=is_head)
    reg.eval()
    scores = torch.linspace(0.0, 5.0, n)
    out_reg = reg(**batch, labels=scores)
    out_reg.loss.backward()
    tensors["reg_labels"] = scores
    tensors["reg_logits"] = out_reg.logits.detach()
    tensors["reg_loss"] = out_reg.loss.detach().reshape(1)
    for name, p in reg.named_parameters():
        if is_head(name):
            tensors["reg_head." + name] = p.detach().clone()
    tensors.update(grads(reg, "reg_grad.")[0])
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "golden.safetensors"))
    with open(os.path.join(OUT, "golden_texts.json"), "w") as f:
        json.dump({"max_len": MAX_LEN, "first": [a for a, _ in golden_texts],
                   "second": [b for _, b in golden_texts]}, f, indent=1)
    assert (input_ids == tok.unk_token_id).float().mean() < 0.2, "tokenizer lost its vocabulary"
    print(f"wrote {OUT}: batch {tuple(input_ids.shape)}, lengths "
          f"{batch['attention_mask'].sum(1).tolist()}, loss {out.loss.item():.6f}")

    train_golden(batch, labels)
    qa_golden(tok)


def train_golden(batch, labels):
    """make_dropout_golden.py's train-mode forward: F.dropout replaced by PeftMasks(SEED)."""
    model = XLNetForSequenceClassification.from_pretrained(OUT, attn_implementation="eager")
    model.train()
    masks = PeftMasks(SEED)
    F.dropout = masks
    torch.nn.functional.dropout = masks
    try:
        out = model(**batch, labels=labels)
        out.loss.backward()
    finally:
        F.dropout = masks.original
        torch.nn.functional.dropout = masks.original
    tensors = {
        "seed": torch.tensor([SEED]),
        "calls": torch.tensor([masks.calls]),
        "logits": out.logits.detach().clone(),
        "loss": out.loss.detach().reshape(1).clone(),
    }
    g, none = grads(model)
    assert none == ["transformer.mask_emb"], none
    tensors.update(g)
    save_file(tensors, os.path.join(OUT, "train_golden.safetensors"))
    print(f"train mode: {masks.calls} masks, loss {out.loss.item():.6f}")


QA_LENGTH = 40


def qa_golden(tok):
    """make_qa_golden.py for XLNetForQuestionAnsweringSimple: (question, context) pairs cut
    to one length, so no padding (transformers keeps padding in the span softmax, peft
    leaves it out); qa_outputs seeded. Start and end positions: the first example points
    at its final <cls> (XLNet's no-answer index), the others into the context. Also a
    left-padded batch (`padded.*`): inputs and start and end logits, no loss."""
    torch.manual_seed(11)
    model = XLNetForQuestionAnsweringSimple.from_pretrained(OUT, attn_implementation="eager",
                                                            num_labels=2)
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0.0, 0.3)
        model.qa_outputs.bias.normal_(0.0, 0.3)
    model.eval()
    enc = tok(QUESTIONS, [CONTEXT] * len(QUESTIONS), truncation="only_second",
              max_length=QA_LENGTH, return_token_type_ids=True, return_tensors="pt")
    assert enc["input_ids"].shape == (len(QUESTIONS), QA_LENGTH)
    assert bool(enc["attention_mask"].all()), "the windows must not be padded"
    assert bool((enc["input_ids"][:, -1] == tok.cls_token_id).all())
    starts = torch.tensor([QA_LENGTH - 1, 12, 15])
    ends = torch.tensor([QA_LENGTH - 1, 14, 17])
    kwargs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = model(**kwargs, start_positions=starts, end_positions=ends)
    out.loss.backward()
    tensors = {
        **kwargs,
        "positions": torch.stack([starts, ends], dim=1),
        "qa_outputs.weight": model.qa_outputs.weight.detach().clone(),
        "qa_outputs.bias": model.qa_outputs.bias.detach().clone(),
        "start_logits": out.start_logits.detach(),
        "end_logits": out.end_logits.detach(),
        "loss": out.loss.detach().reshape(1),
    }
    g, none = grads(model)
    assert none == ["transformer.mask_emb"], none
    tensors.update(g)

    padded = tok(QUESTIONS, ["The cat sat on the mat.", "A man walked his dog in the park.",
                             CONTEXT], truncation="only_second", max_length=QA_LENGTH,
                 padding="longest", return_token_type_ids=True, return_tensors="pt")
    assert not bool(padded["attention_mask"].all()) and bool(padded["attention_mask"][:, -1].all())
    pk = {k: padded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        pout = model(**pk)
    for k, v in pk.items():
        tensors["padded." + k] = v
    tensors["padded.start_logits"] = pout.start_logits
    tensors["padded.end_logits"] = pout.end_logits
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "qa_golden.safetensors"))
    print(f"wrote {OUT}/qa_golden.safetensors: loss {out.loss.item():.6f}")


if __name__ == "__main__":
    build()
