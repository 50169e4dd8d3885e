"""Forward time and peak RSS of every preset on CPU, channels_last on and off.

Usage: python benchmarks/models.py [--sizes 512 1024] [--presets ...] [--train-presets ...]
       python benchmarks/models.py --ab PRESET SIZE infer|train [--rounds 5]

Each configuration runs in a fresh subprocess (peak RSS is per process): build the model
(4 bands, 24 classes, random init), one warm-up forward, then the best of ``--repeat`` timed
forwards in inference mode. ``--train-presets`` also times one training step (forward, BAE
loss, backward) at each size. Prints a table and writes benchmarks/results/models.json.
``--ab`` compares the two layouts in one process, alternating runs (robust to load from other
processes), and adds its result to benchmarks/results/models_ab.json.
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


def ab(name: str, size: int, rounds: int, mode: str) -> dict:
    """channels_last vs NCHW in one process, alternating, so that load from other processes
    hits both alike; the same weights in both layouts."""
    import statistics

    import torch

    from elegantviz.losses import elegantseg_loss
    from elegantviz.models import build_model

    torch.manual_seed(0)
    nchw = build_model(name, num_classes=24, in_chans=4, channels_last=False)
    cl = build_model(name, num_classes=24, in_chans=4, channels_last=True)
    cl.load_state_dict(nchw.state_dict())
    x = torch.randn(1, 4, size, size)
    labels = torch.randint(0, 24, (1, size, size))

    def run(model):
        t = time.perf_counter()
        if mode == "infer":
            with torch.inference_mode():
                model.eval()(x)
        else:
            elegantseg_loss(model.train()(x), labels).backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    run(nchw), run(cl)  # warm-up
    times = {"nchw": [], "channels_last": []}
    for _ in range(rounds):
        times["nchw"].append(run(nchw))
        times["channels_last"].append(run(cl))
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(preset=name, size=size, mode=mode, rounds=rounds, threads=torch.get_num_threads(), times=times,
                median_s=med,
                speedup_channels_last=med["nchw"] / med["channels_last"])


def main() -> None:
    from elegantviz.models.registry import PRESETS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--train-presets", nargs="*", default=["elegantseg-cpu"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", nargs=4, metavar=("NAME", "SIZE", "CL", "MODE"))
    ap.add_argument("--ab", nargs=3, metavar=("NAME", "SIZE", "MODE"),
                    help="only the interleaved channels_last vs NCHW comparison; writes models_ab.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.ab:
        r = ab(args.ab[0], int(args.ab[1]), args.rounds, args.ab[2])
        print(json.dumps(r, indent=1))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / "models_ab.json"
        old = json.loads(path.read_text()) if path.exists() else []
        key = lambda o: (o["preset"], o["size"], o["mode"], o.get("threads"))  # noqa: E731
        old = [o for o in old if key(o) != key(r)]
        path.write_text(json.dumps(old + [r], indent=1))
        return
    if args.child:
        name, size, cl, mode = args.child
        child(name, int(size), cl == "1", mode, args.repeat)
        return
    jobs = [(p, s, cl, "infer") for p in args.presets for s in args.sizes for cl in (True, False)]
    jobs += [(p, s, cl, "train") for p in args.train_presets for s in args.sizes for cl in (True, False)]
    rows = []
    print(f"{'preset':>16} {'size':>5} {'layout':>6} {'mode':>6} {'best s':>8} {'first s':>8} {'peak RSS MB':>12}")
    for name, size, cl, mode in jobs:
        cmd = [sys.executable, __file__, "--repeat", str(args.repeat), "--threads", str(args.threads), "--child", name,
               str(size), "1" if cl else "0", mode]
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
    # one run per thread setting, kept side by side
    path = RESULTS / "models.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    runs = old.get("runs", {})
    runs[f"threads={args.threads or 'default'}"] = dict(rows=rows, channels_last_speedup=speedups)
    path.write_text(json.dumps(dict(benchmark="models", runs=runs), indent=1))
    print(f"wrote {RESULTS / 'models.json'}")


if __name__ == "__main__":
    main()
