"""`elegantviz predict`: a whole scene through the network in one piece, evidence into the store.

Holistic prediction writes ``labels/<name>`` (default ``pred``) and the model's evidence:
``maps/margin`` (top-1 minus top-2 auxiliary logit), ``labels/hard`` (the ECR selection),
``maps/keys`` and ``maps/queries`` (the normalised keys and queries of efficient attention at
feature resolution, so a viewer can compute any pixel's attention map without the model),
``maps/attention`` (the attention the hard region pays to every pixel, relative to uniform:
1 = average), ``maps/boundary`` (Sobel magnitude of the prediction, what BAE weighs) and,
when ``labels/gt`` exists, ``labels/error``. Sliced prediction (sliding windows with blended
logits, for baselines) writes only the labels and the error map.

The network's outputs are first cached at feature resolution in the store's ``_predict``
group; every part is then written block by block from that cache, so an interrupted run
resumes without running the network again, and readers never see half-written parts. The keys
and queries (2 x 256 float16 per feature pixel, 3.1 GB at 6800x7200) are only ever read from
the cache lazily, and tiled prediction streams them there tile by tile.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import dask.array as da
import numpy as np
import torch
import torch.nn.functional as F

from elegantviz.analysis.errors import error_map, parse_pairs
from elegantviz.classes import ClassTable
from elegantviz.engine.evaluate import error_table
from elegantviz.engine.train import load_model, pick_device
from elegantviz.errors import InputError
from elegantviz.io.store import Scene, open_scene
from elegantviz.losses import label_sobel

CACHE = "_predict"
MAPS = ("keys", "queries")  # (d, h, w) at feature resolution: kept on disk, never read whole
HARD_TABLE = {"name": "hard", "classes": [{"id": 0, "name": "easy", "color": [0, 0, 0]},
                                          {"id": 1, "name": "hard", "color": [255, 0, 255]}]}


def _upsample_nearest(a: np.ndarray, stride: int, shape: tuple[int, int], tile: int) -> da.Array:
    """Feature-resolution map -> image resolution, lazily (each feature pixel covers stride^2 px)."""
    lazy = da.from_array(a, chunks=max(1, tile // stride))
    up = lazy.repeat(stride, axis=-2).repeat(stride, axis=-1)
    return up[..., : shape[0], : shape[1]]


def _sobel_block(block: np.ndarray, ksize: int) -> np.ndarray:
    t = torch.from_numpy(block.astype(np.int64))
    return label_sobel(t, ksize, ignore_index=None).numpy().astype(np.float32)


def sobel_map(labels: da.Array, ksize: int = 5) -> da.Array:
    """Sobel magnitude of a label map, block by block with a halo (exactly as on the whole map)."""
    depth = ksize // 2
    # no padding at the scene edges: the Sobel pads those itself, as on the whole map
    return labels.map_overlap(_sobel_block, depth=depth, boundary="none", dtype=np.float32, ksize=ksize)


class _FeatureTap:
    """Catches the features entering ECR, to derive every pixel's query (not just the hard ones)."""

    def __init__(self, module: torch.nn.Module):
        self.feats = None
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.feats = args[0].detach()

    def close(self):
        self.handle.remove()


@torch.no_grad()
def forward_holistic(model, image: np.ndarray, device: torch.device) -> dict:
    """One forward pass of the whole (c, H, W) normalised image; outputs as numpy arrays."""
    x = torch.from_numpy(image)[None].to(device)
    tap = _FeatureTap(model.ecr) if model.ecr is not None else None
    try:
        out = model(x, return_evidence=True)
    finally:
        if tap:
            tap.close()
    ev = out.evidence
    pred = out.logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
    result = {"pred": pred, "margin": ev.margin[0].float().cpu().numpy(),
              "hard": ev.hard_mask()[0].to(torch.uint8).cpu().numpy(), "stride": ev.output_stride}
    if ev.keys is not None and tap is not None:
        h, w = ev.feature_size
        n = h * w
        feats = tap.feats[0].flatten(1)  # (d, N)
        queries = model.ecr.queries(feats, n)
        # relative to uniform (x N) so float16 keeps the precision and 1.0 means "average pixel"
        keys = ev.keys[0].flatten(1) * n
        result["keys"] = keys.view(-1, h, w).half().cpu().numpy()
        result["queries"] = queries.view(-1, h, w).half().cpu().numpy()
        result["attention"] = (ev.attention_map(0) * n).float().cpu().numpy()
    return result


