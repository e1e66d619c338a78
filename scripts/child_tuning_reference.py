"""Golden fixture for Child-Tuning: five optimizer steps of AliceMind's ChildTuningAdamW.

    python scripts/child_tuning_reference.py

Re-implements in plain torch (CPU, float32) the update of `ChildTuningAdamW` (Xu et al.
2021, "Raise a Child in Large Language Model") as driven by its trainer:

1. the trainer clips the whole, unmasked gradient with torch.nn.utils.clip_grad_norm_;
2. the optimizer masks each gradient: Child-Tuning_D multiplies encoder.layer.* tensors
   by a fixed 0/1 mask (`dmask`), Child-Tuning_F multiplies every tensor by a fresh
   Bernoulli(reserve_p) draw divided by reserve_p (here the draws are given, `fmask`);
3. then the legacy transformers AdamW arithmetic (correct_bias=True) with decoupled weight
   decay applied after the Adam step, to the updated parameter. Masked-out zeros still
   enter the moments, so exp_avg decays where the mask is 0.

Writes tests/fixtures/child-tuning/reference.safetensors with keys
    init.<name>, grad.<s>.<name>, dmask.<name> (encoder.layer.* only), fmask.<s>.<name>,
    d.<s>.<name>, f.<s>.<name> (params after step s), d.m|d.v|f.m|f.v.<name> (final moments)
and the hyper-parameters as string metadata.
"""

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "child-tuning" / "reference.safetensors"

SHAPES = {
    "embeddings.word_embeddings.weight": (6, 4),
    "encoder.layer.0.attention.self.query.weight": (4, 4),
    "encoder.layer.0.attention.self.query.bias": (4,),
    "encoder.layer.0.output.LayerNorm.weight": (4,),
    "encoder.layer.1.intermediate.dense.weight": (8, 4),
    "classifier.weight": (2, 4),
    "classifier.bias": (2,),
}
LR = [0.01, 0.02, 0.02, 0.015, 0.01]  # one per step, like a schedule
GRAD_SCALE = [0.5, 0.05, 0.3, 0.02, 0.4]  # some steps clip, some do not
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
WEIGHT_DECAY, MAX_GRAD_NORM, RESERVE_P = 0.1, 1.0, 0.3
STEPS = len(LR)


def decays(name: str) -> bool:
    """The usual BERT grouping: no weight decay on biases and LayerNorm."""
    return not (name.endswith(".bias") or "LayerNorm." in name)


def make_inputs():
    torch.manual_seed(0)
    init = {}
    for name, shape in SHAPES.items():
        if "LayerNorm.weight" in name:
            init[name] = 1.0 + 0.1 * torch.randn(shape)
        else:
            init[name] = 0.5 * torch.randn(shape)
    grads = [{n: s * torch.randn(SHAPES[n]) for n in SHAPES} for s in GRAD_SCALE]
    # Child-Tuning_D: keep the top reserve_p of a (here random) Fisher score, the
    # threshold taken over all encoder.layer elements together, as AliceMind does.
    enc = [n for n in SHAPES if n.startswith("encoder.layer.")]
    fisher = {n: torch.rand(SHAPES[n]) for n in enc}
    polar = torch.quantile(torch.cat([fisher[n].flatten() for n in enc]), 1 - RESERVE_P)
    dmask = {n: (fisher[n] >= polar).float() for n in enc}
    # Child-Tuning_F: stand-ins for Bernoulli(reserve_p).sample(), one per step and tensor.
    gen = torch.Generator().manual_seed(1)
    fmask = [
        {n: (torch.rand(SHAPES[n], generator=gen) < RESERVE_P).float() for n in SHAPES}
        for _ in range(STEPS)
    ]
    return init, grads, dmask, fmask


def run(mode, init, grads, dmask, fmask):
    """Returns (params after each step, final exp_avg, final exp_avg_sq, total norms)."""
    params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    m = {n: torch.zeros_like(t) for n, t in init.items()}
    v = {n: torch.zeros_like(t) for n, t in init.items()}
    history, norms = [], []
    for s in range(STEPS):
        lr = LR[s]
        for n, p in params.items():
            p.grad = grads[s][n].clone()
        # 1. the trainer clips the full, unmasked gradient
        norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM).item())
        step = s + 1
        with torch.no_grad():
            for n, p in params.items():
                grad = p.grad
                # 2. the optimizer's mask
                if mode == "d":
                    if n in dmask:
                        grad *= dmask[n]
                else:
                    grad *= fmask[s][n] / RESERVE_P
                # 3. legacy transformers AdamW, correct_bias=True
                m[n].mul_(BETA1).add_(grad, alpha=1.0 - BETA1)
                v[n].mul_(BETA2).addcmul_(grad, grad, value=1.0 - BETA2)
                denom = v[n].sqrt().add_(EPS)
                step_size = lr * math.sqrt(1.0 - BETA2**step) / (1.0 - BETA1**step)
                p.addcdiv_(m[n], denom, value=-step_size)
                if decays(n):  # decoupled decay, after the Adam step
                    p.add_(p, alpha=-lr * WEIGHT_DECAY)
        history.append({n: p.detach().clone() for n, p in params.items()})
    return history, m, v, norms


def main():
    init, grads, dmask, fmask = make_inputs()
    out = {f"init.{n}": t for n, t in init.items()}
    for s in range(STEPS):
        out.update({f"grad.{s}.{n}": t for n, t in grads[s].items()})
        out.update({f"fmask.{s}.{n}": t for n, t in fmask[s].items()})
    out.update({f"dmask.{n}": t for n, t in dmask.items()})
    kept = sum(t.sum().item() for t in dmask.values())
    total = sum(t.numel() for t in dmask.values())
    print(f"dmask keeps {kept:.0f}/{total} encoder.layer elements")
    for mode in ("d", "f"):
        history, m, v, norms = run(mode, init, grads, dmask, fmask)
        if mode == "d":
            for s, norm in enumerate(norms):
                clipped = "yes" if norm > MAX_GRAD_NORM else "no"
                print(f"step {s}: total grad norm {norm:.4f}, clipped {clipped}")
        for s, params in enumerate(history):
            out.update({f"{mode}.{s}.{n}": t for n, t in params.items()})
        out.update({f"{mode}.m.{n}": t for n, t in m.items()})
        out.update({f"{mode}.v.{n}": t for n, t in v.items()})
        drift = max((history[-1][n] - init[n]).abs().max().item() for n in init)
        print(f"mode {mode.upper()}: max |param - init| after step {STEPS - 1}: {drift:.6f}")
    meta = {
        "lr": ",".join(str(x) for x in LR),
        "beta1": str(BETA1),
        "beta2": str(BETA2),
        "eps": str(EPS),
        "weight_decay": str(WEIGHT_DECAY),
        "max_grad_norm": str(MAX_GRAD_NORM),
        "reserve_p": str(RESERVE_P),
        "steps": str(STEPS),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in out.items()}, OUT, metadata=meta)
    print(f"wrote {len(out)} tensors to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
