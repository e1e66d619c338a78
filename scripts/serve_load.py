"""Load `peft serve` over real HTTP and print requests/s, latency and errors.

    python3 scripts/serve_load.py --model "$(scripts/get_minilm.sh)" --data-dir ../shared/data/glue \\
        [--peft target/release/peft] [--clients 1,8,64] [--seconds 20] [--adapters 16] [--out runs/serve-load]

Trains `--adapters` small runs on RTE over `--model` (LoRA, LayerNorm and IA3 in turn, one
step each: serving cost does not depend on how long they trained), starts one server with
all of them, and for each client count runs two loads of `--seconds` each: every request to
one adapter, then requests spread over all of them in turn. Clients are threads, each with
its own keep-alive connection, sending RTE dev pairs (real lengths, cut to the runs' 128
tokens as `peft predict` cuts them) one per request.
Every answer is checked: status 200 and a label of the task; anything else counts as an
error. Prints a Markdown table; ratios are only meaningful within one run of this script.

--python PY also starts scripts/serve_python_baseline.py (FastAPI + transformers + PEFT,
`set_adapter` per request) with that interpreter on the same runs (give `--methods lora`:
PEFT holds one kind of adapter per model) and loads it the same way after `peft serve`,
requests spread over all adapters; the last rows give peft's rate over Python's.

--soak N instead sends N requests from 8 clients spread over the adapters, each answer
compared with `peft predict`'s for the same run and pair (label, probability within 1e-5),
and samples the server's resident memory (VmRSS) as it goes: the figures show whether
memory stays flat after warm-up and whether anything was lost or mixed up.
"""

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time



def pairs(data_dir):
    with open(os.path.join(data_dir, "RTE", "dev.tsv")) as f:
        rows = [l.rstrip("\n").split("\t") for l in f][1:]
    return [(r[1], r[2]) for r in rows if len(r) >= 4]


