"""`elegantviz predict`: a whole scene through the network in one piece, evidence into the store.

Holistic prediction writes ``labels/<name>`` (default ``pred``) and the model's evidence:
``maps/margin`` (top-1 minus top-2 auxiliary logit), ``labels/hard`` (the ECR selection),
``maps/keys`` and ``maps/queries`` (the normalised keys and queries of efficient attention at
feature resolution, so a viewer can compute any pixel's attention map without the model),
``maps/attention`` (the attention the hard region pays to every pixel, relative to uniform:
1 = average), ``maps/boundary`` (Sobel magnitude of the prediction, what BAE weighs) and,
when ``labels/gt`` exists, ``labels/error``. Sliced prediction (sliding windows with blended
logits, for baselines) writes only the labels and the error map. How the network runs is an
inference strategy (:mod:`elegantviz.inference`); this module handles the store.

The network's outputs are first cached at feature resolution in the store's ``_predict``
group; every part is then written block by block from that cache: a new part in place (a viewer
shows it as soon as it is finished), one that replaces a finished part beside it
(``_predict/<name>/staged``), swapped in at once when all are finished (:mod:`elegantviz.io.swap`).
An interrupted run resumes without running the network again, and a reader, even one holding
the old parts as a napari layer does, sees the old part or the new one, never a missing chunk. The keys
and queries (256 float32 + 256 float16 per feature pixel, 4.7 GB at 6800x7200) are only ever read from
the cache lazily, and tiled prediction streams them there tile by tile.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable

import dask.array as da
import numpy as np

from elegantviz.analysis.errors import error_map, parse_pairs
from elegantviz.analysis.sobel import sobel_map
from elegantviz.engine.checkpoints import TrainedModel, load_model, pick_device
from elegantviz.errors import InputError
from elegantviz.inference import make_strategy
from elegantviz.inference.prediction import STORED_DTYPES, Prediction
from elegantviz.io import schema as S
from elegantviz.io.lock import writer_lock
from elegantviz.io.pyramid import upsample_nearest
from elegantviz.io.store import Scene, open_scene

PREDICTED = "predicted_by"  # labels predict wrote carry the strategy's job; it may replace those
RUN = "run"  # every part a run writes carries its id: the parts it has swapped in already, after a resume
STAGED = "staged"  # the parts of a run, written below its cache before they are swapped in
MIN_SIDE = 8  # px
VIEW = "view_"  # cached views of a patch model (views are written as labels/<name>-<view>)
VIEW_OF = "view_of"  # the labels a view label belongs to: it goes when those are predicted again without it
STREAMED = (S.KEYS, S.QUERIES)  # (d, h, w) at feature resolution: kept on disk, never read whole


def map_tile(tile: int, stride: int) -> int:
    """Chunk side (feature px) of maps/keys and maps/queries for a scene of ``tile`` px chunks."""
    return max(16, tile // stride // 2 * 2)


def cache_map_array(group, key: str, shape: tuple[int, int, int], tile: int):
    """A (d, h, w) map in the cache (dtype: STORED_DTYPES), chunked like maps/<key> (all channels per
    chunk) so that add_map reads whole chunks and a tile's write rewrites few; NaN until written."""
    return group.create_array(key, shape=shape, dtype=STORED_DTYPES[key], chunks=(shape[0], tile, tile), fill_value=np.nan,
                              overwrite=True)


def _cache_outputs(scene: Scene, name: str, pred: Prediction, job: dict) -> None:
    """What is still in memory into the cache, then mark it complete (maps streamed there are zarr arrays)."""
    group = scene.scratch(name, create=True)
    for key, value in pred.arrays().items():
        if isinstance(value, np.ndarray) and key in STREAMED:
            array = cache_map_array(group, key, value.shape, map_tile(scene.tile, pred.stride))
            array[...] = value
            setattr(pred, key, array)  # from here on read from the cache: the in-memory copy can go
        elif isinstance(value, np.ndarray):
            group.create_array(key, data=value, overwrite=True)
    for view, value in pred.views.items():
        group.create_array(VIEW + view, data=value, overwrite=True)
    group.attrs[S.KEY] = {"complete": True, **pred.scalars(), "job": job, RUN: uuid.uuid4().hex}


