"""Inference strategies: how a trained network is run over a scene.

Each strategy is a small callable ``strategy(model, image, device, progress, scratch) ->
Prediction`` with a ``job()`` that says what makes its result differ (for resuming):

- :class:`~elegantviz.inference.whole.WholeImage`: the whole scene in one pass (holistic);
- :class:`~elegantviz.inference.sliced.SlidingWindows`: blended sliding windows (crop-and-stitch);
- :class:`~elegantviz.inference.tiles.HaloTiles`: the whole-scene result, unit by unit in halo
  tiles, with a bounded peak.

A new model family plugs in a strategy here; :func:`elegantviz.engine.predict.predict_scene`
only handles the store, the cache and resuming.
"""

from __future__ import annotations

from elegantviz.errors import InputError

MODES = ("holistic", "sliced")


def make_strategy(mode: str = "holistic", crop: int = 512, overlap: float = 1 / 3, tile: int | None = None):
    """The strategy for ``predict --mode``: holistic (whole, or halo tiles with ``tile``) or sliced."""
    if mode not in MODES:
        raise InputError(f"mode must be holistic or sliced, got {mode!r}")
    if mode == "sliced":
        from elegantviz.inference.sliced import SlidingWindows

        return SlidingWindows(crop, overlap)
    if tile is not None:
        from elegantviz.inference.tiles import HaloTiles

        return HaloTiles(tile)
    from elegantviz.inference.whole import WholeImage

    return WholeImage()