def train_adapters(args):
    small = os.path.join(args.out, "glue", "RTE")
    os.makedirs(small, exist_ok=True)
    for split, n in [("train", 33), ("dev", 17)]:
        with open(os.path.join(args.data_dir, "RTE", f"{split}.tsv")) as f, \
                open(os.path.join(small, f"{split}.tsv"), "w") as g:
            g.writelines(l for _, l in zip(range(n), f))
    runs = []
    for i in range(args.adapters):
        method = args.methods[i % len(args.methods)]
        out = os.path.join(args.out, "runs", f"{method}-{i}")
        if not os.path.exists(os.path.join(out, "trainable.safetensors")):
            subprocess.run([args.peft, "train", "--model", args.model, "--data-dir",
                            os.path.join(args.out, "glue"), "--task", "rte", "--method", method,
                            "--max-steps", "1", "--batch-size", "8", "--seed", str(i),
                            "--max-seq-len", "128", "--output-dir", out, "--overwrite"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append((f"a{i}", out))
    return runs


def start_server(args, runs):
    cmd = [args.peft, "serve", "--model", args.model, "--port", "0"]
    for name, out in runs:
        cmd += ["--adapter", f"{name}={out}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("listening on http://"):
            host, port = line.strip()[len("listening on http://"):].rsplit(":", 1)
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, host, int(port)
    sys.exit("the server did not start")


def run_clients(client, n):
    """Run `client(k)` on n threads at once; the seconds until the last ends."""
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def load(host, port, clients, seconds, adapters, texts):
    """Closed loop: each client sends its next request when the last is answered."""
    stop = time.monotonic() + seconds
    latencies, errors, lock = [], [0], threading.Lock()
    counter = [0]

    def client(k):
        conn = http.client.HTTPConnection(host, port, timeout=60)
        rng = random.Random(k)
        mine, bad = [], 0
        while time.monotonic() < stop:
            with lock:
                n = counter[0]
                counter[0] += 1
            a, b = texts[rng.randrange(len(texts))]
            # As `peft predict` reads a pair: cut to the run's window (RTE has longer ones).
            body = json.dumps({"inputs": [a, b], "adapter": adapters[n % len(adapters)], "truncate": True})
            t = time.monotonic()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = resp.read()
                ok = resp.status == 200 and json.loads(answer)[0]["label"] in ("entailment", "not_entailment")
            except Exception:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
            if ok:
                mine.append(time.monotonic() - t)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    took = run_clients(client, clients)
    latencies.sort()
    q = lambda p: 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")
    return len(latencies) / took, q(0.5), q(0.99), errors[0]


def expected(args, runs, texts):
    """`peft predict`'s (label, probability) per adapter and pair, as the server must answer."""
    path = os.path.join(args.out, "pairs.txt")
    with open(path, "w") as f:
        f.writelines(f"{a}\t{b}\n" for a, b in texts)
    want = {}
    for name, out in runs:
        shown = subprocess.run([args.peft, "predict", "--checkpoint", out, "--input", path],
                               check=True, capture_output=True, text=True).stdout
        want[name] = [(l.split("\t")[0], float(l.split("\t")[1])) for l in shown.splitlines()]
    return want


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def soak(args, proc, host, port, names, texts, want):
    total, clients, lock = args.soak, 8, threading.Lock()
    state = {"sent": 0, "wrong": 0, "failed": 0}
    samples = []

    def client(k):
        conn = http.client.HTTPConnection(host, port, timeout=60)
        rng = random.Random(1000 + k)
        while True:
            with lock:
                if state["sent"] >= total:
                    return
                n = state["sent"]
                state["sent"] += 1
                if n % max(1, total // 10) == 0:
                    samples.append((n, rss_mib(proc.pid)))
            i, name = rng.randrange(len(texts)), names[n % len(names)]
            body = json.dumps({"inputs": list(texts[i]), "adapter": name, "truncate": True})
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = json.loads(resp.read())
                top = answer[0]
                label, p = want[name][i]
                good = resp.status == 200 and top["label"] == label and abs(top["score"] - p) < 1e-5
                with lock:
                    state["wrong"] += not good
            except Exception:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                with lock:
                    state["failed"] += 1

    took = run_clients(client, clients)
    samples.append((total, rss_mib(proc.pid)))
    print(f"soak: {total} requests from {clients} clients over {len(names)} adapters in {took:.0f} s "
          f"({total / took:.1f}/s); {state['wrong']} answers differ from peft predict, "
          f"{state['failed']} failed")
    print("resident memory (MiB) by requests sent: " + ", ".join(f"{n}: {m:.0f}" for n, m in samples))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--peft", default="target/release/peft")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--out", default="runs/serve-load")
    ap.add_argument("--soak", type=int, default=0, help="requests to check against peft predict")
    ap.add_argument("--methods", default="lora,layernorm,ia3", help="the adapters' methods, in turn")
    ap.add_argument("--python", help="an interpreter with fastapi, uvicorn, transformers and peft")
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    runs = train_adapters(args)
    texts = pairs(args.data_dir)
    want = expected(args, runs, texts) if args.soak else None
    proc, host, port = start_server(args, runs)
    names = [n for n, _ in runs]
    if args.soak:
        try:
            soak(args, proc, host, port, names, texts, want)
        finally:
            proc.terminate()
            proc.wait()
        return
    rows = ["| clients | adapters | requests/s | p50 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|"]
    try:
        load(host, port, 4, 3, names, texts)  # warm-up
        for clients in [int(c) for c in args.clients.split(",")]:
            results = {}
            for spread in (names[:1], names):
                rps, p50, p99, errors = load(host, port, clients, args.seconds, spread, texts)
                results[len(spread)] = rps
                rows.append(f"| {clients} | {len(spread)} | {rps:.1f} | {p50:.0f} | {p99:.0f} | {errors} |")
                print(rows[-1], file=sys.stderr, flush=True)
            rows.append(f"| {clients} | {len(names)} vs 1 | {results[len(names)] / results[1]:.2f}× | | | |")
    finally:
        proc.terminate()
        proc.wait()
    if args.python:
        rows += python_rows(args, runs, texts, names, rows)
    print("\n".join(rows))


def python_rows(args, runs, texts, names, rows):
    """The Python server on the same runs, loaded as peft's was, requests spread."""
    port = 8090 + os.getpid() % 1000
    cmd = [args.python, os.path.join(os.path.dirname(__file__), "serve_python_baseline.py"),
           "--model", args.model, "--port", str(port)] + [f"{n}={o}" for n, o in runs]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    out = []
    try:
        for _ in range(240):
            if proc.poll() is not None:
                sys.exit(f"the Python server ended at start: {' '.join(cmd)}")
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")
                break
            except OSError:
                time.sleep(0.5)
        load("127.0.0.1", port, 4, 3, names, texts)  # warm-up
        for clients in [int(c) for c in args.clients.split(",")]:
            rps, p50, p99, errors = load("127.0.0.1", port, clients, args.seconds, names, texts)
            out.append(f"| {clients} | {len(names)}, Python | {rps:.1f} | {p50:.0f} | {p99:.0f} | {errors} |")
            print(out[-1], file=sys.stderr, flush=True)
            mine = next(r for r in rows if r.startswith(f"| {clients} | {len(names)} |"))
            ratio = float(mine.split("|")[3]) / rps if rps else float("nan")
            out.append(f"| {clients} | peft vs Python | {ratio:.2f}× | | | |")
    finally:
        proc.terminate()
        proc.wait()
    return out


if __name__ == "__main__":
    main()
