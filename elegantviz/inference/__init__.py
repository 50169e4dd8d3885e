"""Inference strategies: how a trained network is run over a scene.

Each strategy is a small callable ``strategy(model, image, device, progress, scratch) ->
Prediction`` with a ``job()`` that says what makes its result differ (for resuming):

- :class:`~elegantviz.inference.whole.WholeImage`: the whole scene in one pass (holistic);
- :class:`~elegantviz.inference.sliced.SlidingWindows`: blended sliding windows (crop-and-stitch);
- :class:`~elegantviz.inference.tiles.HaloTiles`: the whole-scene result, unit by unit in halo
  tiles, with a bounded peak;
- :class:`~elegantviz.inference.patches.PatchModelRun`: a patch-based model's (GLNet's, FCtL's)
  own global pass and patch grid, with optional D4 test-time augmentation.

A new model family plugs in a strategy here; :func:`elegantviz.engine.predict.predict_scene`
only handles the store, the cache and resuming.
"""

from __future__ import annotations

from elegantviz.errors import InputError

MODES = ("holistic", "sliced")


def make_strategy(mode: str = "holistic", crop: int = 512, overlap: float = 1 / 3, tile: int | None = None,
                  tta: bool = False, patch_based: bool = False):
    """The strategy for ``predict --mode``: holistic (whole, or halo tiles with ``tile``; a patch
    model's own patch grid when ``patch_based``) or sliced. ``tta``: patch models only."""
    if mode not in MODES:
        raise InputError(f"mode must be holistic or sliced, got {mode!r}")
    if tta and (mode != "holistic" or not patch_based):
        raise InputError("--tta: 8x D4 test-time augmentation runs a patch-based model's own inference "
                         "(GLNet, FCtL; FCtL's official test scripts use it), in holistic mode")
    if patch_based and mode == "sliced":
        raise InputError("--mode sliced: a patch-based model (GLNet, FCtL) already runs over its own patch grid, "
                         "with its global view of the scene; predict it in holistic mode")
    if patch_based:
        if tile is not None:
            raise InputError("--tile runs ElegantSeg unit by unit; a patch-based model (GLNet, FCtL) runs over "
                             "its own patch grid: leave --tile out")
        from elegantviz.inference.patches import PatchModelRun

        return PatchModelRun(tta)
    if mode == "sliced":
        from elegantviz.inference.sliced import SlidingWindows

        return SlidingWindows(crop, overlap)
    if tile is not None:
        from elegantviz.inference.tiles import HaloTiles

        return HaloTiles(tile)
    from elegantviz.inference.whole import WholeImage

    return WholeImage()
