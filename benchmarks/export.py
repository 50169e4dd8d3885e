"""`elegantviz export`: time and peak RSS of the COG and the river/pond polygons, by scene size.

Each export runs in a child process so its peak RSS is its own; if memory does not grow with
the scene, the peak stays near one chunk's worth while the pixels grow 16x.

    python benchmarks/export.py [--sizes 2048 8192] [--out benchmarks/results/export.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _report import CHILD_PEAK_RSS, report

HERE = Path(__file__).resolve().parent
SCRATCH = HERE / "scratch"

CHILD = """
import time
from elegantviz.engine.export import export_labels
t = time.perf_counter()
path, _ = export_labels({scene!r}, "gt", {out!r}, classes={classes!r}, overwrite=True, progress=False)
print(time.perf_counter() - t, path.stat().st_size, {rss})
"""


def run_child(scene: Path, out: Path, classes) -> tuple[float, int, float]:
    code = CHILD.format(scene=str(scene), out=str(out), classes=classes, rss=CHILD_PEAK_RSS)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, size, rss = res.stdout.split()
    return float(seconds), int(size), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default=str(HERE / "results" / "export.json"))
    args = ap.parse_args()
    from elegantviz.data.synthetic import synthesize_riverworld

    SCRATCH.mkdir(exist_ok=True)
    result: dict = {"chunk": args.chunk}
    for size in args.sizes:
        scene = SCRATCH / f"export-{size}.zarr"
        if not (scene / "zarr.json").is_file():
            t = time.perf_counter()
            synthesize_riverworld(scene, height=size, width=size, seed=7, tile=args.chunk, progress=False)
            result[f"{size}_synth_s"] = time.perf_counter() - t
        for kind, suffix, classes in (("cog", ".tif", None), ("water_polygons", ".gpkg", ["river", "pond"])):
            seconds, nbytes, rss = run_child(scene, SCRATCH / f"export-{size}{suffix}", classes)
            result[f"{size}_{kind}_s"] = seconds
            result[f"{size}_{kind}_MB"] = nbytes / 1e6
            result[f"{size}_{kind}_peak_rss_MB"] = rss
    report(result, args.out)


if __name__ == "__main__":
    main()
