"""Holistic vs sliced training of the same network on riverworld, at an equal budget.

Both runs see the same number of pixels per optimizer step and take the same number of steps:
holistic trains on whole scenes, sliced on random crops (``accumulate`` crops per step so the
pixel count matches) and predicts with sliding windows of the same crop size, as
crop-and-stitch pipelines do. Reported: mIoU and the river and pond IoU on held-out scenes,
where a crop cannot tell a river from a pond.

    python benchmarks/holistic_vs_sliced.py [--size 512] [--crop 128] [--iters 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--train-scenes", type=int, default=4)
    ap.add_argument("--test-scenes", type=int, default=2)
    ap.add_argument("--work", default=str(HERE / "scratch" / "hvs"))
    ap.add_argument("--out", default=str(HERE / "results" / "holistic_vs_sliced.json"))
    args = ap.parse_args()

    from elegantviz.config import load_config
    from elegantviz.data.synthetic import synthesize_riverworld
    from elegantviz.engine.evaluate import evaluate_scene
    from elegantviz.engine.predict import predict_scene
    from elegantviz.engine.train import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_paths = [synthesize_riverworld(work / f"train-{i}.zarr", height=args.size, seed=100 + i, overwrite=True,
                                         progress=False).url for i in range(args.train_scenes)]
    results: dict = {"size": args.size, "crop": args.crop, "iters": args.iters}
    for mode in ("holistic", "sliced"):
        cfg = load_config("riverworld-cpu")
        cfg.data.train, cfg.data.val, cfg.data.mode, cfg.data.crop_size = train_paths, [], mode, args.crop
        cfg.iters, cfg.ckpt_every, cfg.out_dir = args.iters, args.iters, str(work / f"run-{mode}")
        cfg.optim.accumulate = 1 if mode == "holistic" else (args.size // args.crop) ** 2
        started = time.perf_counter()
        ckpt = train(cfg, progress=True)
        train_s = time.perf_counter() - started
        scores = []
        for i in range(args.test_scenes):
            test = synthesize_riverworld(work / f"test-{mode}-{i}.zarr", height=args.size, seed=900 + i,
                                         overwrite=True, progress=False).url
            predict_scene(ckpt, test, mode=mode, crop=args.crop, progress=False)
            scores.append(evaluate_scene(test, write_error_map=False, progress=False))
        mean = lambda key: sum((s["per_class"][key]["iou"] or 0.0) for s in scores) / len(scores)  # noqa: E731
        results[mode] = {"train_s": train_s, "miou": sum(s["miou"] for s in scores) / len(scores),
                         "river_iou": mean("river"), "pond_iou": mean("pond"),
                         "river_as_pond_px": sum(s["pairs"][0]["pixels"] for s in scores),
                         "pond_as_river_px": sum(s["pairs"][1]["pixels"] for s in scores)}
        print(mode, json.dumps(results[mode]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
