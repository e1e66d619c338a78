"""Golden fixture for Child-Tuning: five optimizer steps of AliceMind's ChildTuningAdamW.

    python scripts/child_tuning_reference.py [--alicemind DIR]

The fixture's updates come from AliceMind's own optimizer, `ChildTuningAdamW` in
ChildTuning/ChildTuningOptimizer.py (Xu et al. 2021, "Raise a Child in Large Language
Model"), at commit a6d5afe5c272960ce61dc73adb0877bc94b5d664 of
https://github.com/alibaba/AliceMind (git blob 46724f43b6535e73b59d5a6a1c7f1bcf192a4f4e;
the file is unchanged since it was added in c17b177e7e100cac5a3bc9f94c177f22238996f4).
The code is not vendored: it is imported from a checkout kept outside this repository,
DIR/ChildTuning/ChildTuningOptimizer.py (default DIR /work/refs/AliceMind), e.g.

    git clone https://github.com/alibaba/AliceMind /work/refs/AliceMind
    git -C /work/refs/AliceMind checkout a6d5afe5c272960ce61dc73adb0877bc94b5d664

or, from a bare mirror GIT_DIR of that repository,

    mkdir -p /work/refs/AliceMind/ChildTuning
    git --git-dir=GIT_DIR show \
        a6d5afe5c272960ce61dc73adb0877bc94b5d664:ChildTuning/ChildTuningOptimizer.py \
        > /work/refs/AliceMind/ChildTuning/ChildTuningOptimizer.py

The script checks the file's git blob id before using it. The optimizer is driven as
AliceMind's ChildTuningDtrainer / ChildTuningFtrainer (transformers Trainer) drive it, on
CPU in float32:

1. two param groups, weight decay WEIGHT_DECAY except on biases and LayerNorm (0.0);
2. per step: p.grad is set, the trainer clips the whole, unmasked gradient with
   torch.nn.utils.clip_grad_norm_(all params, MAX_GRAD_NORM), the scheduler's lr is
   written into every param_group, then optimizer.step();
3. Child-Tuning_D (mode 'ChildTuning-D'): the fixed mask goes in through
   set_gradient_mask({Parameter: bool mask}) for the encoder.layer.* tensors only, as
   calculate_fisher builds it; the optimizer leaves tensors missing from the dict unmasked;
4. Child-Tuning_F (mode 'ChildTuning-F', reserve_p RESERVE_P): the optimizer multiplies
   each gradient by Bernoulli(reserve_p).sample() / reserve_p. The only thing patched is
   that draw: torch.distributions.bernoulli.Bernoulli.sample is replaced while F runs so
   that it returns the recorded `fmask` for the step and tensor (in the order the optimizer
   visits its param groups), after checking the probabilities are reserve_p and the shape
   matches. This keeps the draws stored in the fixture, so the Rust side can replay them;
   everything else (masking, moments, bias correction, decoupled decay) is AliceMind's.

Final moments are optimizer.state[p]["exp_avg"] / ["exp_avg_sq"]. As a cross-check the
previous plain-torch re-implementation (run() below) is run too and the script fails if
it differs from AliceMind's optimizer by more than 1e-6 anywhere.

Writes tests/fixtures/child-tuning/reference.safetensors with keys
    init.<name>, grad.<s>.<name>, dmask.<name> (encoder.layer.* only), fmask.<s>.<name>,
    d.<s>.<name>, f.<s>.<name> (params after step s), d.m|d.v|f.m|f.v.<name> (final moments)
and the hyper-parameters as string metadata.
"""

import argparse
import hashlib
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "child-tuning" / "reference.safetensors"
ALICEMIND_DIR = Path("/work/refs/AliceMind")
ALICEMIND_COMMIT = "a6d5afe5c272960ce61dc73adb0877bc94b5d664"
OPTIMIZER_BLOB = "46724f43b6535e73b59d5a6a1c7f1bcf192a4f4e"  # ChildTuning/ChildTuningOptimizer.py
CROSS_CHECK_TOL = 1e-6

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
    """The former plain-torch re-implementation, kept as a cross-check.

    Returns (params after each step, final exp_avg, final exp_avg_sq, total norms)."""
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


def load_alicemind(root: Path):
    """Imports ChildTuningAdamW from DIR/ChildTuning, after checking the file's git blob id."""
    src = root / "ChildTuning" / "ChildTuningOptimizer.py"
    if not src.is_file():
        sys.exit(f"{src} not found: get AliceMind at {ALICEMIND_COMMIT} (see the docstring)")
    data = src.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if blob != OPTIMIZER_BLOB:
        sys.exit(f"{src} has git blob {blob}, expected {OPTIMIZER_BLOB} (AliceMind {ALICEMIND_COMMIT})")
    sys.path.insert(0, str(src.parent))
    from ChildTuningOptimizer import ChildTuningAdamW

    return ChildTuningAdamW