def _cached(scene: Scene, name: str, job: dict) -> Prediction | None:
    """The cached outputs of an interrupted run of the same job (checkpoint, strategy), else
    None; the streamed maps as zarr arrays."""
    group = scene.scratch(name)
    if group is None:
        return None
    meta = group.attrs.get(S.KEY, {})
    if not meta.get("complete") or meta.get("job") != job:
        scene.drop_scratch(name)  # half-written, or another checkpoint or strategy: not to be resumed
        return None
    arrays = {key: group[key] if key in STREAMED else np.asarray(group[key][...]) for key in group.array_keys()}
    views = {key[len(VIEW):]: arrays.pop(key) for key in list(arrays) if key.startswith(VIEW)}
    return Prediction(**arrays, stride=meta["stride"], windows=meta.get("windows"), views=views)


def predict_scene(
    checkpoint: str | Path,
    scene_path: str | Path,
    mode: str = "holistic",
    name: str = S.PRED,
    crop: int = 512,
    overlap: float = 1 / 3,
    pairs: list[str] | None = None,
    device: str = "auto",
    progress: bool = True,
    on_stage: Callable[[str, int, int], None] | None = None,
    tile: int | None = None,
    trained: TrainedModel | None = None,
    tta: bool = False,
) -> dict:
    """Predict one scene store in place; returns a summary (seconds, what was written).

    ``tile`` (holistic only) runs the network unit by unit in halo tiles of that many pixels
    (elegantviz.inference.tiles): the same result as one whole-image pass, with a peak memory that
    stops growing with the scene except for the scene-sized maps themselves.

    ``on_stage(stage, done, total)``, when given, is called before each stage (``"forward"``, then
    each part, e.g. ``"labels/pred"``) and once more with ``"done"``, for a progress bar; an
    exception it raises stops the run between stages, where the store is valid and resumable.
    ``trained``: ``checkpoint`` already loaded on ``device`` (a worker predicting many scenes).
    ``tta``: 8x D4 test-time augmentation of a patch-based model (GLNet, FCtL). Such a model's
    other outputs (GLNet's global-only and local-only maps) go to ``labels/<name>-<view>``.
    """
    with writer_lock(scene_path, "predict"):
        return _predict_scene(checkpoint, scene_path, mode, name, crop, overlap, pairs, device, progress, on_stage,
                              tile, trained, tta)


def prediction_job(checkpoint: str | Path, mode: str = "holistic", crop: int = 512, overlap: float = 1 / 3,
                   tile: int | None = None, tta: bool = False) -> dict:
    """What labels predict writes carry (``predicted_by``): the checkpoint, as a file and a
    version, and the strategy; a cache or a finished part of the same job needs no new run."""
    return {"checkpoint": str(Path(checkpoint).resolve()), "mtime": Path(checkpoint).stat().st_mtime,
            **make_strategy(mode, crop, overlap, tile).job(), **({"tta": True} if tta else {})}


def prediction_done(scene_path: str | Path, checkpoint: str | Path, mode: str = "holistic", name: str = S.PRED,
                    crop: int = 512, overlap: float = 1 / 3, tile: int | None = None, tta: bool = False,
                    **_) -> bool:
    """``labels/<name>`` of ``scene_path`` is finished and was written by this very job, with no
    run of it left to finish: a collection rerun skips the scene."""
    try:
        scene = open_scene(scene_path)
        if name not in scene.labels or scene.scratch(name) is not None:
            return False
        meta = scene.part_meta(S.LABELS, name)
    except (InputError, OSError):
        return False
    return meta.get("complete") is True and meta.get(PREDICTED) == prediction_job(checkpoint, mode, crop, overlap, tile,
                                                                                       tta)


