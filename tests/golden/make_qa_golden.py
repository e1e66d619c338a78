"""Golden question-answering outputs for the Rust parity tests (tests/it/parity.rs).

Run from the repository root with the reference venv, after make_golden.py:

    python tests/golden/make_qa_golden.py [KIND...]

For each tiny checkpoint in tests/fixtures/tiny-{bert,roberta,electra,deberta-v2,
deberta-v2-abs,deberta}/ it builds
transformers' *ForQuestionAnswering on the same encoder weights with a seeded
`qa_outputs` head, runs it on question-context pairs cut to one length (no padding:
transformers keeps padding in the span softmax, which peft leaves out, and the two agree
on unpadded windows), and writes qa_golden.safetensors: the batch, start and end
positions, the head, start and end logits, the loss and every parameter's gradient.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    BertForQuestionAnswering,
    DebertaForQuestionAnswering,
    DebertaV2ForQuestionAnswering,
    ElectraForQuestionAnswering,
    RobertaForQuestionAnswering,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import deberta_pairs  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
LENGTH = 20
# The tiny SentencePiece vocabulary spells most words letter by letter.
LENGTHS = {"deberta-v2": 40}
QUESTIONS = ["Where is the cat?", "Who walked?", "What is the capital of France?"]
CONTEXT = ("The cat sat on the mat in the house. A man walked his dog in the park near the "
           "river. Paris is the capital of France and London is in England.")
CLASSES = {
    "bert": BertForQuestionAnswering,
    "roberta": RobertaForQuestionAnswering,
    "electra": ElectraForQuestionAnswering,
    "deberta-v2": DebertaV2ForQuestionAnswering,
    "deberta-v2-abs": DebertaV2ForQuestionAnswering,
    "deberta": DebertaForQuestionAnswering,
}


def build(kind):
    d = os.path.join(ROOT, f"tiny-{kind}")
    tok = AutoTokenizer.from_pretrained(d)
    if kind == "deberta":
        tok = deberta_pairs(tok)
    torch.manual_seed(11)
    model = CLASSES[kind].from_pretrained(d, attn_implementation="eager", num_labels=2)
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0.0, 0.3)
        model.qa_outputs.bias.normal_(0.0, 0.3)
    model.eval()
    length = LENGTHS.get(kind, LENGTH)
    enc = tok(QUESTIONS, [CONTEXT] * len(QUESTIONS), truncation="only_second",
              max_length=length, return_tensors="pt")
    assert enc["input_ids"].shape == (len(QUESTIONS), length)
    assert bool(enc["attention_mask"].all()), "the windows must not be padded"
    starts = torch.tensor([0, 12, 15])
    ends = torch.tensor([0, 14, 17])
    kwargs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    if kind != "roberta":
        kwargs["token_type_ids"] = enc["token_type_ids"]
    out = model(**kwargs, start_positions=starts, end_positions=ends)
    out.loss.backward()
    tensors = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])),
        "positions": torch.stack([starts, ends], dim=1),
        "qa_outputs.weight": model.qa_outputs.weight.detach().clone(),
        "qa_outputs.bias": model.qa_outputs.bias.detach().clone(),
        "start_logits": out.start_logits.detach(),
        "end_logits": out.end_logits.detach(),
        "loss": out.loss.detach().reshape(1),
    }
    for name, p in model.named_parameters():
        if p.grad is not None:
            tensors["grad." + name] = p.grad.detach().clone()
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(d, "qa_golden.safetensors"))
    print(f"wrote {d}/qa_golden.safetensors: loss {out.loss.item():.6f}")


if __name__ == "__main__":
    for kind in sys.argv[1:] or CLASSES:
        build(kind)
