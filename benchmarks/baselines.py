"""GLNet and FCtL against ElegantSeg: prediction speed and memory, and riverworld accuracy at an
equal training budget.

Speed: each model (random init: the cost does not depend on the weights) predicts one scene in a
child process of its own, the path ``elegantviz predict`` runs (``predict_patches`` for the patch
models, ``predict_whole`` for ElegantSeg, ``predict_halo_tiles`` for ElegantSeg in 1024 px halo
tiles): seconds and peak RSS (the child's VmHWM), with the forward's FLOPs from torch's counter.
Measured on 1024 x 1024 and 2448 x 2448 scenes (3 bands, 7 classes: DeepGlobe). The
6800 x 7200 scene (FBP: 4 bands, 24 classes) is extrapolated, and marked so: seconds as
a + b * FLOPs (1024 px is 3 x 3 patches of 508, 2448 px 6 x 6, 6800 x 7200 15 x 16; GLNet's
count there includes its second local pass, as its 240 patches' ps3 would take 7.9 GB); peak
RSS as a + b * pixels, plus the patch models' larger class canvases (24 classes, not 7).
``--measure`` MODEL@SCENE measures one of those instead (GLNet's full-size 6800 x 7200 pass is
about 138 TFLOPs, FCtL's about 242: the better part of an hour each on this 2-core machine).

Riverworld (``--part riverworld``): the CPU presets trained from their shipped stage configs
on the riverworld demo scenes, then `elegantviz compare` on the held-out 1024 px scenes of
benchmarks/holistic_vs_sliced.py (seeds 900, 901) beside the shipped ElegantSeg-cpu model.

    python benchmarks/baselines.py --part speed
    python benchmarks/baselines.py --part riverworld --glnet runs/glnet-3/best.pt --fctl runs/fctl-4/best.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _report import CHILD_PEAK_RSS, models_picture

HERE = Path(__file__).resolve().parent
MEASURED = {"1024x1024": (1024, 1024, 3, 7), "2448x2448": (2448, 2448, 3, 7)}  # h, w, bands, classes
TARGET = ("6800x7200", (6800, 7200, 4, 24))
MODELS = ("glnet", "fctl", "glnet-cpu", "fctl-cpu", "elegantseg-s")  # "elegantseg-s@tiled": halo tiles of 1024

CHILD = r"""
import json, sys, tempfile, time, torch, zarr
from elegantviz.models.registry import build_model
spec, h, w, bands, classes = sys.argv[1], *map(int, sys.argv[2:6])
name, _, how = spec.partition("@")
torch.manual_seed(0)
model = build_model(name, classes, bands).eval()
x = torch.randn(bands, h, w).numpy()
dev = torch.device("cpu")
t = time.perf_counter()
if getattr(model, "patch_based", False):
    from elegantviz.inference.patches import predict_patches
    predict_patches(model, x, dev)
elif how == "tiled":
    from elegantviz.engine.predict import cache_map_array, map_tile
    from elegantviz.inference.tiles import predict_halo_tiles
    group = zarr.open_group(tempfile.mkdtemp(prefix="baselines-"), mode="w")
    chunk = map_tile(1024, model.output_stride)
    predict_halo_tiles(model, x, dev, tile=1024, maps_to=lambda key, shape: cache_map_array(group, key, shape, chunk))
else:
    from elegantviz.inference.whole import predict_whole
    predict_whole(model, x, dev)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_gb": %s / 1024}))
