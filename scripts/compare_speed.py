"""peft against PyTorch + transformers (+ peft for LoRA), side by side in one run.

    python scripts/compare_speed.py MODEL_DIR [--peft target/release/peft] [--rounds 3]
        [--steps 5] [--batch 32] [--seq 128] [--threads 2] [--method full,bitfit,layernorm,lora]
        [--device cpu|cuda]

Inference is always measured; `--method inference` measures it alone.

For each round and method it runs `peft bench` and scripts/bench_torch.py one after the
other, each in its own process (so peak RSS is that method's), alternating which goes
first; it reports the median over rounds of each side's median step time, their ratio
(peft / PyTorch: below 1 means peft is faster), tokens/s and peak RSS, as a Markdown table.
Needs a Python with torch, transformers and peft (see scripts/minilm_reference.py).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def peft_run(a, method):
    which = ["--inference-only"] if method == "inference" else ["--method", method]
    out = subprocess.run([a.peft, "bench", "--model", a.model, "--batch", str(a.batch), "--seq", str(a.seq),
                          "--steps", str(a.steps), "--device", a.device] + which,
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)}).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == method:
            return {"ms": float(f[1]), "rss": float(f[3])}
    raise SystemExit(f"peft bench printed no line for {method}:\n{out}")


def torch_run(a, method):
    out = subprocess.run([sys.executable, os.path.join(HERE, "bench_torch.py"), a.model, "--batch", str(a.batch),
                          "--seq", str(a.seq), "--steps", str(a.steps), "--threads", str(a.threads),
                          "--device", a.device, "--one", method],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"ms": r["ms"], "rss": r["peak_rss_mb"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--peft", default=os.path.join(HERE, "..", "target", "release", "peft"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="full,bitfit,layernorm,lora")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (needs a --features cuda peft)")
    a = ap.parse_args()
    methods = [m for m in a.method.split(",") if m != "inference"] + ["inference"]
    res = {m: {"peft": [], "torch": []} for m in methods}
    for r in range(a.rounds):
        for m in methods:
            order = [("peft", peft_run), ("torch", torch_run)]
            if r % 2:
                order.reverse()
            for side, fn in order:
                res[m][side].append(fn(a, m))
            print(f"round {r + 1} {m}: peft {res[m]['peft'][-1]['ms']:.0f} ms, "
                  f"torch {res[m]['torch'][-1]['ms']:.0f} ms", file=sys.stderr)
    tokens = a.batch * a.seq
    print(f"{a.batch} × {a.seq} tokens, {a.device}, {a.threads} threads, median of {a.rounds} rounds × "
          f"median of {a.steps} steps\n")
    print("| step | peft ms | PyTorch ms | ratio | peft tok/s | PyTorch tok/s | peft peak RSS MB | PyTorch peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        p = statistics.median(x["ms"] for x in res[m]["peft"])
        t = statistics.median(x["ms"] for x in res[m]["torch"])
        pr = statistics.median(x["rss"] for x in res[m]["peft"])
        tr = statistics.median(x["rss"] for x in res[m]["torch"])
        print(f"| {m} | {p:.0f} | {t:.0f} | {p / t:.2f} | {tokens / p * 1e3:.0f} | {tokens / t * 1e3:.0f} "
              f"| {pr:.0f} | {tr:.0f} |")


if __name__ == "__main__":
    main()
