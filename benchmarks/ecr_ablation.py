"""Does the model learn, and what does ECR add? Short holistic training runs of the CPU preset
on riverworld with ECR in its projected form, in the paper's form (Algorithm 1 as written) and
off, each reporting the main and the auxiliary head's per-class IoU on a training scene and on a
held-out scene, and the activation scale along the MLK -> ECR path (mean |x|, forward hooks).

    python benchmarks/ecr_ablation.py [--size 256] [--iters 200] [--water 16,28]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = {"projected": {"ecr_form": "projected"}, "paper": {"ecr_form": "paper"}, "off": {"use_ecr": False}}


def _ious(logits, labels, k):
    import dask.array as da

    from elegantviz.analysis.metrics import confusion_matrix, per_class_iou

    pred = logits.argmax(1)[0].numpy()
    cm = confusion_matrix(da.from_array(labels), da.from_array(pred), k, progress=False)
    return [None if np.isnan(v) else round(float(v), 3) for v in per_class_iou(cm)]


def run(variant: str, paths: list[str], held_out: str, args) -> dict:
    import torch

    from elegantviz.config import config_from_dict
    from elegantviz.engine.train import Trainer
    from elegantviz.io.store import open_scene

    cfg = config_from_dict({
        "data": {"train": paths, "val": []},
        "model": {"name": "elegantseg-cpu", "overrides": VARIANTS[variant]},
        "optim": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup": "linear",
                  "warmup_iters": max(1, args.iters // 10), "warmup_lr": 2e-4, "head_lr_mult": 1, "grad_clip": 5.0},
        "memory": {"policy": "none"}, "iters": args.iters, "val_every": 10**9, "ckpt_every": 10**9,
        "log_every": 10**9, "out_dir": str(Path(args.work) / f"run-{variant}"), "seed": args.seed})
    trainer = Trainer(cfg, progress=False)
    model = trainer.model
    scale: dict = {}

    def tap(name):
        def hook(_m, inp, out):
            out = out[0] if isinstance(out, tuple) else out
            scale[name] = {"in": float(inp[0].detach().abs().mean()), "out": float(out.detach().abs().mean()),
                           "out_max": float(out.detach().abs().max())}
        return hook

    parts = {"mlk": model.context, "mlk_unit": model.context.units[0]}
    if model.ecr is not None:
        parts["ecr"] = model.ecr
    hooks = [m.register_forward_hook(tap(n)) for n, m in parts.items()]
    first = trainer.train_scenes[0]
    img, _ = trainer.norm.apply(np.asarray(first.image(0).compute()), first.nodata)
    with torch.no_grad():  # the initial scale, with batch statistics as in training
        model.train()(torch.from_numpy(img)[None])
    at_init = {k: dict(v) for k, v in scale.items()}
    started = time.perf_counter()
    while trainer.iteration < cfg.iters:
        trainer.step()
    train_s = time.perf_counter() - started
    model.eval()
    out: dict = {"train_s": round(train_s, 1), "scale_at_init": at_init}
    k = trainer.table.num_classes
    for name, scene in (("train", trainer.train_scenes[0]), ("held_out", open_scene(held_out))):
        img, _ = trainer.norm.apply(np.asarray(scene.image(0).compute()), scene.nodata)
        labels = np.asarray(scene.label("gt", 0).compute())
        with torch.no_grad():
            o = model(torch.from_numpy(img)[None])
        out[name] = {"main": _ious(o.logits, labels, k), "aux": _ious(o.aux_logits, labels, k)}
    out["scale_trained"] = scale
    if model.ecr is not None and model.ecr.form == "projected":
        out["ecr_gamma_mean_abs"] = float(model.ecr.gamma.detach().abs().mean())
    for h in hooks:
        h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--water", default="16,28", help="water width range (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--work", default=str(HERE / "scratch" / "ecr"))
    ap.add_argument("--out", default=str(HERE / "results" / "ecr_ablation.json"))
    args = ap.parse_args()
    from elegantviz.data.synthetic import synthesize_riverworld

    lo, hi = map(float, args.water.split(","))
    scenes = [synthesize_riverworld(Path(args.work) / f"s{i}.zarr", height=args.size, seed=100 + i, tile=256,
                                    overwrite=True, progress=False, water_width=(lo, hi)).url
              for i in range(args.scenes + 1)]
    results = {"args": vars(args), "classes": ["cropland", "forest", "built-up", "river", "pond"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for v in args.variants.split(","):
        results[v] = run(v, scenes[:-1], scenes[-1], args)
        print(v, json.dumps(results[v]))
        Path(args.out).write_text(json.dumps(results, indent=2))  # after each variant: a cut run keeps its figures


if __name__ == "__main__":
    main()
