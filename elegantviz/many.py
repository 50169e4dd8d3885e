"""The command line over a collection: `convert FOLDER OUT`, and `convert|predict|evaluate` with
``--scheduler ADDRESS`` or ``--workers N`` (see :mod:`elegantviz.engine.collection`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from elegantviz.errors import InputError
from elegantviz.values import at_least


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run one task per scene on this dask.distributed scheduler (tcp://host:8786)")
    g.add_argument("--workers", type=at_least(1, 512), metavar="N",
                   help="run one task per scene on a local dask cluster of N one-thread worker processes")


def on_cluster(args: argparse.Namespace) -> bool:
    return args.scheduler is not None or args.workers is not None


def absolute(path: str) -> str:
    """A worker runs in its own folder: a local path goes to it whole (a URL as it is)."""
    return path if "://" in str(path) else str(Path(path).resolve())


def stores(paths: list[str]) -> list[str]:
    """The scene stores given, whole; a local one that is not there is refused before a cluster
    starts (a missing scene is a typo, not a failure to report at the end)."""
    missing = [p for p in paths if "://" not in str(p) and not Path(p).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}: no such scene store{more}")
    whole = [absolute(p) for p in paths]
    twice = next((p for i, p in enumerate(whole) if p in whole[:i]), None)
    if twice is not None:  # two tasks would write one store at once
        raise InputError(f"{twice}: given twice")
    return whole


def _check_gpus(client, device: str) -> dict | None:
    """Tasks on a GPU ask for the workers' GPU resource; a cluster without one is refused (its
    tasks would wait forever), and so is a local cluster, whose workers would share one GPU."""
    if not device.startswith("cuda"):
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    if not any(w.get("resources", {}).get("GPU") for w in workers):
        raise InputError(f"--device {device}: no worker of this cluster declares a GPU; start one worker per GPU "
                         "with `CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1 --resources GPU=1`")
    return {"GPU": 1}


def predict_many(args: argparse.Namespace, options: dict) -> None:
    from elegantviz.engine.checkpoints import load_model
    from elegantviz.engine.collection import cluster_client, predict_task, report, run_scenes
    from elegantviz.engine.predict import prediction_done

    if args.progress_json or args.stdin_cancel:
        raise InputError("--progress-json and --stdin-cancel follow one process; not with --scheduler or --workers")
    if args.workers is not None and options["device"].startswith("cuda"):
        raise InputError("--workers starts CPU workers; for GPUs start one dask worker per GPU and pass --scheduler")
    load_model(args.checkpoint, "cpu")  # a bad checkpoint is one error here, not one per scene
    scenes, checkpoint = stores(args.scenes), absolute(args.checkpoint)
    with cluster_client(args.scheduler, args.workers) as client:
        outcomes = run_scenes(predict_task, scenes, (checkpoint, options), client=client,
                              done=lambda s: prediction_done(s, checkpoint, **options),
                              resources=_check_gpus(client, options["device"]), progress=not args.quiet,
                              what="predict")
    for o in outcomes:
        if o.result:
            print(f"{o.scene}: {o.result['mode']} prediction in {o.result['total_s']:.1f} s"
                  f"{' (resumed)' if o.result['resumed'] else ''}; wrote {', '.join(o.result['written'])}")
    report(outcomes, "predict")


def convert_folder(args: argparse.Namespace) -> None:
    """`convert RASTERS/ OUT/`: every raster of the folder into OUT/<stem>.zarr (a folder or a
    URL), with ``<stem>_mask.<ext>`` as its labels/gt when there is one."""
    from elegantviz.engine.collection import (cluster_client, convert_task, folder_rasters, report, run_scenes,
                                              store_done, store_for)

    for option, given in (("--band", args.band), ("--mask", args.mask)):
        if given:
            raise InputError(f"{option} is for one raster; a folder pairs each image with its <stem>_mask file")
    if "://" not in args.out and Path(args.out).is_file():
        raise InputError(f"{args.out}: is a file; converting a folder needs a folder (or URL) for the stores")
    sources, out = [absolute(p) for p in folder_rasters(Path(args.src))], absolute(args.out)
    options = {"bands": args.bands, "band_names": args.band_names, "classes": args.classes, "strict": args.strict,
               "nodata": args.nodata, "tile": args.chunk, "overwrite": args.overwrite}
    if "://" not in out:
        Path(out).mkdir(parents=True, exist_ok=True)
    done = None if args.overwrite else (lambda s: store_done(store_for(s, out)))
    with cluster_client(args.scheduler, args.workers) as client:
        outcomes = run_scenes(convert_task, sources, (out, options), client=client, done=done,
                              progress=not args.quiet, what="convert")
    for o in outcomes:
        if o.result:
            mask = f" with labels/gt from {o.result['mask']}" if o.result["mask"] else ""
            print(f"{o.scene} -> {o.result['scene']} ({' x '.join(map(str, o.result['shape']))}){mask}")
    report(outcomes, "convert")


def evaluate_many(args: argparse.Namespace, options: dict) -> None:
    from elegantviz.engine.collection import cluster_client, evaluate_task, report, run_scenes
    from elegantviz.engine.evaluate import format_report, report_folders, write_report

    scenes = stores(args.scenes)
    outs = dict(zip(scenes, report_folders(scenes, args.out, args.overwrite)))
    with cluster_client(args.scheduler, args.workers) as client:
        outcomes = run_scenes(evaluate_task, scenes, (options,), client=client, progress=not args.quiet,
                              what="evaluate")
    reports = []
    for o in outcomes:
        if o.result:
            js, _ = write_report(o.result, outs[o.scene])
            print(format_report(o.result))
            print(f"report: {js}")
            reports.append(o.result)
    write_dataset(reports, args.out)
    report(outcomes, "evaluate", retry="mend them and rerun with --overwrite")


def write_dataset(reports: list[dict], out_dir: str) -> None:
    """The dataset-level report of several scenes, OUT/report.json, printed."""
    from elegantviz.engine.evaluate import dataset_report, format_report, write_report

    if len(reports) < 2:
        return
    total = dataset_report(reports)
    js, png = write_report(total, out_dir)
    print(format_report(total))
    print(f"dataset report ({len(reports)} scenes, confusion matrices summed): {js}  figure: {png}")
