"""How much a Fisher estimate's ranking depends on its sample size.

    python scripts/fisher_stability.py REFERENCE.safetensors OTHER.safetensors [...]

Each file is a `peft fisher` output (fisher.safetensors). Against the first (e.g. the
whole training set), each other file is compared the way the Fisher-ranked methods use
it: the share of the top 10% / 20% / 50% of LayerNorm elements (fisher-layernorm's
choice, one threshold over all LayerNorm tensors) and of the top 30% of encoder-layer
elements (Child-Tuning D's) that both pick, and whether the components (query, output
LayerNorm, ...) come in the same order by mean Fisher per parameter. Needs numpy and
safetensors.
"""

import re
import sys

import numpy as np
from safetensors.numpy import load_file


def flat(f, keep):
    names = sorted(n for n in f if keep(n))
    return np.concatenate([f[n].ravel() for n in names])


def top(v, share):
    k = max(1, round(share * v.size))
    idx = np.argsort(-v, kind="stable")[:k]
    mask = np.zeros(v.size, bool)
    mask[idx] = True
    return mask


def components(f):
    """Mean Fisher per parameter of each component, layers pooled."""
    sums = {}
    for n, t in f.items():
        c = re.sub(r"layer\.\d+\.", "", n)
        s, k = sums.get(c, (0.0, 0))
        sums[c] = (s + float(t.sum()), k + t.size)
    return sorted(sums, key=lambda c: -sums[c][0] / sums[c][1])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ref = load_file(sys.argv[1])
    ln = lambda n: "LayerNorm." in n
    enc = lambda n: n.startswith("encoder.layer.")
    ref_order = components(ref)
    print(f"reference {sys.argv[1]}: components by mean Fisher: {', '.join(ref_order[:8])}, ...")
    for path in sys.argv[2:]:
        f = load_file(path)
        row = [path]
        for share in (0.1, 0.2, 0.5):
            a, b = top(flat(ref, ln), share), top(flat(f, ln), share)
            row.append(f"LayerNorm top {share:.0%}: {(a & b).sum() / a.sum():.3f}")
        a, b = top(flat(ref, enc), 0.3), top(flat(f, enc), 0.3)
        row.append(f"encoder top 30%: {(a & b).sum() / a.sum():.3f}")
        order = components(f)
        same = next((i for i, (x, y) in enumerate(zip(order, ref_order)) if x != y), len(order))
        row.append(f"component order equal for the first {same} of {len(order)}")
        print(" | ".join(row))


if __name__ == "__main__":
    main()
