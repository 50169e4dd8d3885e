"""`elegantviz evaluate`: compare labels/pred with labels/gt over whole scenes, block by block.

Writes a JSON report (metrics, confusion matrix, confusion-pair regions) and a confusion-matrix
PNG. With the error map it also stores ``labels/error`` (``error_<pred>`` for other labels),
with the pairs and regions in its attributes, and the regions file beside the store
(``elegantviz.analysis.regions.regions_path``), which the napari error navigator loads by itself.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from elegantviz.analysis.boundaries import boundary_fscore
from elegantviz.analysis.errors import error_map, pair_regions, parse_pairs
from elegantviz.analysis.metrics import check_convention, confusion_matrix, summarize
from elegantviz.analysis.regions import parse_regions, regions_path, save_regions
from elegantviz.errors import ElegantvizError, InputError, writing
from elegantviz.io.lock import writer_lock
from elegantviz.io.schema import GT, HARD, LABELS, MARGIN, MIN_REGION_AREA, PRED, error_name, error_table
from elegantviz.io.store import open_scene

STORED_REGIONS = 200  # per pair in the error labels' attributes; the regions file has all pair_regions lists
MAX_TOLERANCE = 256  # px: the boundary match dilates by a disk of this radius (10⁹ asked for 10¹⁸ bytes)


def evaluate_scene(
    path: str | Path,
    pred: str = PRED,
    gt: str = GT,
    pairs: list[str] | None = None,
    convention: str = "all",
    tolerance: int = 2,
    write_error_map: bool = True,
    min_area: int = MIN_REGION_AREA,
    progress: bool = True,
) -> dict:
    """Metrics of one scene store; see the module docstring for what is written."""
    whole = isinstance(tolerance, (int, np.integer)) and not isinstance(tolerance, bool)
    if not whole or not 0 <= tolerance <= MAX_TOLERANCE:
        raise InputError(f"--tolerance must be a whole number of pixels from 0 to {MAX_TOLERANCE}, got {tolerance!r}")
    with writer_lock(path, "evaluate") if write_error_map else nullcontext():
        return _evaluate(path, pred, gt, pairs, convention, tolerance, write_error_map, min_area, progress)


def _evaluate(path, pred, gt, pairs, convention, tolerance, write_error_map, min_area, progress) -> dict:
    scene = open_scene(path, mode="a")
    for name in (gt, pred):
        if name not in scene.labels:
            raise InputError(f"{path}: has no labels/{name} (has: {', '.join(scene.labels) or 'none'})")
    table = scene.label_classes(gt) or scene.classes
    if table is None:
        raise InputError(f"{path}: labels/{gt} has no class table")
    if convention != "all":
        check_convention(convention, table.names)  # before any work
    pair_ids = parse_pairs(pairs, table)
    g, p = scene.label(gt), scene.label(pred)
    try:
        cm = confusion_matrix(g, p, table.num_classes, table.ignore_index, progress)
    except ElegantvizError:  # a missing or corrupt chunk, named by the store
        raise
    except ValueError as e:  # class ids beyond the table: labels from another table, or edited
        raise InputError(f"{path}: labels/{pred} against labels/{gt} ({table.name}, {table.num_classes} classes): "
                         f"{e}") from None
    report = {"scene": str(path), "pred": pred, "gt": gt, **summarize(cm, table.names, convention)}
    report["boundary"] = boundary_fscore(g, p, tolerance, table.ignore_index, progress)
    report["confusion_matrix"] = cm.tolist()
    report["class_names"] = table.names
    values = {name: scene.map(name) for name in (MARGIN,) if name in scene.maps and scene.map(name).shape == g.shape}
    if HARD in scene.labels:
        values[HARD] = scene.label(HARD).astype(np.float32)
    report["pairs"] = pair_regions(g, p, pair_ids, table, values, min_area=min_area, progress=progress)
    if write_error_map and pair_ids:
        err = error_name(pred)
        scene.add_labels(err, error_map(g, p, pair_ids), classes=error_table(pair_ids, table), overwrite=True,
                         progress=progress)
        kept = [{"pair": e["pair"], "pixels": e["pixels"], "regions": e["regions"][:STORED_REGIONS]}
                for e in report["pairs"]]
        scene.update_part_meta(LABELS, err, pairs=kept)
        if "://" not in str(path):  # a local store: the regions file goes beside it
            regions = parse_regions([r for e in report["pairs"] for r in e["regions"]], origin=str(path))
            report["regions_file"] = str(save_regions(regions_path(path, pred), regions))
    return report


def evaluate_scenes(scenes: list[str], out_dir: str | Path, overwrite: bool = False, **options):
    """`elegantviz evaluate`: (report, report.json, figure) per scene, into ``out_dir`` (one
    subfolder per scene when there are several). Every scene is opened and every report folder
    checked before the first is evaluated, so a bad second input costs no work and writes nothing."""
    for p, out in zip(scenes, report_folders(scenes, out_dir, overwrite)):
        with writing(p):
            report = evaluate_scene(p, **options)
        with writing(out):
            yield (report, *write_report(report, out))


def report_folders(scenes: list[str], out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Each scene's report folder (``out_dir`` itself for one scene, ``out_dir/<stem>`` for
    several, whose dataset report is ``out_dir/report.json``), all checked, every scene opened."""
    outs = [Path(out_dir) / Path(str(p).rstrip("/")).stem if len(scenes) > 1 else Path(out_dir) for p in scenes]
    stems = [o.name for o in outs]
    if len(scenes) > 1 and len(set(stems)) < len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise InputError(f"two scenes would share a report folder in {out_dir}: {', '.join(twice)} (rename one)")
    for out in outs + ([Path(out_dir)] if len(scenes) > 1 else []):
        check_report_folder(out, overwrite)
    for p in scenes:
        open_scene(p)
    return outs