def _blend_window(size: int) -> np.ndarray:
    """Weights that fall off towards a window's edges, so overlapping windows blend smoothly."""
    ramp = np.minimum(np.arange(size) + 1, np.arange(size)[::-1] + 1).astype(np.float32)
    ramp = np.minimum(ramp / max(1, size // 4), 1.0)
    return np.outer(ramp, ramp)


@torch.no_grad()
def forward_sliced(model, image: np.ndarray, device: torch.device, crop: int = 512, overlap: float = 1 / 3,
                   progress: bool = True) -> dict:
    """Sliding-window prediction with blended logits: the crop-and-stitch baseline."""
    from tqdm.auto import tqdm

    c, h, w = image.shape
    crop_h, crop_w = min(crop, h), min(crop, w)
    step = max(1, int(round(crop * (1 - overlap))))
    ys = sorted({*range(0, max(1, h - crop_h + 1), step), h - crop_h})
    xs = sorted({*range(0, max(1, w - crop_w + 1), step), w - crop_w})
    acc = None
    weight = np.zeros((h, w), np.float32)
    win = _blend_window(crop)[:crop_h, :crop_w]
    for y, x in tqdm([(y, x) for y in ys for x in xs], desc="sliced predict", unit="crop", disable=not progress,
                     leave=False):
        t = torch.from_numpy(np.ascontiguousarray(image[:, y : y + crop_h, x : x + crop_w]))[None].to(device)
        logits = model(t).logits[0].float().cpu().numpy()
        if acc is None:
            acc = np.zeros((logits.shape[0], h, w), np.float32)
        acc[:, y : y + crop_h, x : x + crop_w] += logits * win
        weight[y : y + crop_h, x : x + crop_w] += win
    return {"pred": (acc / weight).argmax(0).astype(np.uint8), "crops": len(ys) * len(xs)}


def _map_tile(tile: int, stride: int) -> int:
    """Chunk side (feature px) of maps/keys and maps/queries for a scene of ``tile`` px chunks."""
    return max(16, tile // stride // 2 * 2)


def _map_array(group, key: str, shape: tuple[int, int, int], tile: int):
    """A (d, h, w) float16 map in the cache, chunked like maps/<key> (all channels per chunk) so
    that add_map reads whole chunks and a tile's write rewrites few; NaN until written."""
    return group.create_array(key, shape=shape, dtype="float16", chunks=(shape[0], tile, tile), fill_value=np.nan,
                              overwrite=True)


def _cache_outputs(scene: Scene, name: str, outputs: dict, job: dict) -> None:
    """What is still in memory into the cache, then mark it complete (maps streamed there are zarr arrays)."""
    group = scene.root.require_group(f"{CACHE}/{name}")
    s = outputs.get("stride", 1)
    for key, value in list(outputs.items()):
        if isinstance(value, np.ndarray) and key in MAPS:
            array = _map_array(group, key, value.shape, _map_tile(scene.tile, s))
            array[...] = value
            outputs[key] = array  # from here on read from the cache: the in-memory copy can go
        elif isinstance(value, np.ndarray):
            group.create_array(key, data=value, overwrite=True)
    group.attrs["elegantviz"] = {"complete": True, "stride": s, "job": job}


def _cached(scene: Scene, name: str, job: dict) -> dict | None:
    """The cached outputs of an interrupted run of the same job (checkpoint, mode), else None;
    the maps as zarr arrays."""
    path = f"{CACHE}/{name}"
    if path not in scene.root:
        return None
    meta = scene.root[path].attrs.get("elegantviz", {})
    if not meta.get("complete") or meta.get("job") != job:
        del scene.root[path]  # half-written, or another checkpoint or mode: not to be resumed
        return None
    group = scene.root[path]
    out = {key: group[key] if key in MAPS else np.asarray(group[key][...]) for key in group.array_keys()}
    out["stride"] = group.attrs["elegantviz"]["stride"]
    return out


def predict_scene(
    checkpoint: str | Path,
    scene_path: str | Path,
    mode: str = "holistic",
    name: str = "pred",
    crop: int = 512,
    overlap: float = 1 / 3,
    pairs: list[str] | None = None,
    device: str = "auto",
    progress: bool = True,
    on_stage: Callable[[str, int, int], None] | None = None,
    tile: int | None = None,
) -> dict:
    """Predict one scene store in place; returns a summary (seconds, what was written).

    ``tile`` (holistic only) runs the network unit by unit in halo tiles of that many pixels
    (elegantviz.engine.tiled): the same result as one whole-image pass, with a peak memory that
    stops growing with the scene except for the scene-sized maps themselves.

    ``on_stage(stage, done, total)``, when given, is called before each stage (``"forward"``, then
    each part, e.g. ``"labels/pred"``) and once more with ``"done"``, for a progress bar; an
    exception it raises stops the run between stages, where the store is valid and resumable.
    """
    if mode not in ("holistic", "sliced"):
        raise InputError(f"mode must be holistic or sliced, got {mode!r}")
    dev = pick_device(device)
    model, table, norm, cfg, ck = load_model(checkpoint, dev)
    scene = open_scene(scene_path, mode="a")
    if scene.shape[0] != ck["in_chans"]:
        raise InputError(f"{scene_path}: has {scene.shape[0]} bands, the model was trained on {ck['in_chans']} "
                         f"({', '.join(ck['bands'])})")
    level = cfg.data.level
    if level != 0:
        raise InputError(f"{checkpoint}: trained at pyramid level {level}; prediction at level 0 only for now")
    stages = {"done": 0, "total": 2 + ("gt" in scene.labels)
              + (3 + 3 * (getattr(model, "ecr", None) is not None) if mode == "holistic" else 0)}

    def stage(what: str) -> None:
        if on_stage is not None:
            on_stage(what, stages["done"], stages["total"])

    started = time.perf_counter()
    stage("forward")
    err = "error" if name == "pred" else f"error_{name}"
    parts = [("labels", name), ("labels", err)]
    if mode == "holistic" or name == "pred":  # evidence describes labels/pred: it goes when pred is redone
        parts += [("maps", m) for m in ("margin", "boundary", "keys", "queries", "attention")] + [("labels", "hard")]
    job = {"checkpoint": str(Path(checkpoint).resolve()), "mtime": Path(checkpoint).stat().st_mtime, "mode": mode,
           "tile": tile,
           "crop": crop if mode == "sliced" else None, "overlap": overlap if mode == "sliced" else None}
    outputs = _cached(scene, name, job)
    cached = outputs is not None
    if outputs is None:
        # a new forward pass: nothing an earlier run wrote may be kept or resumed beside it
        for kind, part in parts:
            scene.remove(kind, part)
        image, valid = norm.apply(np.asarray(scene.image(0).compute()), scene.nodata)
        if mode == "holistic" and tile:
            from elegantviz.engine.tiled import forward_tiled

            # the maps go straight into the cache: incomplete until _cache_outputs, so discarded if interrupted
            group = scene.root.require_group(f"{CACHE}/{name}")
            map_tile = _map_tile(scene.tile, model.output_stride)
            outputs = forward_tiled(model, image, dev, tile=tile, progress=progress,
                                    maps_to=lambda key, shape: _map_array(group, key, shape, map_tile))
        elif mode == "holistic":
            outputs = forward_holistic(model, image, dev)
        else:
            outputs = forward_sliced(model, image, dev, crop, overlap, progress)
        outputs["pred"][~valid] = table.ignore_index
        _cache_outputs(scene, name, outputs, job)
    stages["done"] += 1
    forward_s = time.perf_counter() - started
    shape = scene.shape[1:]
    tile = scene.tile
    written: list[str] = []

    def put(kind: str, part: str, write) -> None:
        """Write one part; after an interruption keep the parts that were finished."""
        stage(f"{kind}/{part}")
        stages["done"] += 1
        if cached and part in (scene.labels if kind == "labels" else scene.maps):
            written.append(f"{kind}/{part}")
            return
        write()
        written.append(f"{kind}/{part}")

    put("labels", name, lambda: scene.add_labels(name, da.from_array(outputs["pred"], chunks=tile), classes=table,
                                                  progress=progress))
    if mode == "holistic":
        s = outputs["stride"]
        put("maps", "margin", lambda: scene.add_map(
            "margin", _upsample_nearest(outputs["margin"], s, shape, tile), progress=progress,
            attrs={"kind": "margin", "stride": s}))
        put("labels", "hard", lambda: scene.add_labels(
            "hard", _upsample_nearest(outputs["hard"], s, shape, tile), classes=ClassTable.from_dict(HARD_TABLE),
            progress=progress))
        put("maps", "boundary", lambda: scene.add_map(
            "boundary", sobel_map(scene.label(name), cfg.loss.sobel_ksize), progress=progress,
            attrs={"kind": "boundary", "of": f"labels/{name}"}))
        if "keys" in outputs:
            for key in MAPS:
                put("maps", key, lambda key=key: scene.add_map(
                    key, da.from_zarr(outputs[key]), progress=progress, tile=_map_tile(tile, s),
                    attrs={"kind": key, "stride": s, "relative_to_uniform": key == "keys"}))
            put("maps", "attention", lambda: scene.add_map(
                "attention", _upsample_nearest(outputs["attention"], s, shape, tile), progress=progress,
                attrs={"kind": "attention", "of": "hard region", "stride": s, "relative_to_uniform": True}))
    if "gt" in scene.labels:
        pair_ids = parse_pairs(pairs, table)
        put("labels", err, lambda: scene.add_labels(
            err, error_map(scene.label("gt"), scene.label(name), pair_ids), classes=error_table(pair_ids, table),
            progress=progress))
    stage("done")
    del scene.root[f"{CACHE}/{name}"]
    if not list(scene.root[CACHE].keys()):
        del scene.root[CACHE]
    return {"scene": str(scene_path), "mode": mode, "forward_s": forward_s,
            "total_s": time.perf_counter() - started, "written": written, "resumed": cached,
            **({"crops": outputs["crops"]} if "crops" in outputs else {})}