class RecordedBernoulli:
    """Replaces Bernoulli.sample so that the optimizer's draws are the recorded fmask."""

    def __init__(self, fmask):
        self.fmask = fmask
        self.queue = []

    def expect(self, step, names):
        assert not self.queue, f"{len(self.queue)} draws of the previous step were not made"
        self.queue = [(step, n) for n in names]

    def __enter__(self):
        from torch.distributions.bernoulli import Bernoulli

        self.original = Bernoulli.sample
        recorded = self

        def sample(dist, sample_shape=torch.Size()):
            assert tuple(sample_shape) == (), sample_shape
            s, n = recorded.queue.pop(0)
            mask = recorded.fmask[s][n]
            assert dist.probs.shape == mask.shape, (n, dist.probs.shape, mask.shape)
            assert torch.all(dist.probs == torch.tensor(RESERVE_P, dtype=dist.probs.dtype)), n
            return mask.clone().to(dist.probs.dtype)

        Bernoulli.sample = sample
        return self

    def __exit__(self, *exc):
        from torch.distributions.bernoulli import Bernoulli

        Bernoulli.sample = self.original
        assert exc[0] is not None or not self.queue, "unused recorded draws"
        return False


def run_alicemind(ChildTuningAdamW, mode, init, grads, dmask, fmask):
    """AliceMind's ChildTuningAdamW, driven as its trainers drive it.

    Returns (params after each step, final exp_avg, final exp_avg_sq, total norms)."""
    params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    groups = [
        {"params": [p for n, p in params.items() if decays(n)], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in params.items() if not decays(n)], "weight_decay": 0.0},
    ]
    opt = ChildTuningAdamW(
        groups,
        lr=LR[0],
        betas=(BETA1, BETA2),
        eps=EPS,
        reserve_p=RESERVE_P,
        mode={"d": "ChildTuning-D", "f": "ChildTuning-F"}[mode],
    )
    if mode == "d":
        # as ChildTuningDtrainer.calculate_fisher: {Parameter: bool tensor}, 'layer' tensors only
        opt.set_gradient_mask({params[n]: dmask[n].bool() for n in dmask})
    name_of = {id(p): n for n, p in params.items()}
    recorded = RecordedBernoulli(fmask)
    history, norms = [], []
    with recorded:
        for s in range(STEPS):
            for n, p in params.items():
                p.grad = grads[s][n].clone()
            norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM).item())
            for group in opt.param_groups:  # what the lr scheduler does
                group["lr"] = LR[s]
            if mode == "f":
                recorded.expect(s, [name_of[id(p)] for g in opt.param_groups for p in g["params"]])
            opt.step()
            for p in params.values():
                p.grad = None
            history.append({n: p.detach().clone() for n, p in params.items()})
    m = {n: opt.state[p]["exp_avg"].clone() for n, p in params.items()}
    v = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in params.items()}
    return history, m, v, norms


def max_diff(a, b):
    history_a, m_a, v_a, _ = a
    history_b, m_b, v_b, _ = b
    d = 0.0
    for x, y in [*zip(history_a, history_b), (m_a, m_b), (v_a, v_b)]:
        d = max(d, max((x[n] - y[n]).abs().max().item() for n in x))
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alicemind", type=Path, default=ALICEMIND_DIR, help="AliceMind checkout")
    args = ap.parse_args()
    ChildTuningAdamW = load_alicemind(args.alicemind)
    init, grads, dmask, fmask = make_inputs()
    out = {f"init.{n}": t for n, t in init.items()}
    for s in range(STEPS):
        out.update({f"grad.{s}.{n}": t for n, t in grads[s].items()})
        out.update({f"fmask.{s}.{n}": t for n, t in fmask[s].items()})
    out.update({f"dmask.{n}": t for n, t in dmask.items()})
    kept = sum(t.sum().item() for t in dmask.values())
    total = sum(t.numel() for t in dmask.values())
    print(f"dmask keeps {kept:.0f}/{total} encoder.layer elements")
    worst = {}
    for mode in ("d", "f"):
        result = run_alicemind(ChildTuningAdamW, mode, init, grads, dmask, fmask)
        history, m, v, norms = result
        old = run(mode, init, grads, dmask, fmask)
        worst[mode] = max_diff(result, old)
        norm_diff = max(abs(a - b) for a, b in zip(norms, old[3]))
        print(
            f"mode {mode.upper()}: AliceMind ChildTuningAdamW vs plain-torch re-implementation: "
            f"max |diff| {worst[mode]:.3e} (params and moments), grad norms {norm_diff:.3e}"
        )
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
    bad = {k: d for k, d in worst.items() if d > CROSS_CHECK_TOL}
    if bad:
        print(f"cross-check FAILED, fixture not written (> {CROSS_CHECK_TOL}): {bad}")
        sys.exit(1)
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
