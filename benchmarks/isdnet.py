"""ISDNet against ElegantSeg, in one run: speed and memory of whole-scene prediction, and riverworld
accuracy at an equal training budget.

Speed: each model predicts one 2448 x 2448 scene (DeepGlobe: 3 bands, 7 classes) and one
6800 x 7200 scene (FBP: 4 bands, 24 classes) in one whole-image pass (``predict_whole``, the
path ``elegantviz predict`` runs), each in a child process of its own: seconds, peak RSS (the
child's VmHWM) and achieved GFLOP/s (the forward's FLOPs from torch's counter) against this
machine's fp32 GEMM peak measured here. Models ``--extrapolate`` lists (ElegantSeg-S at
6800 x 7200 would take ~30 GB in one pass, or ~20 min in halo tiles here) are extrapolated from
2448 x 2448 linearly in pixels and marked so.

Riverworld: both CPU presets trained with the same recipe on the same scenes for the same number
of steps (``isdnet-riverworld`` vs ``riverworld-cpu``: 16 scenes of 512 px, 2000 AdamW steps),
then `elegantviz compare` on the held-out 1024 px scenes of benchmarks/holistic_vs_sliced.py
(seeds 900, 901). ElegantSeg's arm is the model shipped in elegantviz/weights, which that very
recipe trained (``elegantviz demo --train``); ISDNet's is trained here unless ``--isdnet CK``.

    python benchmarks/isdnet.py                      # both parts
    python benchmarks/isdnet.py --part speed
    python benchmarks/isdnet.py --part riverworld --isdnet runs/isdnet-riverworld/best.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _report import CHILD_PEAK_RSS, models_picture
from predict import gemm_peak_gflops

HERE = Path(__file__).resolve().parent
SCENES = {"2448x2448": (2448, 2448, 3, 7), "6800x7200": (6800, 7200, 4, 24)}  # h, w, bands, classes
MODELS = ("isdnet", "isdnet-cpu", "elegantseg-s", "elegantseg-cpu")

CHILD = r"""
import json, sys, time, torch
from elegantviz.inference.whole import predict_whole
from elegantviz.models.registry import build_model
name, h, w, bands, classes = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
model = build_model(name, classes, bands).eval()
x = torch.randn(bands, h, w).numpy()
t = time.perf_counter()
predict_whole(model, x, torch.device("cpu"))
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_gb": %s / 1024}))
""" % CHILD_PEAK_RSS


def forward_gflop(name: str, h: int, w: int, bands: int, classes: int) -> float:
    import torch

    from elegantviz.models.registry import build_model, count_flops

    kwargs = {"depthwise_impl": "direct"} if name.startswith("elegantseg") else {}
    with torch.device("meta"):
        model = build_model(name, classes, bands, **kwargs).eval()
        return count_flops(model, (h, w), bands) / 1e9


def speed(extrapolate: list[str]) -> dict:
    peak = gemm_peak_gflops()
    rows = []
    for scene, (h, w, bands, classes) in SCENES.items():
        for name in MODELS:
            gflop = forward_gflop(name, h, w, bands, classes)
            row = {"model": name, "scene": scene, "bands": bands, "classes": classes, "gflop": gflop}
            if f"{name}@{scene}" in extrapolate:
                small = next(r for r in rows if r["model"] == name and r["scene"] == "2448x2448")
                k = h * w / 2448**2
                row.update(seconds=small["seconds"] * k, peak_rss_gb=small["peak_rss_gb"] * k,
                           extrapolated="linear in pixels from 2448x2448")
            else:
                out = subprocess.run([sys.executable, "-c", CHILD, name, str(h), str(w), str(bands), str(classes)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError(f"{name} at {scene}: {out.stderr[-1500:]}")
                row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            row["gflops_per_s"] = gflop / row["seconds"]
            row["share_of_gemm_peak"] = row["gflops_per_s"] / peak
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"fp32_gemm_peak_gflops_per_s": peak, "rows": rows}


def riverworld(work: Path, isdnet: str | None, elegantseg: str | None, iters: int) -> dict:
    from elegantviz.config import load_config
    from elegantviz.data.synthetic import synthesize_riverworld
    from elegantviz.demo import VAL_SEED
    from elegantviz.engine.compare import ModelSpec, compare_models
    from elegantviz.engine.train import train
    from elegantviz.weights import shipped_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    tests = [synthesize_riverworld(work / f"test-{i}.zarr", height=1024, seed=900 + i, overwrite=True,
                                   progress=False).url for i in range(2)]
    trained_s = None
    if isdnet is None:
        import time

        paths = [synthesize_riverworld(work / f"train-{i}.zarr", height=512, seed=i, overwrite=True,
                                       progress=False).url for i in range(16)]
        val = synthesize_riverworld(work / "val.zarr", height=512, seed=VAL_SEED, overwrite=True, progress=False).url
        cfg = load_config("isdnet-riverworld")
        cfg.data.train, cfg.data.val, cfg.iters, cfg.out_dir = paths, [val], iters, str(work / "run-isdnet-cpu")
        started = time.perf_counter()
        isdnet = str(train(cfg, progress=True))
        trained_s = time.perf_counter() - started
    specs = [ModelSpec("elegantseg_cpu", str(elegantseg or shipped_checkpoint())), ModelSpec("isdnet_cpu", isdnet)]
    result = compare_models(specs, tests, pairs=["river:pond", "pond:river"], device="cpu", progress=True)
    result["isdnet_train_s"] = trained_s
    models_picture(tests[0], [s.name for s in specs], HERE / "results" / "isdnet_riverworld.png")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "speed", "riverworld"], default="all")
    ap.add_argument("--extrapolate", nargs="*", default=["elegantseg-s@6800x7200"], metavar="MODEL@SCENE")
    ap.add_argument("--isdnet", help="a trained isdnet-riverworld checkpoint (default: train one here)")
    ap.add_argument("--elegantseg", help="an ElegantSeg checkpoint (default: the shipped riverworld-cpu model)")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--work", default=str(HERE / "scratch" / "isdnet"))
    ap.add_argument("--out", default=str(HERE / "results" / "isdnet.json"))
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}  # each part kept when the other is rerun
    if args.part in ("all", "speed"):
        result["speed"] = speed(args.extrapolate)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    if args.part in ("all", "riverworld"):
        from elegantviz.engine.compare import format_table

        result["riverworld"] = riverworld(Path(args.work), args.isdnet, args.elegantseg, args.iters)
        print(format_table(result["riverworld"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
