"""Convert a large 4-band GeoTIFF into a scene store: throughput, peak RSS, pyramid time.

Compares against a plain rasterio windowed read of the same file (the floor for any
converter) and runs the conversion in a child process so its peak RSS is measured alone.

    python benchmarks/convert.py [--size 20000] [--out benchmarks/results/convert.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _report import CHILD_PEAK_RSS, report

import numpy as np

HERE = Path(__file__).resolve().parent
SCRATCH = HERE / "scratch"


def make_geotiff(path: Path, size: int, tile: int = 512) -> float:
    """A tiled, deflate-compressed 4-band uint8 GeoTIFF of smooth fields plus noise."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    started = time.perf_counter()
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint8", tiled=True, blockxsize=tile,
                   blockysize=tile, compress="deflate", crs="EPSG:32615", transform=from_origin(5e5, 4.5e6, 1, 1))
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                h, w = min(tile, size - y), min(tile, size - x)
                yy, xx = np.mgrid[y : y + h, x : x + w]
                base = 110 + 50 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
                block = base[None] + np.arange(4)[:, None, None] * 15 + rng.integers(0, 24, (4, h, w))
                dst.write(block.clip(0, 255).astype(np.uint8), window=Window(x, y, w, h))
    return time.perf_counter() - started


def plain_read(path: Path, tile: int = 512) -> float:
    import rasterio
    from rasterio.windows import Window

    started = time.perf_counter()
    with rasterio.open(path) as ds:
        for y in range(0, ds.height, tile):
            for x in range(0, ds.width, tile):
                ds.read(window=Window(x, y, min(tile, ds.width - x), min(tile, ds.height - y)))
    return time.perf_counter() - started


CHILD = """
import json, sys, time
from elegantviz.io.convert import convert_raster
t = time.perf_counter()
scene = convert_raster(sys.argv[1], sys.argv[2], overwrite=True, progress=False).scene
total = time.perf_counter() - t
levels = [scene.root[str(k)].attrs["elegantviz"]["write_seconds"] for k in range(scene.num_levels)]
print(json.dumps({"total_s": total, "level_s": levels, "peak_rss_mb": %s}))
""" % CHILD_PEAK_RSS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--out", default=str(HERE / "results" / "convert.json"))
    args = ap.parse_args()
    SCRATCH.mkdir(exist_ok=True)
    tif = SCRATCH / f"bench_{args.size}.tif"
    make_s = make_geotiff(tif, args.size) if not tif.exists() else None
    read_s = plain_read(tif)
    store = SCRATCH / f"bench_{args.size}.zarr"
    out = subprocess.run([sys.executable, "-c", CHILD, str(tif), str(store)], capture_output=True, text=True, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    peak_rss_mb = child["peak_rss_mb"]
    mpx = args.size * args.size / 1e6
    result = {
        "size_px": args.size,
        "bands": 4,
        "megapixels": mpx,
        "geotiff_bytes": tif.stat().st_size,
        "make_geotiff_s": make_s,
        "plain_rasterio_read_s": read_s,
        "plain_read_mpx_per_s": mpx / read_s,
        "convert_total_s": child["total_s"],
        "convert_mpx_per_s": mpx / child["total_s"],
        "convert_time_over_plain_read": child["total_s"] / read_s,
        "level0_s": child["level_s"][0],
        "level0_time_over_plain_read": child["level_s"][0] / read_s,
        "pyramid_s": sum(child["level_s"][1:]),
        "levels": len(child["level_s"]),
        "peak_rss_mb": peak_rss_mb,
        "peak_rss_under_1gb": peak_rss_mb < 1024,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