""" % CHILD_PEAK_RSS


def forward_gflop(spec: str, h: int, w: int, bands: int, classes: int) -> float:
    import torch

    from elegantviz.models.registry import build_model, count_flops

    name = spec.partition("@")[0]
    kwargs = {"depthwise_impl": "direct"} if name.startswith("elegantseg") else {}
    with torch.device("meta"):
        model = build_model(name, classes, bands, **kwargs).eval()
        return count_flops(model, (h, w), bands) / 1e9


def patches(spec: str, h: int, w: int) -> int | None:
    """How many patches a patch model runs on an h x w scene (None for a whole-image model)."""
    import torch

    from elegantviz.models.patch_grid import PatchGrid
    from elegantviz.models.registry import build_model

    with torch.device("meta"):
        model = build_model(spec.partition("@")[0], 7, 3)
    return len(PatchGrid(h, w, model.patch_size)) if getattr(model, "patch_based", False) else None


def measure(spec: str, h: int, w: int, bands: int, classes: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, spec, str(h), str(w), str(bands), str(classes)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{spec} at {h}x{w}: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(x0: float, y0: float, x1: float, y1: float, x: float) -> float:
    return y0 + (y1 - y0) / (x1 - x0) * (x - x0)


def speed(models: list[str], measure_also: list[str]) -> dict:
    rows = []
    for spec in models:
        mine = []
        for scene, (h, w, bands, classes) in MEASURED.items():
            row = {"model": spec, "scene": scene, "patches": patches(spec, h, w),
                   "gflop": forward_gflop(spec, h, w, bands, classes), **measure(spec, h, w, bands, classes)}
            mine.append(row)
            print(json.dumps(row), flush=True)
        scene, (h, w, bands, classes) = TARGET
        row = {"model": spec, "scene": scene, "patches": patches(spec, h, w),
               "gflop": forward_gflop(spec, h, w, bands, classes)}
        if f"{spec}@{scene}" in measure_also:
            row.update(measure(spec, h, w, bands, classes))
        else:
            (a, b), px = mine, h * w
            # a patch model holds K x H x W float32 logit canvases (GLNet a second one for its local
            # view): at 24 classes, not the measured 7, each is 17 x 4 bytes a pixel larger
            canvases = (2 if spec.startswith("glnet") else 1) if row["patches"] else 0
            extra = canvases * (classes - 7) * 4 * px / 2**30
            row.update(seconds=_line(a["gflop"], a["seconds"], b["gflop"], b["seconds"], row["gflop"]),
                       peak_rss_gb=_line(1024**2, a["peak_rss_gb"], 2448**2, b["peak_rss_gb"], px) + extra,
                       extrapolated=f"seconds linear in FLOPs, peak RSS linear in pixels from 1024^2 and 2448^2 "
                                    f"(+ {extra:.1f} GB for {classes}-class canvases)")
        mine.append(row)
        print(json.dumps(row), flush=True)
        rows += mine
    return {"rows": rows}


def riverworld(work: Path, checkpoints: dict[str, str], elegantseg: str | None) -> dict:
    from elegantviz.data.synthetic import synthesize_riverworld
    from elegantviz.engine.compare import ModelSpec, compare_models
    from elegantviz.weights import shipped_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    tests = [synthesize_riverworld(work / f"test-{i}.zarr", height=1024, seed=900 + i, overwrite=True,
                                   progress=False).url for i in range(2)]
    specs = [ModelSpec("elegantseg_cpu", str(elegantseg or shipped_checkpoint()))]
    specs += [ModelSpec(name, ck) for name, ck in checkpoints.items()]
    result = compare_models(specs, tests, pairs=["river:pond", "pond:river"], device="cpu", progress=True)
    models_picture(tests[0], [s.name for s in specs], HERE / "results" / "baselines_riverworld.png", errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["speed", "riverworld"], default="speed")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--measure", nargs="*", default=[], metavar="MODEL@SCENE", help="measure, not extrapolate")
    ap.add_argument("--glnet", help="a trained glnet-cpu checkpoint (its last stage)")
    ap.add_argument("--fctl", help="a trained fctl-cpu checkpoint (its last stage)")
    ap.add_argument("--elegantseg", help="an ElegantSeg checkpoint (default: the shipped riverworld-cpu model)")
    ap.add_argument("--work", default=str(HERE / "scratch" / "baselines"))
    ap.add_argument("--out", default=str(HERE / "results" / "baselines.json"))
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}  # each part kept when the other is rerun
    if args.part == "speed":
        result["speed"] = speed(args.models, args.measure)
    else:
        from elegantviz.engine.compare import format_table

        cks = {k: v for k, v in (("glnet_cpu", args.glnet), ("fctl_cpu", args.fctl)) if v}
        result["riverworld"] = riverworld(Path(args.work), cks, args.elegantseg)
        print(format_table(result["riverworld"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
