"""Memory of ECR's efficient attention vs the same attention computed with the explicit map.

Usage: python benchmarks/attention.py [--max-side 256]

For feature maps 1 x 256 x s x s (hard region a = 10 %), each variant runs in a fresh
subprocess and reports its peak RSS above the inputs (ru_maxrss), so only what the attention
itself allocates counts. The explicit map is m x N for the hard region (what ECR would need
without the efficient form) and N x N for generic self-attention over all pixels (what the
paper's Fig. 6 compares). Peak bytes are fitted to the analytic element counts and
extrapolated to the paper's FBP features, n x 256 x 1700 x 1800. Writes
benchmarks/results/attention.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
D = 256
RATIO = 0.1


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(variant: str, side: int) -> None:
    import torch

    from elegantviz.models.ecr import efficient_attention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n_pos = side * side
    m = max(1, round(RATIO * n_pos))
    feats = torch.randn(1, D, n_pos)
    hard = feats[:, :, :m].clone()
    base = _rss_kb()
    # ru_maxrss is the peak of the whole process; touch the baseline so it is included
    with torch.no_grad():
        if variant == "efficient":
            out, *_ = efficient_attention(hard, feats, "softmax")
        elif variant == "explicit_hard":  # m x N map, same normalisation
            attn = torch.bmm(hard.softmax(1).transpose(1, 2), feats.softmax(2))
            out = torch.bmm(feats, attn.transpose(1, 2))
        elif variant == "explicit_full":  # generic attention of every pixel: N x N map
            attn = torch.bmm(feats.softmax(1).transpose(1, 2), feats.softmax(2))
            out = torch.bmm(feats, attn.transpose(1, 2))
        else:
            raise ValueError(variant)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(variant=variant, side=side, n_pos=n_pos, m=m, peak_extra_bytes=(peak - base) * 1024,
                          out_shape=list(out.shape))))


def analytic_bytes(variant: str, n_pos: int, m: int, d: int = D, itemsize: int = 4) -> int:
    """Elements the variant allocates beyond its inputs (float32)."""
    if variant == "efficient":  # keys d x N, queries d x m, context d x d, output d x m
        return itemsize * (d * n_pos + 2 * d * m + d * d)
    if variant == "explicit_hard":  # queries d x m, keys d x N, map m x N, output d x m
        return itemsize * (d * n_pos + 2 * d * m + m * n_pos)
    if variant == "explicit_full":
        return itemsize * (3 * d * n_pos + n_pos * n_pos)
    raise ValueError(variant)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "SIDE"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    sides = [s for s in (32, 64, 96, 128, 192, 256) if s <= args.max_side]
    rows = []
    print(f"{'variant':>14} {'features':>16} {'m':>7} {'measured MB':>12} {'analytic MB':>12}")
    for side in sides:
        for variant in ("efficient", "explicit_hard", "explicit_full"):
            n_pos = side * side
            if variant == "explicit_full" and n_pos * n_pos * 4 > 4e9:
                continue  # does not fit next to the other work on this machine
            res = subprocess.run([sys.executable, __file__, "--child", variant, str(side)], capture_output=True,
                                 text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["analytic_bytes"] = analytic_bytes(variant, r["n_pos"], r["m"])
            rows.append(r)
            print(f"{variant:>14} {f'1x{D}x{side}x{side}':>16} {r['m']:>7} {r['peak_extra_bytes'] / 2**20:12.1f} "
                  f"{r['analytic_bytes'] / 2**20:12.1f}", flush=True)
    # the analytic model against the measurements: measured = analytic + a constant overhead
    # (allocator, thread pools), fitted per variant as the median difference
    overhead = {}
    for variant in ("efficient", "explicit_hard", "explicit_full"):
        diffs = sorted(r["peak_extra_bytes"] - r["analytic_bytes"] for r in rows if r["variant"] == variant)
        overhead[variant] = diffs[len(diffs) // 2] if diffs else 0
        worst = max(abs(r["peak_extra_bytes"] - r["analytic_bytes"] - overhead[variant]) / r["analytic_bytes"]
                    for r in rows if r["variant"] == variant and r["analytic_bytes"] > 100 * 2**20) \
            if any(r["variant"] == variant and r["analytic_bytes"] > 100 * 2**20 for r in rows) else None
        if worst is not None:
            print(f"{variant}: measured = analytic + {overhead[variant] / 2**20:.1f} MB, within {100 * worst:.1f} % "
                  "above 100 MB")
    # extrapolation to the paper's FBP features: n x 256 x 1700 x 1800 (per image, n = 1)
    n_pos = 1700 * 1800
    m = round(RATIO * n_pos)
    paper = {v: analytic_bytes(v, n_pos, m) + overhead[v] for v in ("efficient", "explicit_hard", "explicit_full")}
    saved_vs_hard = 1 - paper["efficient"] / paper["explicit_hard"]
    saved_vs_full = 1 - paper["efficient"] / paper["explicit_full"]
    # the attention map alone: d x d context vs the N x N map
    saved_maps = 1 - (D * D) / (n_pos * n_pos)
    print(f"\nFBP features 1 x {D} x 1700 x 1800 (N = {n_pos}, hard m = {m}):")
    for v, b in paper.items():
        print(f"  {v:>14}: {b / 2**30:12.1f} GiB")
    print(f"  saved vs explicit hard-region map (m x N): {100 * saved_vs_hard:.4f} %")
    print(f"  saved vs generic attention (N x N):        {100 * saved_vs_full:.4f} %  (paper: about 99.99 %)")
    print(f"  saved, maps only (d x d vs N x N):         {100 * saved_maps:.8f} %")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = dict(benchmark="attention", d=D, ratio=RATIO, rows=rows, overhead_bytes=overhead,
               fbp=dict(features=[1, D, 1700, 1800], n_pos=n_pos, m=m, bytes=paper,
                        saved_vs_explicit_hard=saved_vs_hard, saved_vs_explicit_full=saved_vs_full,
                        saved_maps_only=saved_maps))
    (RESULTS / "attention.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'attention.json'}")


if __name__ == "__main__":
    main()
