"""Depthwise k x k convolution on CPU: direct (NCHW, channels_last) vs FFT, forward and backward.

Usage: python benchmarks/depthwise.py [--threads N] [--quick]

Times forward, input gradient and weight gradient separately (torch.autograd.grad per input,
so each backward does only its own work), checks that the FFT agrees with the direct
convolution, prints a table and writes benchmarks/results/depthwise.json. The table in
elegantviz/models/depthwise.py (select_impl) is set from these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from elegantviz.models.depthwise import direct_depthwise_conv2d, fft_depthwise_conv2d, select_impl

RESULTS = Path(__file__).parent / "results"


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_one(c: int, h: int, w: int, k: int, impl: str, channels_last: bool, repeat: int) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, c, h, w).contiguous(memory_format=fmt).requires_grad_()
    wt = (torch.randn(c, 1, k, k) / k).requires_grad_()
    conv = fft_depthwise_conv2d if impl == "fft" else direct_depthwise_conv2d
    # warm-up (oneDNN primitive creation, FFT plans)
    y = conv(x, wt)
    g = torch.randn_like(y)
    torch.autograd.grad(y, (x, wt), g)
    # the slow direct weight gradient gets a single timed run
    rep_w = 1 if (impl == "direct" and k >= 15 and h * w > 100 * 100) else repeat
    with torch.no_grad():
        t_fwd = _time(lambda: conv(x, wt), repeat)
    y = conv(x, wt)
    t_gx = _time(lambda: torch.autograd.grad(y, x, g, retain_graph=True), repeat)
    t_gw = _time(lambda: torch.autograd.grad(y, wt, g, retain_graph=True), rep_w)
    return dict(impl=impl, channels_last=channels_last, c=c, h=h, w=w, k=k, forward_s=t_fwd, grad_input_s=t_gx,
                grad_weight_s=t_gw, train_s=t_fwd + t_gx + t_gw)


def check_exact(k: int) -> float:
    torch.manual_seed(1)
    x = torch.randn(1, 32, 97, 83, requires_grad=True)
    wt = torch.randn(32, 1, k, k, requires_grad=True)
    g = torch.randn(1, 32, 97, 83)
    ref = direct_depthwise_conv2d(x, wt)
    got = fft_depthwise_conv2d(x, wt)
    errs = [((got - ref).abs().max() / ref.abs().max()).item()]
    for a, b in zip(torch.autograd.grad(got, (x, wt), g), torch.autograd.grad(ref, (x, wt), g)):
        errs.append(((a - b).abs().max() / b.abs().max()).item())
    return max(errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="only the 225 x 212 map")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(256, 225, 212)] if args.quick else [(256, 225, 212), (256, 128, 128), (256, 64, 64), (64, 32, 32),
                                                    (64, 16, 16)]
    rows = []
    print(f"threads={args.threads} torch={torch.__version__}")
    print(f"{'map':>14} {'k':>3} {'impl':>7} {'layout':>6} {'fwd s':>8} {'grad_x s':>9} {'grad_w s':>9} {'total s':>8}")
    for c, h, w in shapes:
        for k in (7, 15, 31):
            for impl, cl in (("direct", False), ("direct", True), ("fft", False), ("fft", True)):
                r = bench_one(c, h, w, k, impl, cl, repeat=3)
                rows.append(r)
                print(f"{f'{c}x{h}x{w}':>14} {k:>3} {impl:>7} {'CL' if cl else 'NCHW':>6} {r['forward_s']:8.3f} "
                      f"{r['grad_input_s']:9.3f} {r['grad_weight_s']:9.3f} {r['train_s']:8.3f}", flush=True)
    errors = {k: check_exact(k) for k in (7, 15, 31)}
    print("max relative error fft vs direct (fwd, grad_x, grad_w):", errors)
    summary = []
    for c, h, w in shapes:
        for k in (7, 15, 31):
            sel = [r for r in rows if (r["c"], r["h"], r["w"], r["k"]) == (c, h, w, k)]
            best_train = min(sel, key=lambda r: r["train_s"])
            best_fwd = min(sel, key=lambda r: r["forward_s"])
            worst_direct = max((r for r in sel if r["impl"] == "direct"), key=lambda r: r["train_s"])
            fft_nchw = next(r for r in sel if r["impl"] == "fft" and not r["channels_last"])
            direct = {("cl" if r["channels_last"] else "nchw"): r for r in sel if r["impl"] == "direct"}
            summary.append(dict(
                map=[c, h, w], k=k,
                fastest_train=f"{best_train['impl']}{'-CL' if best_train['channels_last'] else ''}",
                fastest_forward=f"{best_fwd['impl']}{'-CL' if best_fwd['channels_last'] else ''}",
                select_impl_train=dict(nchw=select_impl(k, "cpu", (h, w), True, False, args.threads),
                                       channels_last=select_impl(k, "cpu", (h, w), True, True, args.threads)),
                select_impl_infer=dict(nchw=select_impl(k, "cpu", (h, w), False, False),
                                       channels_last=select_impl(k, "cpu", (h, w), False, True)),
                fft_speedup_train_vs_direct_cl=direct["cl"]["train_s"] / fft_nchw["train_s"],
                fft_speedup_train_vs_direct_nchw=direct["nchw"]["train_s"] / fft_nchw["train_s"],
                slowest_direct=worst_direct["train_s"],
            ))
    for s in summary:
        print(s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = dict(torch=torch.__version__, threads=args.threads, cpu=platform.processor(), loadavg_at_end=os.getloadavg(),
               rows=rows, max_rel_error=errors, summary=summary)
    # one run per thread count, kept side by side
    path = RESULTS / "depthwise.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    runs = old.get("runs", {})
    runs[f"threads={args.threads}"] = run
    path.write_text(json.dumps(dict(benchmark="depthwise", runs=runs), indent=1))
    print(f"wrote {RESULTS / 'depthwise.json'}")


if __name__ == "__main__":
    main()
