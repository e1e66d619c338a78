"""Build the golden fixtures the Rust parity tests compare against.

Run from the repository root with a Python that has torch, transformers and
safetensors (see scripts/reference_venv.sh):

    python tests/golden/make_golden.py

It writes tests/fixtures/tiny-bert/, tiny-roberta/ and tiny-electra/ (`python
tests/golden/make_golden.py electra` for one of them): a tiny random
checkpoint in Hugging Face layout (config.json, model.safetensors, tokenizer files)
and golden.safetensors with a fixed batch, its outputs and the gradients of the
loss with respect to every parameter. Everything is seeded; rerunning rewrites the
same numbers up to torch's own nondeterminism (none on CPU for these ops).
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
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
    perturb(model, seed={"bert": 1, "roberta": 2, "electra": 4}[kind])
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
    if kind in ("bert", "electra"):
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
