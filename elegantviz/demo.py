"""`elegantviz demo`: the main job end to end on synthetic riverworld scenes, no network needed.

1. synthesize a held-out scene (and, with ``--train``, training scenes: one as a GeoTIFF pair
   converted with `convert`, the path real data takes, the others straight into scene stores);
2. with ``--train``, train the CPU preset holistically (whole scenes, the `riverworld-cpu`
   config); otherwise use the riverworld model shipped in the package;
3. predict the held-out scene with the model's evidence;
4. evaluate it (river/pond confusions) and say where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

from elegantviz.config import load_config
from elegantviz.data.synthetic import synthesize_riverworld
from elegantviz.io.convert import convert_raster
from elegantviz.io.info import format_info, scene_info
from elegantviz.weights import shipped_checkpoint


# Training scenes take seeds seed .. seed + n - 1; validation and test stay clear of any such range.
VAL_SEED, TEST_SEED = 10_000, 20_000


def run_demo(workdir: Path, size: int = 512, seed: int = 0, iters: int | None = None, progress: bool = True,
             train: bool = False, train_scenes: int = 16) -> dict:
    """The shipped model on a held-out scene, or with ``train`` the whole job from scratch."""
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps = 4 if train else 3
    print(f"[1/{steps}] synthesizing riverworld scenes of {size} x {size} px in {workdir}/")
    test = synthesize_riverworld(workdir / "test.zarr", height=2 * size, seed=seed + TEST_SEED, overwrite=True,
                                 progress=progress)
    if train:
        tif = workdir / "train-0.tif"
        image, mask = synthesize_riverworld(tif, height=size, seed=seed, overwrite=True, progress=progress)
        paths = [convert_raster(image, workdir / "train-0.zarr", mask=mask, classes="riverworld", overwrite=True,
                                progress=progress).scene.url]
        for i in range(1, train_scenes):
            paths.append(synthesize_riverworld(workdir / f"train-{i}.zarr", height=size, seed=seed + i,
                                               overwrite=True, progress=progress).url)
        val = synthesize_riverworld(workdir / "val.zarr", height=size, seed=seed + VAL_SEED, overwrite=True,
                                    progress=progress).url
    print(format_info(scene_info(test, progress=False)))

    from elegantviz.engine.evaluate import evaluate_scene, format_report, write_report
    from elegantviz.engine.predict import predict_scene
    from elegantviz.engine.train import train as train_model

    step = 2
    if train:
        cfg = load_config("riverworld-cpu")
        cfg.data.train, cfg.data.val, cfg.out_dir = paths, [val], str(workdir / "run")
        if iters:
            cfg.iters = iters
        print(f"[2/{steps}] training {cfg.model.name} holistically on {len(paths)} whole scenes for {cfg.iters} "
              "iterations")
        best = train_model(cfg, progress=progress, overwrite=True)  # the demo remakes its own folder
        step = 3
    else:
        best = shipped_checkpoint()
        print(f"      using the shipped model {best} (`elegantviz demo --train` trains one from scratch)")
    print(f"[{step}/{steps}] predicting the held-out {2 * size} x {2 * size} scene in one piece: {test.url}")
    summary = predict_scene(best, test.url, progress=progress)
    print(f"      {summary['total_s']:.1f} s; wrote {', '.join(summary['written'])}")
    print(f"[{step + 1}/{steps}] evaluating")
    report = evaluate_scene(test.url, progress=progress)
    js, png = write_report(report, workdir / "evaluation")
    print(format_report(report))
    print(f"\nDone in {time.perf_counter() - started:.0f} s.")
    print(f"  checkpoint  {best}")
    print(f"  scene store {Path(test.url).resolve()}")
    print(f"  report      {js.resolve()}  and  {png.resolve()}")
    print(f"  look at it  elegantviz view {test.url}")
    return {"checkpoint": best, "scene": test.url, "report": js, "miou": report["miou"]}
