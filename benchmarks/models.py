"""Forward time and peak RSS of every preset on CPU, channels_last on and off.

Usage: python benchmarks/models.py [--sizes 512 1024] [--presets ...] [--train-presets ...]

Each configuration runs in a fresh subprocess (peak RSS is per process): build the model
(4 bands, 24 classes, random init), one warm-up forward, then the best of ``--repeat`` timed
forwards in inference mode. ``--train-presets`` also times one training step (forward, BAE
loss, backward) at each size. Prints a table and writes benchmarks/results/models.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(name: str, size: int, channels_last: bool, mode: str, repeat: int) -> None:
    import torch

    from elegantviz.losses import elegantseg_loss
    from elegantviz.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=24, in_chans=4, channels_last=channels_last)
    x = torch.randn(1, 4, size, size)
    base = _rss_mb()
    times = []
    if mode == "infer":
        model.eval()
        with torch.inference_mode():
            for i in range(repeat + 1):
                t = time.perf_counter()
                out = model(x)
                times.append(time.perf_counter() - t)
                del out
    else:
        model.train()
        labels = torch.randint(0, 24, (1, size, size))
        for i in range(repeat + 1):
            t = time.perf_counter()
            loss = elegantseg_loss(model(x), labels)
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(preset=name, size=size, channels_last=channels_last, mode=mode, first_s=times[0],
                          best_s=min(times[1:]), peak_rss_mb=peak, model_rss_mb=base,
                          threads=torch.get_num_threads())))


def main() -> None:
    from elegantviz.models.registry import PRESETS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--train-presets", nargs="*", default=["elegantseg-cpu"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", nargs=4, metavar=("NAME", "SIZE", "CL", "MODE"))
    args = ap.parse_args()
    if args.child:
        name, size, cl, mode = args.child
        child(name, int(size), cl == "1", mode, args.repeat)
        return
    jobs = [(p, s, cl, "infer") for p in args.presets for s in args.sizes for cl in (True, False)]
    jobs += [(p, s, cl, "train") for p in args.train_presets for s in args.sizes for cl in (True, False)]
    rows = []
    print(f"{'preset':>16} {'size':>5} {'layout':>6} {'mode':>6} {'best s':>8} {'first s':>8} {'peak RSS MB':>12}")
    for name, size, cl, mode in jobs:
        cmd = [sys.executable, __file__, "--repeat", str(args.repeat), "--child", name, str(size), "1" if cl else "0",
               mode]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{name} {size} {cl} {mode} failed:\n{res.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["loadavg"] = os.getloadavg()[0]
        rows.append(r)
        print(f"{name:>16} {size:>5} {'CL' if cl else 'NCHW':>6} {mode:>6} {r['best_s']:8.2f} {r['first_s']:8.2f} "
              f"{r['peak_rss_mb']:12.0f}   (load {r['loadavg']:.1f})", flush=True)
    speedups = {}
    for name, size, _, mode in jobs:
        pair = {r["channels_last"]: r for r in rows if (r["preset"], r["size"], r["mode"]) == (name, size, mode)}
        if len(pair) == 2:
            speedups[f"{name}@{size}/{mode}"] = pair[False]["best_s"] / pair[True]["best_s"]
    print("channels_last speed-up (NCHW time / CL time):")
    for k, v in speedups.items():
        print(f"  {k}: {v:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = dict(benchmark="models", rows=rows, channels_last_speedup=speedups)
    (RESULTS / "models.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'models.json'}")


if __name__ == "__main__":
    main()
