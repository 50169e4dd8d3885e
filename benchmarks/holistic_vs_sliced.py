"""The thesis, measured: holistic vs sliced training of the same network on riverworld, at an
equal training budget.

Both arms train on the same scenes with the same config, for the same number of optimizer steps,
seeing the same number of pixels per step: holistic takes one whole scene a step, sliced
``(size / crop)^2`` random crops a step (gradient accumulation) and predicts with sliding windows
of the crop size, as crop-and-stitch pipelines do. Held-out scenes are twice the training size
(1024 px by default), so rivers run far longer than a crop and many ponds are as wide as one.
Reported per arm: river and pond IoU, mIoU and the river<->pond confused pixels, plus one
picture (image, ground truth, holistic, sliced) of the first test scene.

    python benchmarks/holistic_vs_sliced.py                     # both arms from scratch
    python benchmarks/holistic_vs_sliced.py --holistic demo/run/best.pt --scenes demo  # reuse a run

``--holistic`` reuses a holistic checkpoint trained on ``--scenes``' train-*.zarr (as
``elegantviz demo --train`` writes them), so only the sliced arm is trained here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _report import models_picture

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="training scene side (px)")
    ap.add_argument("--crop", type=int, default=256, help="sliced crop side (px)")
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--train-scenes", type=int, default=6)
    ap.add_argument("--test-scenes", type=int, default=2)
    ap.add_argument("--scenes", help="folder with train-*.zarr to train on (default: synthesize in --work)")
    ap.add_argument("--holistic", help="a holistic checkpoint trained on those scenes: skip that arm's training")
    ap.add_argument("--sliced", help="a sliced checkpoint trained on those scenes: skip that arm's training")
    ap.add_argument("--global-path", default="none", choices=["none", "sweep", "coarse"],
                    help="ElegantSeg's global path for both arms (models/scan.py, models/coarse.py)")
    ap.add_argument("--finetune-iters", type=int, default=0,
                    help="then train each arm this many more steps on larger scenes, from its checkpoint")
    ap.add_argument("--finetune-size", type=int, default=1024, help="side of the fine-tuning scenes (px)")
    ap.add_argument("--finetune-scenes", type=int, default=8)
    ap.add_argument("--finetune-path", default="coarse", choices=["none", "sweep", "coarse"],
                    help="the global path added for fine-tuning (zero residual at its start)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--finetune-freeze", action="store_true", help="fine-tune only what follows the backbone")
    ap.add_argument("--class-weights", type=float, nargs="+", help="loss weight per class while fine-tuning")
    ap.add_argument("--work", default=str(HERE / "scratch" / "hvs"))
    ap.add_argument("--out", default=str(HERE / "results" / "holistic_vs_sliced.json"))
    ap.add_argument("--picture", default=str(HERE / "results" / "holistic_vs_sliced.png"))
    args = ap.parse_args()

    from elegantviz.config import load_config
    from elegantviz.data.synthetic import synthesize_riverworld
    from elegantviz.engine.evaluate import evaluate_scene
    from elegantviz.engine.predict import predict_scene
    from elegantviz.engine.train import train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.scenes:
        train_paths = sorted(str(p) for p in Path(args.scenes).glob("train-*.zarr"))[: args.train_scenes]
    else:
        train_paths = [synthesize_riverworld(work / f"train-{i}.zarr", height=args.size, seed=i, overwrite=True,
                                             progress=False).url for i in range(args.train_scenes)]
    tests = [synthesize_riverworld(work / f"test-{i}.zarr", height=2 * args.size, seed=900 + i, overwrite=True,
                                   progress=False) for i in range(args.test_scenes)]
    big = [synthesize_riverworld(work / f"big-{i}.zarr", height=args.finetune_size, seed=1000 + i, overwrite=True,
                                 progress=False).url for i in range(args.finetune_scenes if args.finetune_iters else 0)]
    results: dict = {"train_size": args.size, "test_size": 2 * args.size, "crop": args.crop, "iters": args.iters,
                     "train_scenes": len(train_paths), "test_scenes": len(tests),
                     "global_path": args.global_path}
    if args.finetune_iters:
        results["finetune"] = {"size": args.finetune_size, "scenes": len(big), "iters": args.finetune_iters,
                               "global_path": args.finetune_path, "lr": args.finetune_lr, "seeds": "1000..",
                               "freeze_backbone": args.finetune_freeze, "class_weights": args.class_weights}

    def run(mode: str, scenes: list[str], size: int, iters: int, path: str, name: str, base: str | None = None):
        cfg = load_config("riverworld-cpu")
        cfg.data.train, cfg.data.val, cfg.data.mode, cfg.data.crop_size = scenes, [], mode, args.crop
        cfg.model.overrides = dict(cfg.model.overrides, global_path=path)
        cfg.iters, cfg.ckpt_every, cfg.out_dir = iters, 100, str(work / name)
        cfg.optim.accumulate = 1 if mode == "holistic" else (size // args.crop) ** 2  # the same pixels a step
        if base:
            cfg.model.init = {"base": base}
            cfg.model.overrides["freeze_backbone"] = args.finetune_freeze
            cfg.loss.class_weights = args.class_weights
            cfg.optim.lr, cfg.optim.warmup_iters, cfg.optim.warmup_lr = args.finetune_lr, 20, args.finetune_lr / 10
        return train(cfg, progress=True, overwrite=True)

    for mode in ("holistic", "sliced"):
        started = time.perf_counter()
        reused = getattr(args, mode)
        ckpt = Path(reused) if reused else run(mode, train_paths, args.size, args.iters, args.global_path,
                                               f"run-{mode}")
        if args.finetune_iters:
            ckpt = run(mode, big, args.finetune_size, args.finetune_iters, args.finetune_path,
                       f"run-{mode}-finetune", base=str(ckpt))
        train_s = time.perf_counter() - started
        scores = []
        for t in tests:
            predict_scene(ckpt, t.url, mode=mode, name=mode, crop=args.crop, progress=False)
            scores.append(evaluate_scene(t.url, pred=mode, write_error_map=False, progress=False))
        iou = lambda key: sum((s["per_class"][key]["iou"] or 0.0) for s in scores) / len(scores)  # noqa: E731
        pair = lambda k: sum(s["pairs"][k]["pixels"] for s in scores)  # noqa: E731
        results[mode] = {"checkpoint": str(ckpt), "train_s": train_s,
                         "miou": sum(s["miou"] for s in scores) / len(scores),
                         "river_iou": iou("river"), "pond_iou": iou("pond"),
                         "river_as_pond_px": pair(0), "pond_as_river_px": pair(1),
                         "river_pond_confused_px": pair(0) + pair(1), "per_scene": [_water(s) for s in scores]}
        if big:  # does the arm fit its own training scenes? (a river/pond error here is not one of generalising)
            predict_scene(ckpt, big[0], mode=mode, name=mode, crop=args.crop, progress=False)
            fit = evaluate_scene(big[0], pred=mode, write_error_map=False, progress=False)
            results[mode]["train_scene"] = {"scene": big[0], **_water(fit)}
        print(mode, json.dumps(results[mode]), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))  # each arm as soon as it is done
    h, s = results["holistic"]["river_pond_confused_px"], results["sliced"]["river_pond_confused_px"]
    results["confusion_ratio"] = h / s if s else None
    print(f"river<->pond confused pixels: holistic {h:,d}, sliced {s:,d} (ratio {results['confusion_ratio']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    models_picture(tests[0].url, ["holistic", "sliced"], Path(args.picture))
    print("wrote", args.out, "and", args.picture)


def _water(report: dict) -> dict:
    """A scene report's river and pond IoU and river<->pond confused pixels."""
    return {"river_iou": report["per_class"]["river"]["iou"], "pond_iou": report["per_class"]["pond"]["iou"],
            "river_pond_confused_px": sum(p["pixels"] for p in report["pairs"][:2])}


if __name__ == "__main__":
    main()
