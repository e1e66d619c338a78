"""The PyTorch + transformers side of `peft bench`: the same shapes, methods and step.

    python scripts/bench_torch.py MODEL_DIR [--batch 32] [--seq 128] [--steps 10] [--threads 2]
        [--method full,bitfit,layernorm,lora] [--device cpu|cuda] [--precision f32|bf16]

A step is forward, cross-entropy, backward, gradient clipping and AdamW, in training
mode (dropout on), on random token ids, with only the method's parameters (plus the
head) requiring gradients. Prints median ms per step, tokens/s and peak RSS, in the
same table layout as `peft bench`. Each method runs in its own process so the peak RSS
is its own. `--precision bf16` runs forward and loss under
`torch.autocast(dtype=torch.bfloat16)` (f32 weights, gradients and AdamW state), what
`peft bench --precision bf16` is compared with.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one(args, method):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    dev = torch.device(args.device)
    model.to(dev)
    model.train()
    for name, p in model.named_parameters():
        head = name.startswith("classifier")
        if method == "full":
            p.requires_grad = True
        elif method == "bitfit":
            p.requires_grad = head or name.endswith(".bias")
        elif method == "layernorm":
            p.requires_grad = head or "LayerNorm" in name
        elif method == "inference":
            p.requires_grad = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        # PEFT's defaults for BERT (query and value, r 8, alpha 16), as `peft bench` runs LoRA.
        cfg = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                         target_modules=["query", "value"])
        model = get_peft_model(model, cfg).to(dev)
        model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01) if params else None
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (args.batch, args.seq), generator=g).to(dev)
    mask = torch.ones_like(ids)
    labels = (torch.arange(args.batch) % 2).to(dev)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step():
        if method == "inference":
            model.eval()
            with torch.no_grad(), autocast():
                model(input_ids=ids, attention_mask=mask).logits.sum().item()
            return
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "ms": ms, "tokens_per_s": args.batch * args.seq / ms * 1e3, "peak_rss_mb": rss}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="full,bitfit,layernorm,lora")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args, args.one)
        return
    print(f"torch: {args.batch} × {args.seq} tokens, {args.steps} timed steps, median ms, {args.threads} threads")
    print(f"{'step':<12} {'ms':>10} {'tokens/s':>12} {'peak RSS MB':>14}")
    for method in args.method.split(",") + ["inference"]:
        out = subprocess.run([sys.executable, __file__, args.model, "--batch", str(args.batch), "--seq", str(args.seq),
                              "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device,
                              "--precision", args.precision, "--one", method],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{method:<12} {r['ms']:>10.1f} {r['tokens_per_s']:>12.0f} {r['peak_rss_mb']:>14.0f}")


if __name__ == "__main__":
    main()
