"""Plain vs tiled holistic inference of ElegantSeg-S (HRNet-W18): peak RSS and time per scene size.

Each (mode, size) runs in a fresh process that builds the model (random init, 24 classes, 4
bands), makes a random normalised scene, runs ``whole.predict_whole`` (plain) or
``tiles.predict_halo_tiles`` (same outputs; keys and queries streamed into zarr arrays in a temporary
directory, chunked as ``predict_scene`` chunks its cache) and reads its peak RSS (VmHWM) from
/proc/self/status.
Peaks are then extrapolated linearly in pixels to a 6800x7200 scene (from the two largest sizes:
the tiled run's per-tile working set is constant once the scene is larger than one tile).

    nice -n 10 .venv/bin/python benchmarks/tiled_predict.py > benchmarks/results/tiled_predict.log 2>&1 &
    nice -n 10 .venv/bin/python benchmarks/tiled_predict.py --modes tiled --sizes 6800x7200 --append

Writes benchmarks/results/tiled_predict.json (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "tiled_predict.json"
TARGET = (6800, 7200)
MODES = ("plain", "tiled", "plain-mmap", "tiled-mmap")  # -mmap: glibc mmaps allocations >= 1 MiB


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one(args: argparse.Namespace) -> dict:
    """One forward pass in this process; returns its figures."""
    import tempfile

    import numpy as np
    import torch
    import zarr

    from elegantviz.engine.predict import cache_map_array, map_tile
    from elegantviz.inference.tiles import predict_halo_tiles
    from elegantviz.inference.whole import predict_whole
    from elegantviz.io.store import DEFAULT_TILE
    from elegantviz.models import build_model

    if args.mode.endswith("-mmap"):  # glibc otherwise keeps freed tile buffers (see offload.sizes)
        from elegantviz.offload.sizes import mmap_large_allocations

        mmap_large_allocations(1 << 20)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, args.bands).eval()
    h, w = args.size
    image = np.random.default_rng(0).standard_normal((args.bands, h, w), dtype=np.float32)
    start_rss = _status("VmRSS")
    started = time.perf_counter()
    if args.mode.startswith("plain"):
        out = predict_whole(model, image, torch.device("cpu")).arrays()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tiled_predict-")
        group = zarr.open_group(tmp.name, mode="w")
        chunk = map_tile(DEFAULT_TILE, model.output_stride)
        out = predict_halo_tiles(model, image, torch.device("cpu"), tile=args.tile, progress=args.progress,
                                 maps_to=lambda key, shape: cache_map_array(group, key, shape, chunk)).arrays()
    seconds = time.perf_counter() - started
    return {"mode": args.mode, "model": args.model, "height": h, "width": w, "mpx": h * w / 1e6,
            "tile": args.tile if args.mode.startswith("tiled") else None, "seconds": seconds,
            "maps_to": "zarr" if args.mode.startswith("tiled") else None,
            "peak_rss_bytes": _status("VmHWM"), "start_rss_bytes": start_rss,
            "threads": torch.get_num_threads(), "outputs": sorted(out),
            "hard_fraction": float(out["hard"].mean())}


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def _fit(runs: list[dict], mode: str) -> dict | None:
    """Peak RSS = a + b * Mpx through the two largest runs of ``mode``, evaluated at 6800x7200."""
    pts = sorted((r["mpx"], r["peak_rss_bytes"]) for r in runs if r["mode"] == mode and "peak_rss_bytes" in r)
    if len(pts) < 2:
        return None
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    b = (y1 - y0) / (x1 - x0)
    mpx = TARGET[0] * TARGET[1] / 1e6
    return {"from_mpx": [x0, x1], "bytes_per_mpx": b, "intercept_bytes": y0 - b * x0,
            "target": list(TARGET), "peak_bytes_at_target": y0 + b * (mpx - x0),
            "peak_gib_at_target": (y0 + b * (mpx - x0)) / 2**30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=_size, default=[(1024, 1024), (2048, 2048), (3072, 3072)])
    ap.add_argument("--modes", nargs="+", default=["plain", "tiled"], choices=list(MODES))
    ap.add_argument("--model", default="elegantseg-s")
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--append", action="store_true", help="keep the runs already in the JSON")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=_size, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return 0
    runs = json.loads(OUT.read_text())["runs"] if args.append and OUT.exists() else []
    for size in args.sizes:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--one", "--mode", mode, "--size", f"{size[0]}x{size[1]}",
                   "--model", args.model, "--classes", str(args.classes), "--bands", str(args.bands),
                   "--tile", str(args.tile)] + (["--progress"] if args.progress else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                run = {"mode": mode, "height": size[0], "width": size[1], "error": proc.stderr[-2000:]}
            else:
                run = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(run), flush=True)
            runs = [r for r in runs if (r["mode"], r["height"], r["width"]) != (mode, *size)] + [run]
            result = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs,
                      "extrapolation": {m: _fit(runs, m) for m in MODES}}
            OUT.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
