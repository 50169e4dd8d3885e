"""One training step of ElegantSeg-S (HRNet-W18) per size and offload policy: peak RSS, spill, time.

Each (size, policy) runs in a fresh process so that peak RSS belongs to that step alone. The
planner's prediction (from two dry runs at 128 and 256 px) is recorded next to each measurement,
configurations the planner says do not fit the free memory are skipped, and host GB per megapixel
is compared with the EHSNet paper's 117 GB for a 6800x7200 scene (2.4 GB/Mpx).

    nice -n 10 .venv/bin/python benchmarks/memory.py --sizes 512 1024 2048 4096 --threads 1 \
        --mmap-threshold 1048576 > benchmarks/results/memory.log 2>&1

Configurations predicted not to fit the free memory, or to spill more than the free disk, are
skipped and listed with the reason.

Writes benchmarks/results/memory.json (rewritten after every configuration). One real step of a
whole 6800x7200 scene under one policy (tens of minutes here; its JSON on the last line):

    nice .venv/bin/python benchmarks/memory.py --one --size 6800 --width 7200 --policy checkpoint+band+disk \
        --threads 2 --mmap-threshold 1048576 > benchmarks/results/memory_6800x7200.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "memory.json"
POLICIES = ("none", "checkpoint", "disk", "checkpoint+disk", "checkpoint+band+disk")
FULL_PIXELS = 6800 * 7200
PAPER_GB_PER_MPX = 117 / (FULL_PIXELS / 1e6)


def build(name: str, bands: int, classes: int):
    import torch

    try:
        from elegantviz.models.registry import build_model

        return build_model(name, num_classes=classes, in_chans=bands), name
    except Exception as exc:  # the models package may be unfinished: fall back to the bare backbone
        import timm

        print(f"build_model({name!r}) failed ({exc}); using timm hrnet_w18 features", file=sys.stderr)
        m = timm.create_model("hrnet_w18", features_only=True, feature_location="", out_indices=(1, 2, 3, 4),
                              in_chans=bands)
        return m.to(memory_format=torch.channels_last), "hrnet_w18"


def one(args: argparse.Namespace) -> dict:
    """Run one step in this process and return its figures."""
    import torch

    from elegantviz.offload import MemoryMeter, Policy
    from elegantviz.offload.planner import default_loss

    if args.mmap_threshold:
        from elegantviz.offload import mmap_large_allocations

        mmap_large_allocations(args.mmap_threshold)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, used = build(args.model, args.bands, args.classes)
    model.train()
    x = torch.randn(1, args.bands, args.size, args.width or args.size)
    # Bands cover the same share of the scene at every size as 64 MiB bands at 6800x7200 (what
    # the planner assumes when it extrapolates from small dry runs).
    band_bytes = max(1024, int(Policy().band_bytes * args.size * (args.width or args.size) / FULL_PIXELS))
    policy = Policy.from_name(args.policy, spill_dir=args.spill_dir, band_bytes=band_bytes)
    meter = MemoryMeter()
    with meter.step() as stats:
        with policy.apply(model, meter):
            # as the trainer: logits at the feature stride, BAE loss upsampled band by band
            loss = default_loss(model(x, upsample=False) if used != "hrnet_w18" else model(x))
            loss.backward()
            loss = loss.detach()
    d = stats.as_dict()
    d.update(model=used, size=args.size, width=args.width or args.size, policy=args.policy, loss=loss.item(),
             threads=args.threads, mmap_threshold=args.mmap_threshold, band_bytes=band_bytes,
             step_rss_bytes=d["peak_rss_bytes"] - d["start_rss_bytes"])
    return d


def predictions(args: argparse.Namespace, sizes: list[int]) -> dict:
    """The planner's predicted peak per policy for every size (one plan, all policies)."""
    import torch

    from elegantviz.offload import plan

    torch.set_num_threads(args.threads)
    model, used = build(args.model, args.bands, args.classes)
    fk = {"upsample": False} if used != "hrnet_w18" else None
    p = plan(model, (args.bands, 6800, 7200), budget_bytes=1 << 50, candidates=POLICIES, evaluate_all=True,
             forward_kwargs=fk)
    out = {f"{s}x{s}": p.predict(s, s) for s in sizes}
    out["6800x7200"] = p.needs
    full = p.measured["full"]
    spill = {f"{s}x{s}": {n: full[n + ":saved"] * s * s / p.scene_pixels for n in POLICIES if "disk" in n}
             for s in sizes}
    spill["6800x7200"] = {n: full[n + ":saved"] for n in POLICIES if "disk" in n}
    return {"model": used, "needs": out, "spill": spill, "dry_sizes": p.measured["sizes"],
            "rows": p.measured["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--model", default="elegantseg-s")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spill-dir", default=None)
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="glibc mallopt(M_MMAP_THRESHOLD) in each step process (0: glibc default)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--append", action="store_true", help="add runs to an existing JSON")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, default=0, help="with --one: a size x width scene (default square)")
    ap.add_argument("--policy", default="none", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return

    import psutil

    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": args.threads,
                    "paper_gb_per_mpx": PAPER_GB_PER_MPX, "runs": [], "skipped": []}
    if args.append and args.out.exists():
        result = json.loads(args.out.read_text())
        result.setdefault("earlier_planners", []).append(result.pop("planner", None))
    t0 = time.time()
    result["planner"] = predictions(args, args.sizes)
    result["planner_seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for size in args.sizes:
        for pol in args.policies:
            need = result["planner"]["needs"][f"{size}x{size}"][pol]
            free = psutil.virtual_memory().available
            if need > 0.8 * free:
                result["skipped"].append(dict(size=size, policy=pol, predicted_bytes=need, free_bytes=free))
                print(f"skip {size} {pol}: predicted {need / 2**30:.1f} GiB > 80% of free {free / 2**30:.1f} GiB",
                      flush=True)
                continue
            spill = result["planner"]["spill"][f"{size}x{size}"].get(pol, 0)
            disk_free = shutil.disk_usage(args.spill_dir or tempfile.gettempdir()).free
            if spill > 0.9 * disk_free:
                result["skipped"].append(dict(size=size, policy=pol, spill_bytes=spill, disk_free_bytes=disk_free))
                print(f"skip {size} {pol}: would spill {spill / 2**30:.1f} GiB, disk has {disk_free / 2**30:.1f} GiB",
                      flush=True)
                continue
            cmd = [sys.executable, __file__, "--one", "--size", str(size), "--policy", pol, "--model", args.model,
                   "--bands", str(args.bands), "--classes", str(args.classes), "--threads", str(args.threads)]
            if args.spill_dir:
                cmd += ["--spill-dir", args.spill_dir]
            if args.mmap_threshold:
                cmd += ["--mmap-threshold", str(args.mmap_threshold)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr, flush=True)
                result["skipped"].append(dict(size=size, policy=pol, error=proc.stderr[-500:]))
                continue
            d = json.loads(proc.stdout.strip().splitlines()[-1])
            mpx = size * size / 1e6
            d["predicted_bytes"] = need
            d["step_gb_per_mpx"] = d["step_rss_bytes"] / 1e9 / mpx
            d["saved_gb_per_mpx"] = d["saved_bytes"] / 1e9 / mpx
            result["runs"].append(d)
            print(f"{size:5d} {pol:16s} step RSS {d['step_rss_bytes'] / 2**30:6.2f} GiB "
                  f"(predicted {need / 2**30:6.2f}), saved {d['saved_bytes'] / 2**30:6.2f} GiB, "
                  f"disk {d['spilled_disk_bytes'] / 2**30:6.2f} GiB, {d['seconds']:7.1f} s "
                  f"({d['step_gb_per_mpx']:.2f} GB/Mpx)", flush=True)
            args.out.write_text(json.dumps(result, indent=1))
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