def _predict_scene(checkpoint, scene_path, mode, name, crop, overlap, pairs, device, progress, on_stage,
                   tile, trained, tta) -> dict:
    """The run itself, under the store's writer lock."""
    make_strategy(mode, crop, overlap, tile)  # a bad option is refused before the model is read
    S.check_prediction_name(name, str(scene_path))
    dev = pick_device(device)
    trained = trained or load_model(checkpoint, dev)
    model, table, cfg = trained.model, trained.classes, trained.config
    strategy = make_strategy(mode, crop, overlap, tile, tta, getattr(model, "patch_based", False))
    scene = open_scene(scene_path, mode="a")
    if name in scene.labels and name != S.PRED and not scene.part_meta(S.LABELS, name).get(PREDICTED):
        raise InputError(f"{scene_path}: labels/{name} exists and was not written by predict; "
                         "choose another --name (predict never replaces labels it did not make)")
    h, w = scene.shape[1:]
    side = max(MIN_SIDE, getattr(model, "min_side", 0))  # ISDNet's deep branch runs at 1/32
    if min(h, w) < side:  # the Sobel boundary's 5 x 5 stencil and HRNet's stride need a few pixels
        raise InputError(f"{scene_path}: {h} x {w} px is too small to predict (each side needs {side} px at least)")
    if mode == "sliced" and crop < side:
        raise InputError(f"--crop {crop}: this model takes windows of {side} px a side at least")
    pairs_ids = parse_pairs(pairs, table)  # a bad pair is refused before the run, not after it
    if scene.shape[0] != trained.in_chans:
        raise InputError(f"{scene_path}: has {scene.shape[0]} bands, the model was trained on {trained.in_chans} "
                         f"({', '.join(trained.bands)})")
    if cfg.data.level != 0:
        raise InputError(f"{checkpoint}: trained at pyramid level {cfg.data.level}; prediction at level 0 only for now")
    has_gt = S.GT in scene.labels
    holistic = mode == "holistic"
    evidence = holistic and getattr(model, "gives_evidence", True)
    stages = {"done": 0, "total": 2 + has_gt + (3 + 3 * (getattr(model, "ecr", None) is not None) if evidence else 0)}

    def stage(what: str) -> None:
        if on_stage is not None:
            on_stage(what, stages["done"], stages["total"])

    started = time.perf_counter()
    stage("forward")
    err = S.error_name(name)
    parts = [(S.LABELS, name), (S.LABELS, err)]
    if holistic or name == S.PRED:  # evidence describes labels/pred: it goes when pred is redone
        parts += [(S.MAPS, m) for m in S.EVIDENCE_MAPS] + [(S.LABELS, S.HARD)]
    job = prediction_job(checkpoint, mode, crop, overlap, tile, tta)
    pred = _cached(scene, name, job)
    cached = pred is not None
    if pred is None:
        for kind, part in parts:  # half-written parts of an earlier run go (no reader can open them)
            if scene.staged_meta(kind, part, "").get("complete") is not True:
                scene.remove(kind, part)
        image, valid = trained.norm.apply(np.asarray(scene.image(0).compute()), scene.nodata)
        # streamed maps go straight into the cache: incomplete until _cache_outputs, so discarded if interrupted
        chunk = map_tile(scene.tile, trained.output_stride)
        group = None

        def scratch(key: str, shape: tuple[int, int, int]):
            nonlocal group
            group = group or scene.scratch(name, create=True)
            return cache_map_array(group, key, shape, chunk)

        pred = strategy(model, image, dev, progress=progress, scratch=scratch)
        pred.labels[~valid] = table.ignore_index
        for value in pred.views.values():
            value[~valid] = table.ignore_index
        _cache_outputs(scene, name, pred, job)
    stages["done"] += 1
    forward_s = time.perf_counter() - started
    for view in pred.views:
        part = f"{name}-{view}"
        if part in scene.labels and scene.part_meta(S.LABELS, part).get(VIEW_OF) != name:
            raise InputError(f"{scene_path}: labels/{part} exists and is not the {view} view of labels/{name}; choose "
                             f"another --name (the model's {view} view is written as labels/<name>-{view})")
    stages["total"] += len(pred.views)
    shape = scene.shape[1:]
    tile = scene.tile
    # a part that replaces a finished one is written beside it first, and all are swapped in at the
    # end (io/swap.py): a reader holding the old parts (a napari layer) never sees missing chunks.
    # A new part (or a half-written one of this run) is written in place: a viewer shows it at once
    run = scene.scratch(name).attrs[S.KEY]["run"]
    under, tag = f"{S.CACHE_GROUP}/{name}/{STAGED}/", {RUN: run}
    labels = da.from_array(pred.labels, chunks=tile)
    written: list[str] = []

    def this_run(meta: dict) -> bool:
        return meta.get("complete") is True and meta.get(RUN) == run

    def swapped(kind: str, part: str) -> bool:  # one attribute read, not a listing of every part (S3)
        return this_run(scene.staged_meta(kind, part, ""))

    def put(kind: str, part: str, write) -> None:
        """Write one part (below ``under`` when it replaces a finished one), unless this run wrote
        it before an interruption."""
        stage(S.part_path(kind, part))
        stages["done"] += 1
        final = scene.staged_meta(kind, part, "")  # each part's attributes read once (a request on S3)
        if not (this_run(final) or this_run(scene.staged_meta(kind, part, under))):
            write(under if final.get("complete") is True else "")
        written.append(S.part_path(kind, part))

    put(S.LABELS, name, lambda where: scene.add_labels(name, labels, classes=table, progress=progress,
                                                  attrs={PREDICTED: job, **tag}, under=where))
    for view, value in pred.views.items():
        part = f"{name}-{view}"
        put(S.LABELS, part, lambda where, part=part, value=value: scene.add_labels(
            part, da.from_array(value, chunks=tile), classes=table, progress=progress,
            attrs={PREDICTED: job, VIEW_OF: name, **tag}, under=where))
    if pred.has_evidence:
        s = pred.stride
        put(S.MAPS, S.MARGIN, lambda where: scene.add_map(
            S.MARGIN, upsample_nearest(pred.margin, s, shape, tile), progress=progress,
            attrs={"kind": S.MARGIN, "stride": s, **tag}, under=where))
        put(S.LABELS, S.HARD, lambda where: scene.add_labels(
            S.HARD, upsample_nearest(pred.hard, s, shape, tile), classes=S.hard_table(), progress=progress,
            attrs=tag, under=where))
        put(S.MAPS, S.BOUNDARY, lambda where: scene.add_map(
            S.BOUNDARY, sobel_map(labels, cfg.loss.sobel_ksize), progress=progress,
            attrs={"kind": S.BOUNDARY, "of": S.part_path(S.LABELS, name), **tag}, under=where))
        if pred.has_attention:
            for key in STREAMED:
                put(S.MAPS, key, lambda where, key=key: scene.add_map(
                    key, da.from_zarr(getattr(pred, key)), dtype=STORED_DTYPES[key], progress=progress,
                    tile=map_tile(tile, s),
                    attrs={"kind": key, "stride": s, "relative_to_uniform": key == S.KEYS, **tag}, under=where))
            put(S.MAPS, S.ATTENTION, lambda where: scene.add_map(
                S.ATTENTION, upsample_nearest(pred.attention, s, shape, tile), dtype=STORED_DTYPES[S.ATTENTION],
                progress=progress,
                attrs={"kind": S.ATTENTION, "of": "hard region", "stride": s, "relative_to_uniform": True, **tag},
                under=where))
    if has_gt:
        pair_ids = pairs_ids
        put(S.LABELS, err, lambda where: scene.add_labels(
            err, error_map(scene.label(S.GT), labels, pair_ids), classes=S.error_table(pair_ids, table),
            progress=progress, attrs=tag, under=where))
    for path in written:
        kind, part = path.split("/")
        if not swapped(kind, part):
            scene.swap_in(kind, part, under)
    views = [v for v in scene.labels if v.startswith(f"{name}-") and scene.part_meta(S.LABELS, v).get(VIEW_OF) == name]
    for kind, part in parts + [(S.LABELS, v) for v in views]:  # what described the old labels/<name>, not replaced
        if S.part_path(kind, part) not in written:
            scene.remove(kind, part)
    stage("done")
    scene.drop_scratch(name)
    return {"scene": str(scene_path), "mode": mode, "forward_s": forward_s,
            "total_s": time.perf_counter() - started, "written": written, "resumed": cached,
            **({"crops": pred.windows} if pred.windows is not None else {})}
