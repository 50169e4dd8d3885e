"""The `elegantviz` command. Each subcommand imports its machinery only when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from elegantviz import __version__
from elegantviz.values import (at_least, band_number, checked, class_pair, device_name, label_name, non_negative,
                               overlap_fraction, size_text, tile_side, unique_list)
from elegantviz.config import list_configs
from elegantviz.errors import ElegantvizError, InputError, writing
from elegantviz.io.schema import MIN_REGION_AREA
from elegantviz.predict_json import predict_json
from elegantviz.many import add_cluster_options, convert_folder, evaluate_many, on_cluster, predict_many, write_dataset

# elegantviz.offload.POLICY_NAMES and "auto", spelled out so that --help does not import torch
POLICY_CHOICES = ("auto", "none", "host", "checkpoint", "checkpoint+host", "disk", "checkpoint+disk",
                  "checkpoint+band", "checkpoint+band+host", "checkpoint+band+disk")
MAX_SIDE = 1 << 16  # px: riverworld's layout alone takes minutes at 65,536² (20 GB); larger is a typo
MAX_TOLERANCE = 256  # elegantviz.engine.evaluate.MAX_TOLERANCE, spelled out so that --help stays light
MAX_CLASSES = 255  # labels are uint8 and 255 is ignore


def _convert(args: argparse.Namespace) -> None:
    from elegantviz.io.convert import convert_raster
    from elegantviz.io.info import format_info, scene_info

    if args.src and Path(args.src).is_dir():
        return convert_folder(args)
    if on_cluster(args):
        missing = f"{args.src}: no such folder; " if args.src and not Path(args.src).exists() else ""
        raise InputError(f"{missing}--scheduler and --workers convert a folder of rasters (convert FOLDER OUT)")
    sources = ([args.src] if args.src else []) + (args.band or [])
    if not sources:
        raise ElegantvizError("convert: give a raster SRC or one --band FILE per band")
    for option, given in (("--classes", args.classes), ("--strict", args.strict)):
        if given and not args.mask:
            raise InputError(f"{option} applies to a mask: give --mask FILE too")
    result = convert_raster(sources, args.out, bands=args.bands, band_names=args.band_names, mask=args.mask,
                            classes=args.classes, strict=args.strict, nodata=args.nodata, tile=args.chunk,
                            overwrite=args.overwrite, progress=not args.quiet)
    if result.mask:
        m = result.mask
        print(f"mask {m.path}: {m.unknown_pixels:,d} pixels outside the class table"
              + (f" (values {m.unknown_values})" if m.unknown_values else "")
              + f", {m.nodata_pixels:,d} nodata/ignored pixels; both stored as ignore (255)")
    im = result.image
    if im and (im.nan_pixels or im.infinite_pixels):
        print(f"image: {im.infinite_pixels:,d} infinite and {im.nan_pixels:,d} NaN pixels stored as nodata (NaN)")
    print(format_info(scene_info(result.scene, histograms=False, progress=False)))


def _synth(args: argparse.Namespace) -> None:
    from elegantviz.data.synthetic import synthesize_riverworld

    if "://" not in str(args.out):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # `synth rasters/s0.tif` makes rasters/
    result = synthesize_riverworld(args.out, height=args.size, width=args.width, seed=args.seed, tile=args.chunk,
                                   overwrite=args.overwrite, progress=not args.quiet)
    if isinstance(result, tuple):
        print(f"wrote {result[0]} and its mask {result[1]}")
    else:
        print(f"wrote scene store {result.url}")


def _info(args: argparse.Namespace) -> None:
    from elegantviz.io.info import format_info, scene_info
    from elegantviz.io.store import open_scene

    scene = open_scene(args.scene, allow_incomplete=True)
    info = scene_info(scene, histograms=not args.no_histogram, progress=not args.quiet)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def _train(args: argparse.Namespace) -> None:
    from elegantviz.config import load_config
    from elegantviz.engine.train import train

    cfg = load_config(args.config)  # checked; so are the options that override it, by their argparse types
    cfg.out_dir, cfg.iters = args.out or cfg.out_dir, args.iters or cfg.iters
    cfg.memory.budget, cfg.memory.policy = args.memory_budget or cfg.memory.budget, args.policy or cfg.memory.policy
    best = train(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    print(f"best checkpoint: {best}")


def _predict(args: argparse.Namespace) -> None:
    kwargs = _predict_options(args)
    if on_cluster(args):
        return predict_many(args, kwargs)
    if args.progress_json:
        return predict_json(args, kwargs)
    if args.stdin_cancel:
        raise ElegantvizError("--stdin-cancel goes with --progress-json (where a cancelled run is reported)")
    from elegantviz.engine.predict import predict_scene

    for path in args.scenes:
        with writing(path):
            summary = predict_scene(args.checkpoint, path, progress=not args.quiet, **kwargs)
        print(f"{path}: {summary['mode']} prediction in {summary['total_s']:.1f} s "
              f"(network {summary['forward_s']:.1f} s{', resumed' if summary['resumed'] else ''}); "
              f"wrote {', '.join(summary['written'])}")


def _predict_options(args: argparse.Namespace) -> dict:
    """predict_scene's options, refused where they do not apply to the mode (a --tile with
    --mode sliced was silently ignored), and every scene opened before the first is written."""
    sliced = args.mode == "sliced"
    for option, value, mode in (("--tile", args.tile, "holistic"), ("--crop", args.crop, "sliced"),
                                ("--overlap", args.overlap, "sliced"), ("--tta", args.tta or None, "holistic")):
        if value is not None and (mode == "sliced") != sliced:
            raise InputError(f"{option} applies to --mode {mode}, not --mode {args.mode}")
    _open_all(args.scenes)
    return {"mode": args.mode, "name": args.name, "crop": 512 if args.crop is None else args.crop,
            "overlap": 1 / 3 if args.overlap is None else args.overlap, "pairs": args.pair, "device": args.device,
            "tile": args.tile, **({"tta": True} if args.tta else {})}


def _open_all(scenes: list[str]) -> None:
    """Open every scene first: a missing second scene used to be found after the first was written."""
    from elegantviz.io.store import open_scene

    for path in scenes:
        open_scene(path)


def _evaluate(args: argparse.Namespace) -> None:
    from elegantviz.engine.evaluate import evaluate_scenes, format_report

    options = dict(pred=args.pred, gt=args.gt, pairs=args.pair, convention=args.convention, tolerance=args.tolerance,
                   write_error_map=not args.no_error_map, min_area=args.min_area)
    if on_cluster(args):
        return evaluate_many(args, options)
    reports = []
    for report, js, png in evaluate_scenes(args.scenes, args.out, args.overwrite, progress=not args.quiet, **options):
        print(format_report(report))
        regions = f"  regions: {report['regions_file']}" if "regions_file" in report else ""
        print(f"report: {js}  figure: {png}{regions}")
        reports.append(report)
    write_dataset(reports, args.out)


def _compare(args: argparse.Namespace) -> None:
    from elegantviz.engine.compare import compare_models, failures, format_table, parse_model

    specs = [parse_model(m) for m in args.model or []]
    if args.crop is not None and not any(s.mode == "sliced" for s in specs):
        raise InputError("--crop applies to models given as NAME=CHECKPOINT@sliced; none is")
    result = compare_models(specs, args.scenes, args.pair, args.device, args.crop or 512, args.convention,
                            progress=not args.quiet)
    print(format_table(result))
    if args.out:
        with writing(args.out):
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"table: {args.out}")
    failed = failures(result)
    if failed:
        raise ElegantvizError(f"{len(failed)} of {len(specs)} models failed: {', '.join(failed)}")


def _check(args: argparse.Namespace) -> None:
    from elegantviz.io.check import check_scene

    damaged = []
    for path in args.scenes:
        report = check_scene(path, progress=not args.quiet)
        for problem in report.problems:
            print(problem)
        print(report.summary())
        if report.damage:
            damaged.append(path)
    if damaged:
        raise ElegantvizError(f"{len(damaged)} of {len(args.scenes)} scene stores damaged: {', '.join(damaged)}")


def _view(args: argparse.Namespace) -> None:
    try:
        from napari_elegantviz.view import view_scene
    except ImportError as e:
        raise ElegantvizError(f"the viewer needs the 'viewer' extra: pip install 'elegantviz[viewer]' ({e})") from None
    view_scene(args.scene)


def _models(args: argparse.Namespace) -> None:
    from elegantviz.models.registry import print_models

    print_models(args)


def _export(args: argparse.Namespace) -> None:
    source = Path(args.source)
    if (source / "zarr.json").is_file() or "://" in args.source:
        _export_scene(args)
        return
    from elegantviz.engine.checkpoints import export_model

    out = args.out or args.out_file
    if not out:
        raise ElegantvizError(f"{source}: give the file to write (elegantviz export CHECKPOINT OUT)")
    if not source.is_file():
        raise ElegantvizError(f"{source}: neither a scene store nor a checkpoint file")
    if Path(out).exists() and not args.overwrite:
        raise ElegantvizError(f"{out}: exists; pass --overwrite to replace it")
    with writing(out):
        dst = export_model(source, out, half=not args.float32)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB)")


def _export_scene(args: argparse.Namespace) -> None:
    from elegantviz.engine.export import export_scene

    path, note = export_scene(args.source, args.out_file or args.out, args.labels, args.regions, args.pred,
                              args.classes, args.simplify, args.overwrite, not args.quiet)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)" + (f"; {note}" if note else ""))


def _demo(args: argparse.Namespace) -> None:
    from elegantviz.demo import run_demo

    if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
        raise InputError(f"--workdir {args.workdir}: is a file, not a folder to work in")
    for option, value in (("--iters", args.iters), ("--train-scenes", args.train_scenes)):
        if value is not None and not args.train:
            raise InputError(f"{option} is for --train (the shipped model is used without it)")
    run_demo(Path(args.workdir), size=args.size, iters=args.iters, progress=not args.quiet, train=args.train,
             train_scenes=args.train_scenes or 16)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every other elegantviz error (usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="elegantviz", description=__doc__)
    p.add_argument("--version", action="version", version=f"elegantviz {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        sp.set_defaults(func=fn)
        return sp

    c = add("convert", _convert, "convert a GeoTIFF/PNG (or stacked single-band files) into a scene store")
    c.add_argument("src", nargs="?", help="raster file (GeoTIFF, COG, PNG, JPEG, any GDAL format), or a folder of them")
    c.add_argument("out", help="output scene store, e.g. scene.zarr (or an fsspec URL); for a folder, where the stores go")
    c.add_argument("--band", action="append", metavar="FILE", help="stack single-band files in this order (repeat)")
    c.add_argument("--bands", metavar="LIST", type=checked(unique_list, band_number),
                   help="pick and reorder bands, 1-based, e.g. 3,2,1,4")
    c.add_argument("--band-names", metavar="NAMES", type=checked(unique_list),
                   help="comma-separated band names, e.g. R,G,B,NIR")
    c.add_argument("--mask", metavar="FILE", help="class mask raster, stored as labels/gt")
    c.add_argument("--classes", metavar="TABLE",
                   help="class table for the mask: fbp, deepglobe, inria, loveda, riverworld or a JSON file "
                        "(default: each distinct mask value is a class)")
    c.add_argument("--strict", action="store_true", help="refuse a mask with values outside the class table")
    c.add_argument("--nodata", type=float, help="nodata value of the image, overriding the file's")
    c.add_argument("--chunk", type=at_least(16, 8192), default=512,
                   help="chunk size in pixels, even (default 512)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_cluster_options(c)

    s = add("synth", _synth, "synthesize a riverworld scene (rivers and ponds that only the whole image tells apart)")
    s.add_argument("out", help="OUT.zarr for a scene store, or OUT.tif for a GeoTIFF plus OUT_mask.tif")
    s.add_argument("--size", type=at_least(64, MAX_SIDE), default=1024, help="height in pixels (default 1024)")
    s.add_argument("--width", type=at_least(64, MAX_SIDE), help="width in pixels (default: the height)")
    s.add_argument("--seed", type=at_least(0, 2**63 - 1), default=0)
    s.add_argument("--chunk", type=at_least(16, 8192), default=512, help="chunk size in pixels, even (default 512)")
    s.add_argument("--overwrite", action="store_true")

    i = add("info", _info, "describe a scene store: shape, bands, CRS, levels, labels, maps, class histograms")
    i.add_argument("scene", help="scene store path or URL")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--no-histogram", action="store_true", help="skip the class histograms (a full pass)")

    t = add("train", _train, "train a model on scene stores from a YAML config (holistic or sliced)")
    t.add_argument("config", help=f"YAML config file, or a shipped config name ({', '.join(list_configs())}; "
                                     "staged models train stage by stage, each config naming the one before)")
    t.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt exactly where it stopped")
    t.add_argument("--out", help="run folder (overrides out_dir)")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds a run (its checkpoints and log are deleted)")
    t.add_argument("--iters", type=at_least(1), help="number of iterations (overrides iters)")
    t.add_argument("--memory-budget", metavar="SIZE", type=checked(size_text),
                   help="e.g. 12GB; the planner picks the cheapest policy that fits")
    t.add_argument("--policy", choices=POLICY_CHOICES,
                   help="activation memory policy (overrides memory.policy; auto = planned from the budget)")

    pr = add("predict", _predict, "predict whole scenes in place: labels/pred plus the model's evidence")
    pr.add_argument("checkpoint", help="a checkpoint written by `elegantviz train` (best.pt or last.pt)")
    pr.add_argument("scenes", nargs="+", help="scene stores")
    pr.add_argument("--mode", choices=["holistic", "sliced"], default="holistic",
                    help="holistic (whole scene, with evidence) or sliced (sliding windows, a baseline)")
    pr.add_argument("--name", default="pred", type=checked(label_name), help="labels name to write (default pred)")
    pr.add_argument("--crop", type=at_least(16), help="window size for --mode sliced (default 512)")
    pr.add_argument("--overlap", type=checked(overlap_fraction),
                    help="window overlap for --mode sliced, in [0, 1) (default 1/3)")
    pr.add_argument("--pair", action="append", metavar="TRUE:PRED", type=checked(class_pair),
                    help="confusion pairs for labels/error")
    pr.add_argument("--device", default="auto", type=checked(device_name), help="auto, cpu, cuda, cuda:1 ...")
    pr.add_argument("--tile", type=checked(tile_side), help="holistic in bounded memory: run the network unit by unit in "
                                                      "halo tiles of this many pixels (same result; for scenes that "
                                                      "do not fit)")
    pr.add_argument("--tta", action="store_true",
                    help="8x D4 test-time augmentation (flip x 4 rotations, logits summed) of a patch-based model "
                         "(GLNet, FCtL), as FCtL's official test scripts")
    pr.add_argument("--progress-json", action="store_true",
                    help="machine-readable progress: one JSON object per line on stdout, "
                         '{"scene", "stage", "done", "total", "at"} as each stage starts (at: epoch seconds), '
                         'then per scene one of {"scene", "summary"}, {"scene", "cancelled": {"before", "done", '
                         '"total"}} or {"scene", "error", "type"}; other output goes to stderr')
    pr.add_argument("--stdin-cancel", action="store_true",
                    help="stop at the next stage boundary (the store stays valid; running again resumes) when "
                         "stdin reads a line 'cancel' or closes; for a program driving the run")

    add_cluster_options(pr)
    e = add("evaluate", _evaluate, "metrics of labels/pred against labels/gt, confusion pairs and their regions")
    e.add_argument("scenes", nargs="+", help="scene stores with labels/pred and labels/gt")
    e.add_argument("--pred", default="pred", type=checked(label_name), help="labels to evaluate (default pred)")
    e.add_argument("--gt", default="gt", type=checked(label_name), help="ground-truth labels (default gt)")
    e.add_argument("--pair", action="append", metavar="TRUE:PRED", type=checked(class_pair),
                   help="confusion pair to map and list, e.g. river:pond (repeat; default: the class table's)")
    e.add_argument("--convention", choices=["all", "deepglobe", "inria"], default="all",
                   help="mIoU convention: all classes, DeepGlobe (classes 1..6) or Inria (building IoU)")
    e.add_argument("--tolerance", type=at_least(0, MAX_TOLERANCE), default=2,
                   help=f"boundary F-score tolerance in pixels, at most {MAX_TOLERANCE} (default 2)")
    e.add_argument("--min-area", type=at_least(1), default=MIN_REGION_AREA,
                   help=f"list confusion regions of at least this many pixels; smaller ones are counted "
                        f"and folded away (default {MIN_REGION_AREA})")
    e.add_argument("--out", default="evaluation", help="folder for report.json and confusion_matrix.png")
    e.add_argument("--no-error-map", action="store_true", help="do not store labels/error in the scene")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier report.json in --out")
    add_cluster_options(e)

    cm = add("compare", _compare, "several models on the same scenes: mIoU, per-class IoU, confused pixels, seconds "
             "and peak RSS per model (each predicts into labels/<name>)")
    cm.add_argument("scenes", nargs="+", help="scene stores with labels/gt")
    cm.add_argument("--model", action="append", metavar="NAME=CKPT[@sliced]",
                    help="a model to compare, its labels name and checkpoint; @sliced predicts with sliding windows "
                         "(repeat)")
    cm.add_argument("--pair", action="append", metavar="TRUE:PRED", type=checked(class_pair),
                    help="confusion pair to count, e.g. river:pond (repeat; default: the class table's)")
    cm.add_argument("--crop", type=at_least(16), help="window size of @sliced models (default 512)")
    cm.add_argument("--convention", choices=["all", "deepglobe", "inria"], default="all",
                    help="mIoU convention: all classes, DeepGlobe (classes 1..6) or Inria (building IoU)")
    cm.add_argument("--device", default="auto", type=checked(device_name), help="auto, cpu, cuda, cuda:1 ...")
    cm.add_argument("--out", help="write the table as JSON here")

    ck = add("check", _check, "verify scene stores: parts complete, every chunk present and readable, metadata "
             "consistent; one line per problem, exit 2 when damaged")
    ck.add_argument("scenes", nargs="+", help="scene stores (paths or URLs)")

    v = add("view", _view, "open a scene store in napari with the elegantviz docks")
    v.add_argument("scene", help="scene store path or URL")

    m = add("models", _models, "list the model presets with parameter counts and GFLOPs at 1024^2")
    m.add_argument("--num-classes", type=at_least(1, MAX_CLASSES), default=24,
                   help="classes of the head (default 24, as FBP)")
    m.add_argument("--in-chans", type=at_least(1), default=4, help="input bands (default 4)")
    m.add_argument("--size", type=at_least(32, MAX_SIDE * 2), default=1024,
                   help="input side for the GFLOP count (default 1024)")

    x = add("export", _export, "labels or error regions to GIS files (COG, GeoPackage, GeoJSON); "
            "or a checkpoint to a predict-only one")
    x.add_argument("source", help="a scene store (labels, regions) or a checkpoint written by train (best.pt)")
    x.add_argument("out", nargs="?", help="for a checkpoint: the file to write")
    x.add_argument("--out", dest="out_file", metavar="FILE",
                   help="the file to write: .tif (Cloud-Optimised GeoTIFF), .gpkg or .geojson (polygons)")
    x.add_argument("--labels", default="pred", type=checked(label_name), help="labels to export (default pred)")
    x.add_argument("--regions", action="store_true",
                   help="export the confusion regions of the last evaluation (of --pred) instead")
    x.add_argument("--pred", default="pred", type=checked(label_name),
                   help="with --regions: the evaluated labels (default pred)")
    x.add_argument("--classes", metavar="A,B", help="polygons of these classes only, e.g. river,pond")
    x.add_argument("--simplify", type=non_negative, default=0.0,
                   help="simplify polygons to this tolerance in map units (pixels when not georeferenced)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    x.add_argument("--float32", action="store_true", help="for a checkpoint: keep float32 weights")

    d = add("demo", _demo, "the main job end to end on a synthetic riverworld scene")
    d.add_argument("--workdir", default="demo", help="where the demo writes (default ./demo)")
    d.add_argument("--size", type=at_least(64, MAX_SIDE // 2), default=512,
                   help="training scene size in pixels (default 512; the held-out scene is twice as large)")
    d.add_argument("--iters", type=at_least(1), help="training iterations (default: the riverworld-cpu config's)")
    d.add_argument("--train", action="store_true",
                   help="train a model from scratch instead of using the shipped one")
    d.add_argument("--train-scenes", type=at_least(1),
                   help="training scenes with --train (default 16, as the shipped model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ElegantvizError as e:
        print(f"elegantviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `elegantviz info x.zarr | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # the system refused a read or write (permissions, a full disk): say which file
        print(f"elegantviz {args.command}: error: {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"elegantviz {args.command}: interrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
