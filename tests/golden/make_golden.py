"""Build the golden fixtures the Rust parity tests compare against.

Run from the repository root with a Python that has torch, transformers and
safetensors (`pip install torch transformers peft safetensors sentencepiece protobuf`,
as tests/README.md says), and sentencepiece for tiny-deberta-v2's
spm.model:

    python tests/golden/make_golden.py

It writes tests/fixtures/tiny-bert/, tiny-roberta/, tiny-electra/, tiny-deberta-v2/,
tiny-deberta-v2-abs/ and tiny-deberta/ (`python tests/golden/make_golden.py electra` for
one of them; with no argument, BERT and RoBERTa): a tiny random
checkpoint in Hugging Face layout (config.json, model.safetensors, tokenizer files)
and golden.safetensors with a fixed batch, its outputs and the gradients of the
loss with respect to every parameter. Everything is seeded; rerunning rewrites the
same numbers up to torch's own nondeterminism (none on CPU for these ops). The DeBERTa
fixtures without tokenizer.json (deberta-v2: spm.model; deberta: vocab.json with
merges.txt) also get tokenizer_golden.json: transformers' ids, type ids and offsets on
texts where tokenizers part ways.
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing, TemplateProcessing
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DebertaConfig,
    DebertaForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
MAX_LEN = 24

# Words the tests' tiny data uses; everything else falls back to letters or [UNK].
WORDS = """the a an is was are were be been of and or not no yes to in on at for with by
from this that it he she they we you i my your his her their our cat dog bird man woman
child people house car city country world day night time year good bad great small big
old new happy sad red blue green sat ran walked saw said likes liked loves eats ate
movie film book story music song game very really quite too also but if then than
because so there here what who where when why how one two three four five six seven
paris london france england capital river mountain water food tree sun moon star
entailment contradiction neutral true false positive negative""".split()

SENTENCES = [
    "The cat sat on the mat.",
    "A man walked his dog in the park.",
    "Paris is the capital of France.",
    "I really liked this movie!",
    "She said no.",
    "The old man and the sea is a good book about a man, a boat and a very big fish.",
]
PAIRS = [
    ("The cat sat on the mat.", "A cat is sitting."),
    ("Paris is the capital of France.", "London is in England."),
    ("Two dogs ran in the green park near the river because they were very happy that day.",
     "Dogs ran."),
    ("Is it true?", "It is not true, because the sun and the moon are not stars and the sea is blue."),
]


def bucket_tables():
    """transformers' log-bucketed relative positions for every distance up to 1023, at
    this fixture's setting and at deberta-v3's (256 buckets, max_relative_positions 512):
    the float arithmetic of the bucket formula is checked where it rounds for real."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position
    rel = torch.arange(-1023, 1024)
    return {f"buckets.{b}.{m}": make_log_bucket_position(rel, b, m).to(torch.int64)
            for b, m in [(8, 16), (256, 512)]}


def write_tokenizer_config(out, cfg):
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({**cfg, "model_max_length": 512}, f, indent=1)