def dataset_report(reports: list[dict]) -> dict:
    """One report for a collection: the scenes' confusion matrices summed (DeepGlobe's and
    Inria's figures are dataset-level: a mean of per-scene IoUs would weigh a small tile like a
    large one), the pairs' pixels summed, the boundary F-score the scenes' mean, a row per scene."""
    names = reports[0]["class_names"]
    for r in reports[1:]:
        if r["class_names"] != names:
            raise InputError(f"{r['scene']}: its classes ({', '.join(r['class_names'])}) differ from "
                             f"{reports[0]['scene']}'s ({', '.join(names)}); a dataset report needs one table")
    cm = np.sum([np.asarray(r["confusion_matrix"], np.int64) for r in reports], axis=0)
    out = {"scene": f"{len(reports)} scenes", "scenes": len(reports), "pred": reports[0]["pred"],
           "gt": reports[0]["gt"], **summarize(cm, names, reports[0]["convention"])}
    out["boundary"] = {"fscore": float(np.mean([r["boundary"]["fscore"] for r in reports])),
                       "tolerance_px": reports[0]["boundary"]["tolerance_px"], "of": "mean of the scenes"}
    out["confusion_matrix"], out["class_names"] = cm.tolist(), names
    pairs: dict[str, dict] = {}
    for r in reports:
        for e in r["pairs"]:
            total = pairs.setdefault(e["pair"], {"pair": e["pair"], "pixels": 0, "regions": [], "regions_total": 0})
            total["pixels"] += e["pixels"]
            total["regions_total"] += e["regions_total"]
    out["pairs"] = list(pairs.values())
    out["per_scene"] = [{"scene": r["scene"], "miou": r["miou"], "pixels": r["pixels"],
                         "iou": {k: v["iou"] for k, v in r["per_class"].items()},
                         "pairs": {e["pair"]: e["pixels"] for e in r["pairs"]}} for r in reports]
    return out


def check_report_folder(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Where a report may go: a folder (or a new path) without an earlier report, unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder for the report")
    if (out / "report.json").exists() and not overwrite:
        raise InputError(f"{out / 'report.json'}: exists (an earlier evaluation); pass --overwrite to replace it, "
                         "or another --out")
    return out


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """report.json and confusion_matrix.png in ``out_dir``."""
    from elegantviz.viz.plots import confusion_matrix_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "report.json"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(js)
    fig = confusion_matrix_figure(np.asarray(report["confusion_matrix"]), report["class_names"],
                                  title=f"{Path(report['scene']).name}: mIoU {100 * report['miou']:.2f}")
    png = out / "confusion_matrix.png"
    fig.savefig(png, dpi=110)
    return js, png


def format_report(report: dict) -> str:
    lines = [f"{report['scene']}: mIoU {100 * report['miou']:.2f} ({report['convention']}), "
             f"OA {100 * report['overall_accuracy']:.2f}, mean F1 {100 * report['mean_f1']:.2f}, "
             f"boundary F {100 * report['boundary']['fscore']:.2f} (tolerance {report['boundary']['tolerance_px']} px)"]
    for name, v in report["per_class"].items():
        iou = "  n/a" if v["iou"] is None else f"{100 * v['iou']:5.1f}"
        lines.append(f"  {name:<22} IoU {iou}   gt {v['gt_pixels']:>12,d} px")
    for e in report["pairs"]:
        top = ", ".join(f"{r['area']} px at y{r['bbox'][0]} x{r['bbox'][1]}" for r in e["regions"][:3])
        folded = f" (+{e['regions_folded']} under {e['min_area']} px folded away)" if e.get("regions_folded") else ""
        lines.append(f"  {e['pair']:<22} {e['pixels']:>10,d} px in {e['regions_total']} regions{folded}"
                     + (f"; largest: {top}" if top else ""))
    return "\n".join(lines)
