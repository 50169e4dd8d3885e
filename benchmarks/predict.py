"""Holistic vs sliced prediction of the same network on the same scene.

Times one holistic forward pass of the whole scene (with the evidence) against sliding-window
prediction (512 crops, 1/3 overlap, blended logits), records each one's peak RSS in a child
process, and relates the model's achieved GFLOP/s to this machine's fp32 GEMM peak measured in
the same script.

    python benchmarks/predict.py [--size 4096] [--model elegantseg-cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _report import CHILD_PEAK_RSS, report

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time, numpy as np, torch
from elegantviz.data.synthetic import RiverworldSpec, render_image
from elegantviz.inference.sliced import predict_sliced
from elegantviz.inference.whole import predict_whole
from elegantviz.models.registry import build_model
mode, size, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = build_model(name, 5, 4).eval()
img = render_image(RiverworldSpec(size, size, 1), 0, size, 0, size).astype(np.float32) / 255
t = time.perf_counter()
out = predict_whole(model, img, torch.device("cpu")) if mode == "holistic" else \
      predict_sliced(model, img, torch.device("cpu"), 512, 1 / 3, progress=False)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mb": %s, "crops": out.windows}))
""" % CHILD_PEAK_RSS


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_gflops(name: str, size: int) -> float:
    """FLOPs of one forward at 1024^2 scaled to ``size`` (every part of the network is linear in pixels)."""
    from elegantviz.models.registry import build_model, count_flops

    model = build_model(name, 5, 4).eval()
    return count_flops(model, 1024, 4) * (size / 1024) ** 2 / 1e9


def run(mode: str, size: int, name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(size), name], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--model", default="elegantseg-cpu")
    ap.add_argument("--out", default=str(HERE / "results" / "predict.json"))
    args = ap.parse_args()
    holistic, sliced = run("holistic", args.size, args.model), run("sliced", args.size, args.model)
    gflop = model_gflops(args.model, args.size)
    peak = gemm_peak_gflops()
    overlap_factor = sliced["crops"] * 512 * 512 / args.size**2
    result = {
        "model": args.model, "size_px": args.size,
        "holistic_s": holistic["seconds"], "holistic_peak_rss_mb": holistic["peak_rss_mb"],
        "sliced_s": sliced["seconds"], "sliced_peak_rss_mb": sliced["peak_rss_mb"], "sliced_crops": sliced["crops"],
        "sliced_pixels_over_scene_pixels": overlap_factor,
        "sliced_over_holistic_time": sliced["seconds"] / holistic["seconds"],
        "model_gflop_per_forward": gflop,
        "holistic_gflops_per_s": gflop / holistic["seconds"],
        "sliced_gflops_per_s": gflop * overlap_factor / sliced["seconds"],
        "fp32_gemm_peak_gflops_per_s": peak,
        "holistic_share_of_gemm_peak": gflop / holistic["seconds"] / peak,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
