"""Prefix tuning as PEFT builds it, for tests/fixtures/prefix/.

    /work/venv-adapters/bin/python scripts/prefix_reference.py   # torch, transformers 4.x, peft

transformers 5 no longer takes a cache in BERT's encoder, so PEFT's prefix tuning refuses
BERT there ("Model does not support past key values"); this script needs transformers 4.x
(made with 4.57.6, peft 0.21.2, torch 2.15).

On tests/fixtures/tiny-bert and tests/fixtures/tiny-roberta (sequence classifiers, 2
labels, head drawn under torch.manual_seed(0)), PEFT's PrefixTuningConfig with 3 virtual
tokens, without and with a projection (`prefix_projection`, encoder_hidden_size 16),
writes, in eval mode on each model's golden batch (tests/fixtures/<model>/golden.safetensors,
labels i mod 2), tests/fixtures/prefix/<model>[-projection].safetensors: the prefix's
tensors under this crate's names (`prompt_encoder.embedding.weight`,
`prompt_encoder.transform.{0,2}.{weight,bias}`), the head, `logits`, `loss` and
`grad.<name>` for every trainable tensor.

BERT runs through PeftModelForSequenceClassification itself. For RoBERTa, PEFT 0.21.2's
prefix path calls the backbone and hands `outputs[1]` (the pooler's place, which RoBERTa's
classifier lacks, so PEFT passes the cache) to the classification head, which fails; there
the script makes what PEFT's path makes up to that point (`get_prompt`, the mask with the
prefix's ones, the backbone with `past_key_values`) and applies RoBERTa's head to the
backbone's sequence output, as RobertaForSequenceClassification does.

Also the tiny-bert projection adapter saved with save_pretrained to
tests/fixtures/prefix/adapter/ (PEFT saves the projected table as `prompt_embeddings`)
with its probabilities on the golden batch in expected.json.
"""

import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PrefixTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "prefix"


def ours(name: str) -> str:
    name = name.removeprefix("base_model.model.").removeprefix("base_model.")
    name = name.removeprefix("bert.").removeprefix("roberta.")
    name = name.replace(".modules_to_save.default.", ".")
    return name.replace("prompt_encoder.default.", "prompt_encoder.")


def model(fixture: str, projection: bool):
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        ROOT / "tests" / "fixtures" / fixture, num_labels=2, ignore_mismatched_sizes=True,
        attn_implementation="eager",
    )
    cfg = PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3,
                             prefix_projection=projection, encoder_hidden_size=16)
    return get_peft_model(base, cfg)


def forward(m, fixture: str, batch: dict, labels: torch.Tensor):
    if fixture == "tiny-bert":
        return m(**batch, labels=labels)
    # RoBERTa: PEFT's prefix path up to the head, then RoBERTa's own head (see above).
    b = batch["input_ids"].shape[0]
    n = m.active_peft_config.num_virtual_tokens
    mask = torch.cat([torch.ones(b, n), batch["attention_mask"]], dim=1)
    backbone = m.base_model.roberta
    out = backbone(input_ids=batch["input_ids"], attention_mask=mask,
                   past_key_values=m.get_prompt(b))
    logits = m.base_model.classifier(out[0])
    loss = torch.nn.functional.cross_entropy(logits, labels)
    return transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for fixture in ("tiny-bert", "tiny-roberta"):
        g = load_file(ROOT / "tests" / "fixtures" / fixture / "golden.safetensors")
        batch = {k: g[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in g}
        labels = torch.arange(batch["input_ids"].shape[0]) % 2
        for projection in (False, True):
            m = model(fixture, projection).eval()
            out = forward(m, fixture, batch, labels)
            out.loss.backward()
            t = {"logits": out.logits.detach(), "loss": out.loss.detach().reshape(1), "labels": labels}
            for n, p in m.named_parameters():
                if p.requires_grad:
                    t[ours(n)] = p.detach().clone()
                    t["grad." + ours(n)] = p.grad.detach().clone()
            name = fixture + ("-projection" if projection else "")
            if fixture == "tiny-bert" and projection:
                m.save_pretrained(OUT / "adapter")
                (OUT / "adapter" / "README.md").unlink(missing_ok=True)
                with torch.no_grad():
                    probs = m(**batch).logits.softmax(-1)
                (OUT / "adapter" / "expected.json").write_text(json.dumps({
                    "probabilities": probs.tolist(), "peft": peft.__version__,
                    "transformers": transformers.__version__, "torch": torch.__version__}, indent=1) + "\n")
            save_file({k: v.contiguous() for k, v in t.items()}, OUT / f"{name}.safetensors")
            print(name, "loss", float(out.loss), sorted(k for k in t if not k.startswith("grad.")))


if __name__ == "__main__":
    main()
