"""Fine-tune all-MiniLM-L6-v2 on GLUE tasks with several methods and seeds, and print the
README's results table (median over seeds of the final epoch's dev metrics).

    python3 scripts/glue_table.py --model "$(scripts/get_minilm.sh)" --data-dir ../shared/data/glue \\
        [--tasks rte,stsb] [--methods full,bitfit,layernorm] [--seeds 42,43,44] \\
        [--jobs 1] [--threads 2] [--out runs/table] [--collect]

A method is a name, or name@value for the methods with one knob: fisher-layernorm@0.2 and
random-layernorm@0.2 (--fraction), child-f@0.3 and child-d@0.3 (--reserve), ina@0.1
(--ina-inhibition), and ina-paper@0.1 (InA with the paper's GELU on query and key). The
methods that rank by Fisher information share one estimate per task, made first with
`peft fisher --batch-mean 16` over the whole training set (Child-Tuning's reference
estimate) into OUT/fisher-<task>.

Settings are those of the PyTorch reference figures in issue #4: batch 32, max length 128,
5 epochs, AdamW (lr 5e-5 full, 1e-3 otherwise), 6% warm-up then linear decay, weight
decay 0.01 except biases and LayerNorm, clipping at 1.0, head from N(0, 0.02). A run
that already finished in --out is not run again, an interrupted one (resume.safetensors) is
continued with `peft train --resume`; --collect only prints the table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

# Methods that move every encoder weight use full fine-tuning's rate; the rest 1e-3.
LR = {"full": 5e-5, "child-f": 5e-5, "child-d": 5e-5}
DEFAULT_LR = 1e-3
KNOB = {"fisher-layernorm": "--fraction", "random-layernorm": "--fraction", "random": "--fraction",
        "child-f": "--reserve", "child-d": "--reserve", "ina": "--ina-inhibition"}
USES_FISHER = {"fisher-layernorm", "child-d"}
# Named variants: a method with fixed extra flags. ina-paper is InA as the paper's text has it
# (GELU, query and key); plain ina is the authors' code (LeakyReLU, query, key and value);
# lora-rslora and dora-rslora scale by alpha/sqrt(r); lora-pissa and lora-olora start LoRA
# from the base weight's principal directions (PEFT's init_lora_weights); lora-plus trains B
# 16 times faster than A (LoRA+'s recommended ratio). Unions pass as they are (lora+layernorm).
VARIANTS = {"ina-paper": ("ina", ["--ina-activation", "gelu", "--ina-targets", "query,key"]),
            "lora-rslora": ("lora", ["--lora-rslora"]), "dora-rslora": ("dora", ["--lora-rslora"]),
            "lora-pissa": ("lora", ["--lora-init", "pissa"]), "lora-olora": ("lora", ["--lora-init", "olora"]),
            "lora-plus": ("lora", ["--lora-plus-ratio", "16"])}
EPOCHS = 5
# PyTorch + transformers on this machine class (issue #4), seed 42, final epoch.
REFERENCE = {
    ("rte", "full"): "57.0", ("rte", "layernorm"): "51.3", ("rte", "bitfit"): "51.3",
    ("stsb", "full"): "86.4/86.3", ("stsb", "layernorm"): "83.0/83.0",
}
METRICS = {"rte": ["accuracy"], "stsb": ["pearson", "spearman"], "mrpc": ["f1", "accuracy"],
           "cola": ["mcc"], "sst2": ["accuracy"], "qnli": ["accuracy"], "wnli": ["accuracy"]}


def run_dir(args, task, method, seed):
    return os.path.join(args.out, f"{task}-{method}-{seed}")


def finished(path):
    try:
        with open(os.path.join(path, "metrics.jsonl")) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        return lines if lines and lines[-1]["epoch"] >= EPOCHS - 1e-9 else None
    except FileNotFoundError:
        return None


def method_flags(spec):
    """`child-d@0.3` -> ("child-d", ["--reserve", "0.3"])."""
    name, _, value = spec.partition("@")
    name, extra = VARIANTS.get(name, (name, []))
    if value and name not in KNOB:
        sys.exit(f"method {spec}: {name} takes no @value")
    return name, extra + ([KNOB[name], value] if value else [])


def fisher_file(args, task):
    """One Fisher estimate per task, shared by every Fisher-ranked method and seed."""
    out = os.path.join(args.out, f"fisher-{task}")
    path = os.path.join(out, "fisher.safetensors")
    if not os.path.exists(path):
        cmd = [args.peft, "fisher", "--model", args.model, "--data-dir", args.data_dir, "--task", task,
               "--batch-mean", "16", "--max-seq-len", "128", "--output", out]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "fisher.log"), "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=thread_env(args))
    return path


def thread_env(args):
    return dict(os.environ, RAYON_NUM_THREADS=str(args.threads))


def train(args, task, spec, seed):
    out = run_dir(args, task, spec, seed)
    if finished(out):
        return
    method, flags = method_flags(spec)
    if method in USES_FISHER:
        flags += ["--fisher", fisher_file(args, task)]
    cmd = [args.peft, "train", "--model", args.model, "--data-dir", args.data_dir, "--task", task,
           "--method", method, "--seed", str(seed), "--epochs", str(EPOCHS), "--batch-size", "32",
           "--max-seq-len", "128", "--lr", str(LR.get(method, DEFAULT_LR)), "--warmup-ratio", "0.06",
           "--weight-decay", "0.01", "--max-grad-norm", "1.0", "--output-dir", out, "--overwrite"] + flags
    if os.path.exists(os.path.join(out, "resume.safetensors")):
        # An interrupted run continues where it stopped, with its own saved settings.
        cmd = [args.peft, "train", "--resume", out]
    env = thread_env(args)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train.log"), "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"done {task} {spec} {seed}", file=sys.stderr, flush=True)


def fmt(values):
    return "/".join(f"{100 * v:.1f}" for v in values)


def table(args):
    rows = ["| task | method | trainable | dev metric | median | seeds | PyTorch (seed 42) | min/run | train tok/s |",
            "|---|---|---:|---|---:|---|---:|---:|---:|"]
    for task in args.tasks:
        keys = METRICS[task]
        for method in args.methods:
            per_seed, minutes, tps, trainable = [], [], [], "?"
            for seed in args.seeds:
                lines = finished(run_dir(args, task, method, seed))
                if not lines:
                    continue
                last = lines[-1]
                per_seed.append([last["dev"]["dev"][k] for k in keys])
                minutes.append(last["elapsed_s"] / 60)
                tps.append(last["train_tokens_per_s"])
                with open(os.path.join(run_dir(args, task, method, seed), "config.json")) as f:
                    info = json.load(f)
                trainable = f"{info['trainable_params']:,} ({100 * info['trainable_params'] / info['total_params']:.2f}%)"
            if not per_seed:
                continue
            median = [statistics.median(v[i] for v in per_seed) for i in range(len(keys))]
            seeds = ", ".join(fmt(v) for v in per_seed)
            rows.append(f"| {task} | {method} | {trainable} | {'/'.join(keys)} | {fmt(median)} | {seeds} | "
                        f"{REFERENCE.get((task, method), '–')} | {statistics.median(minutes):.1f} | "
                        f"{statistics.median(tps):.0f} |")
    print("\n".join(rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tasks", default="rte,stsb")
    ap.add_argument("--methods", default="full,bitfit,layernorm")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--threads", type=int, default=2, help="threads per run")
    ap.add_argument("--out", default="runs/table")
    ap.add_argument("--peft", default="target/release/peft")
    ap.add_argument("--collect", action="store_true", help="only print the table")
    args = ap.parse_args()
    args.tasks = [t.replace("-", "").lower() for t in args.tasks.split(",")]
    args.methods = args.methods.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not args.collect:
        todo = [(t, m, s) for s in args.seeds for t in args.tasks for m in args.methods]
        # Longest runs first, so parallel jobs finish together.
        todo.sort(key=lambda j: (args.methods.index(j[1]), args.tasks.index(j[0])))
        with ThreadPoolExecutor(args.jobs) as pool:
            for f in [pool.submit(train, args, *job) for job in todo]:
                f.result()
    table(args)


if __name__ == "__main__":
    main()