def bert_tokenizer(out):
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list(".,!?;:'\"-()")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + punct + letters
    vocab += ["##" + c for c in letters] + WORDS + ["##s", "##ed", "##ing", "##ly"]
    seen, uniq = set(), []
    for v in vocab:
        if v not in seen:
            seen.add(v)
            uniq.append(v)
    path = os.path.join(out, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(uniq) + "\n")
    wp = BertWordPieceTokenizer(path, lowercase=True)
    wp.save(os.path.join(out, "tokenizer.json"))
    write_tokenizer_config(out, {"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    tok = AutoTokenizer.from_pretrained(out)
    return tok


def roberta_tokenizer(out):
    corpus = SENTENCES + [a for a, _ in PAIRS] + [b for _, b in PAIRS] + [" ".join(WORDS)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus * 4, vocab_size=420, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(out)
    bpe = ByteLevelBPETokenizer(os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt"))
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    bpe.save(os.path.join(out, "tokenizer.json"))
    write_tokenizer_config(out, {"tokenizer_class": "RobertaTokenizer", "bos_token": "<s>",
                                 "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                                 "unk_token": "<unk>", "pad_token": "<pad>",
                                 "mask_token": "<mask>"})
    tok = AutoTokenizer.from_pretrained(out)
    return tok


def deberta_config(kind, vocab_size):
    """DeBERTa's tiny checkpoints, each with its family's tokenizer files as the hub ships
    them (deberta-v2-abs: tiny-bert's WordPiece tokenizer.json).

    deberta-v2: as microsoft/deberta-v3-*: log-bucketed relative positions (8 buckets of
    16 positions, so the 24-token batch reaches the log buckets and the clamp), shared
    attention keys, both disentangled terms, a LayerNorm on the relative embeddings, no
    absolute positions and no token types; embeddings narrower than the encoder, so that
    `embed_proj` runs.
    deberta-v2-abs: the other branches of the same code: separate position projections
    (pos_key_proj, pos_query_proj), unbucketed relative positions, absolute position and
    token-type embeddings, `pos_att_type` as the "p2c|c2p" string of older configs, no
    LayerNorm on the relative embeddings, a tanh pooler.
    deberta: v1 as microsoft/deberta-base: the fused in_proj with q_bias and v_bias,
    pos_proj and pos_q_proj; max_relative_positions 8, less than the batch's length, so
    the attention span is cut and the relative positions clamp."""
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                  hidden_act="gelu", num_labels=3, pad_token_id=0, layer_norm_eps=1e-7)
    if kind == "deberta-v2":
        return DebertaV2Config(**common, embedding_size=16, type_vocab_size=0,
                               relative_attention=True, position_buckets=8,
                               max_relative_positions=16, share_att_key=True,
                               pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                               position_biased_input=False), DebertaV2ForSequenceClassification
    if kind == "deberta-v2-abs":
        return DebertaV2Config(**common, type_vocab_size=2, relative_attention=True,
                               max_relative_positions=-1, share_att_key=False,
                               pos_att_type="p2c|c2p", norm_rel_ebd="none",
                               position_biased_input=True, pooler_hidden_act="tanh"), \
            DebertaV2ForSequenceClassification
    assert kind == "deberta"
    return DebertaConfig(**common, type_vocab_size=0, relative_attention=True,
                         max_relative_positions=8, pos_att_type="c2p|p2c",
                         position_biased_input=False), DebertaForSequenceClassification


def corpus():
    return SENTENCES + [a for a, _ in PAIRS] + [b for _, b in PAIRS] + [" ".join(WORDS)]


def deberta_v3_tokenizer(out):
    """A SentencePiece Unigram model trained on the tests' texts and laid out as
    microsoft/deberta-v3-* ship theirs: spm.model ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3) and
    tokenizer_config.json, no tokenizer.json; transformers adds [MASK] after the pieces.
    One training thread, so that rerunning writes the same pieces and scores."""
    import sentencepiece as spm
    prefix = os.path.join(out, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() * 4), model_prefix=prefix, model_type="unigram",
        vocab_size=200, hard_vocab_limit=False, character_coverage=1.0, num_threads=1,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", minloglevel=2)
    os.remove(prefix + ".vocab")
    write_tokenizer_config(out, {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False,
                                 "vocab_type": "spm"})
    return AutoTokenizer.from_pretrained(out)


def deberta_pairs(tok):
    """transformers 5's DebertaTokenizer joins a pair as RoBERTa does ([CLS] A [SEP] [SEP] B
    [SEP], one token type); DeBERTa's own code and transformers 4 join it as
    [CLS] A [SEP] B [SEP] with types 0 and 1, as deberta-v2's tokenizer still does."""
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[(t, tok.convert_tokens_to_ids(t)) for t in ("[CLS]", "[SEP]")])
    return tok


def deberta_v1_tokenizer(out):
    """GPT-2's byte-level BPE as microsoft/deberta-base ships it: vocab.json with [PAD],
    [CLS], [SEP] and [UNK] first, merges.txt, no tokenizer.json; [MASK] is added after."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus() * 4, vocab_size=420, min_frequency=1,
                            special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]"])
    bpe.save_model(out)
    write_tokenizer_config(out, {"tokenizer_class": "DebertaTokenizer", "do_lower_case": False,
                                 "vocab_type": "gpt2"})
    return deberta_pairs(AutoTokenizer.from_pretrained(out))


# Texts where tokenizers part ways: whitespace runs, tabs and newlines, leading and trailing
# spaces, composed and decomposed accents, compatibility characters (NFC keeps them, NFKC
# would not), case, special tokens written in the text.
TRICKY = [
    ("  Leading and trailing spaces  ", None),
    ("Tabs\tand\nnew lines,   runs   of spaces.", None),
    ("Caf\u00e9 na\u00efve", "cafe\u0301 and e\u0301"),
    ("The \ufb01sh \u2460 \u216b", "UPPER lower MiXeD"),
    ("Where is the cat?", "The cat sat on the mat in the house."),
    ("[CLS] and [SEP] in the text [MASK] too", None),
]


def tokenizer_golden(tok, out):
    """tokenizer_golden.json: transformers' ids, type ids and character offsets for TRICKY,
    for the tokenizer files that have no tokenizer.json."""
    rows = []
    for a, b in TRICKY:
        enc = tok(a, b, return_offsets_mapping=True)
        rows.append({"first": a, "second": b, "ids": enc["input_ids"],
                     "type_ids": enc["token_type_ids"],
                     "offsets": [list(o) for o in enc["offset_mapping"]],
                     "sequence_ids": enc.sequence_ids()})
    with open(os.path.join(out, "tokenizer_golden.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")


def perturb(model, seed):
    """Move every weight away from transformers' init (LayerNorm 1/0, zero biases) so a
    swapped or ignored parameter changes the numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def save_legacy_bin(model, out):
    """The same BERT as an old-style checkpoint: pytorch_model.bin with TF-era LayerNorm
    names (gamma/beta), to test the pickle reader and the renaming."""
    legacy = out + "-bin"
    shutil.rmtree(legacy, ignore_errors=True)
    os.makedirs(legacy)
    shutil.copy(os.path.join(out, "config.json"), legacy)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(legacy, "pytorch_model.bin"))


def build(kind):
    out = os.path.join(ROOT, f"tiny-{kind}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    torch.manual_seed(0)
    if kind == "bert":
        tok = bert_tokenizer(out)
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64, type_vocab_size=2,
                         hidden_act="gelu", num_labels=3, pad_token_id=0,
                         layer_norm_eps=1e-12)
        cls = BertForSequenceClassification
    elif kind == "electra":
        # A discriminator with embeddings narrower than the encoder, so the projection
        # between them (embeddings_project) is exercised, as in ELECTRA-small.
        tok = bert_tokenizer(out)
        cfg = ElectraConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
                            num_labels=3, pad_token_id=0, layer_norm_eps=1e-12)
        cls = ElectraForSequenceClassification
    elif kind.startswith("deberta"):
        make = {"deberta-v2": deberta_v3_tokenizer, "deberta": deberta_v1_tokenizer}
        tok = make.get(kind, bert_tokenizer)(out)
        if kind in make:
            tokenizer_golden(tok, out)
        cfg, cls = deberta_config(kind, len(tok))
    else:
        tok = roberta_tokenizer(out)
        cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=MAX_LEN * 2 + 2, type_vocab_size=1,
                            hidden_act="gelu", num_labels=3, pad_token_id=1,
                            bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
        cls = RobertaForSequenceClassification
    cfg._attn_implementation = "eager"
    model = cls(cfg)
    seeds = {"bert": 1, "roberta": 2, "electra": 4, "deberta-v2": 5, "deberta-v2-abs": 6,
             "deberta": 7}
    perturb(model, seed=seeds[kind])
    model.eval()  # no dropout: the goldens are deterministic
    model.save_pretrained(out, safe_serialization=True)
    if kind == "bert":
        save_legacy_bin(model, out)

    firsts = SENTENCES + [a for a, _ in PAIRS]
    seconds = [None] * len(SENTENCES) + [b for _, b in PAIRS]
    # Singles and pairs are tokenized as separate calls and padded together, as a batch
    # of mixed examples would be.
    enc_single = tok(SENTENCES, truncation=True, max_length=MAX_LEN)
    enc_pair = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], truncation="longest_first",
                   max_length=MAX_LEN)
    rows = []
    for enc in (enc_single, enc_pair):
        for i in range(len(enc["input_ids"])):
            rows.append({k: enc[k][i] for k in enc.keys()})
    width = max(len(r["input_ids"]) for r in rows)
    pad = tok.pad_token_id

    def padded(key, fill):
        return torch.tensor([r.get(key, [0] * len(r["input_ids"])) + [fill] * (width - len(r["input_ids"]))
                             for r in rows], dtype=torch.long)

    input_ids = padded("input_ids", pad)
    attention_mask = padded("attention_mask", 0)
    token_type_ids = padded("token_type_ids", 0)
    n = input_ids.shape[0]
    labels = torch.tensor([i % 3 for i in range(n)], dtype=torch.long)

    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if kind != "roberta":
        kwargs["token_type_ids"] = token_type_ids
    out_cls = model(**kwargs, labels=labels, output_hidden_states=True)
    out_cls.loss.backward()
    enc_out = model.bert(**kwargs) if kind == "bert" else None

    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "labels": labels,
        "last_hidden_state": out_cls.hidden_states[-1].detach(),
        "logits": out_cls.logits.detach(),
        "loss": out_cls.loss.detach().reshape(1),
    }
    if enc_out is not None:
        tensors["pooler_output"] = enc_out.pooler_output.detach()
    if kind == "deberta-v2":
        tensors.update(bucket_tables())
    for name, p in model.named_parameters():
        if p.grad is not None:
            tensors["grad." + name] = p.grad.detach().clone()

    # Diagonal empirical Fisher of the first three examples, by definition: the mean over
    # examples of the squared gradient of each example's own log-likelihood (eval mode).
    fisher = {}
    for i in range(3):
        model.zero_grad()
        one = {k: v[i:i + 1, : int(attention_mask[i].sum())] for k, v in kwargs.items()}
        model(**one, labels=labels[i:i + 1]).loss.backward()
        for name, p in model.named_parameters():
            fisher[name] = fisher.get(name, 0) + p.grad.detach() ** 2 / 3
    for name, f in fisher.items():
        tensors["fisher." + name] = f
    model.zero_grad()

    # Regression (STS-B): same encoder, a one-output head, mean squared error.
    model.zero_grad()
    torch.manual_seed(3)
    reg_dict = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}
    reg_cfg = cfg.__class__(**{**reg_dict, "num_labels": 1, "problem_type": "regression"})
    reg_cfg._attn_implementation = "eager"
    reg = cls(reg_cfg)
    reg.load_state_dict({k: v for k, v in model.state_dict().items() if "classifier" not in k}, strict=False)
    reg.eval()
    scores = torch.linspace(0.0, 5.0, n)
    out_reg = reg(**kwargs, labels=scores)
    out_reg.loss.backward()
    tensors["reg_labels"] = scores
    tensors["reg_logits"] = out_reg.logits.detach()
    tensors["reg_loss"] = out_reg.loss.detach().reshape(1)
    for name, p in reg.named_parameters():
        if "classifier" in name:
            tensors["reg_head." + name] = p.detach().clone()
            tensors["reg_grad." + name] = p.grad.detach().clone()
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out, "golden.safetensors"))
    with open(os.path.join(out, "golden_texts.json"), "w") as f:
        json.dump({"max_len": MAX_LEN, "first": firsts, "second": seconds}, f, indent=1)
    assert (input_ids == tok.unk_token_id).float().mean() < 0.2, "tokenizer lost its vocabulary"
    print(f"wrote {out}: batch {tuple(input_ids.shape)}, loss {out_cls.loss.item():.6f}")


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["bert", "roberta"]:
        build(kind)
