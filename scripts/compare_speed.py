"""peft against PyTorch + transformers (+ peft for LoRA), side by side in one run.

    python scripts/compare_speed.py MODEL_DIR [--peft target/release/peft] [--rounds 3]
        [--steps 5] [--batch 32] [--seq 128] [--threads 2] [--method full,bitfit,layernorm,lora]
        [--device cpu|cuda] [--precision f32|bf16]

Inference is always measured; `--method inference` measures it alone. `--precision bf16`
runs `peft bench --precision bf16` against PyTorch under torch.autocast(bfloat16).

For each round and method it runs `peft bench` and scripts/bench_torch.py one after the
other, each in its own process (so peak RSS is that method's), alternating which goes
first; it reports the median over rounds of each side's median step time, their ratio
(peft / PyTorch: below 1 means peft is faster), tokens/s and peak RSS, as a Markdown table;
on CUDA also each run's peak GPU memory over what was in use before it (nvidia-smi).
Needs a Python with torch, transformers and peft (see scripts/minilm_reference.py).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))


def gpu_used_mb():
    """Memory in use on GPU 0 by nvidia-smi's count, or None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              "--id=0"], check=True, capture_output=True, text=True).stdout
        return float(out.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def gpu_peak(fn):
    """fn(), with the peak GPU memory it added over what was in use before (nvidia-smi,
    every 20 ms): both sides counted the same way, CUDA context included, since peft has
    no allocator statistics to report."""
    base = gpu_used_mb()
    if base is None:
        return fn(), None
    peak, done = [base], threading.Event()

    def poll():
        while not done.is_set():
            used = gpu_used_mb()
            if used is not None:
                peak[0] = max(peak[0], used)
            done.wait(0.02)

    t = threading.Thread(target=poll)
    t.start()
    try:
        r = fn()
    finally:
        done.set()
        t.join()
    return r, peak[0] - base


def peft_run(a, method):
    which = ["--inference-only"] if method == "inference" else ["--method", method]
    out = subprocess.run([a.peft, "bench", "--model", a.model, "--batch", str(a.batch), "--seq", str(a.seq),
                          "--steps", str(a.steps), "--device", a.device, "--precision", a.precision] + which,
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
                          "--device", a.device, "--precision", a.precision, "--one", method],
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
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    methods = [m for m in a.method.split(",") if m != "inference"] + ["inference"]
    res = {m: {"peft": [], "torch": []} for m in methods}
    for r in range(a.rounds):
        for m in methods:
            order = [("peft", peft_run), ("torch", torch_run)]
            if r % 2:
                order.reverse()
            for side, fn in order:
                if a.device == "cuda":
                    run, gpu = gpu_peak(lambda: fn(a, m))
                    run["gpu"] = gpu
                else:
                    run = fn(a, m)
                res[m][side].append(run)
            print(f"round {r + 1} {m}: peft {res[m]['peft'][-1]['ms']:.0f} ms, "
                  f"torch {res[m]['torch'][-1]['ms']:.0f} ms", file=sys.stderr)
    tokens = a.batch * a.seq
    print(f"{a.batch} × {a.seq} tokens, {a.device}, {a.precision}, {a.threads} threads, median of {a.rounds} rounds × "
          f"median of {a.steps} steps\n")
    gpu = a.device == "cuda"
    extra = " peft peak GPU MB | PyTorch peak GPU MB | GPU ratio |" if gpu else ""
    print("| step | peft ms | PyTorch ms | ratio | peft tok/s | PyTorch tok/s | peft peak RSS MB | PyTorch peak RSS MB |"
          + extra)
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if gpu else ""))
    for m in methods:
        p = statistics.median(x["ms"] for x in res[m]["peft"])
        t = statistics.median(x["ms"] for x in res[m]["torch"])
        pr = statistics.median(x["rss"] for x in res[m]["peft"])
        tr = statistics.median(x["rss"] for x in res[m]["torch"])
        row = (f"| {m} | {p:.0f} | {t:.0f} | {p / t:.2f} | {tokens / p * 1e3:.0f} | {tokens / t * 1e3:.0f} "
               f"| {pr:.0f} | {tr:.0f} |")
        if gpu:
            pg = [x["gpu"] for x in res[m]["peft"] if x["gpu"] is not None]
            tg = [x["gpu"] for x in res[m]["torch"] if x["gpu"] is not None]
            if pg and tg:
                pg, tg = statistics.median(pg), statistics.median(tg)
                row += f" {pg:.0f} | {tg:.0f} | {pg / tg:.2f} |" if tg else f" {pg:.0f} | {tg:.0f} | |"
            else:
                row += " | | |"
        print(row)


if __name__ == "__main__":
    main()
