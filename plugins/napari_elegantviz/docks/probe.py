"""Attention probe dock: click a pixel, see the attention it pays to every pixel of the scene.

Needs only ``maps/keys`` and ``maps/queries`` (holistic prediction writes them), no model. A
click is a press and release without dragging, so panning still works; it is taken only
while the active layer is in pan/zoom mode, so painting labels never probes. The pixel's
query and the colour range are read in a worker (``layers.probe_layer``, a pyramid from
``elegantviz.analysis.attention.attention_levels``); the heat map layer and the marker are
touched on the GUI thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from elegantviz.io.schema import KEY, KEYS, QUERIES

from ..layers import probe_layer
from ..viewer_layers import find_layer, layer_tag, put_layer
from .base import SceneDock

if TYPE_CHECKING:
    import napari

CLICK_TOLERANCE_PX = 3  # a press and release closer than this on the canvas is a click, not a pan
MARKER_NAME = "probed pixel"
MARKER_PART = "probe/pixel"


def _has_attention_inputs(url: str) -> bool:
    from elegantviz.errors import ElegantvizError
    from elegantviz.io.store import open_scene

    try:
        maps = open_scene(url).maps
    except (ElegantvizError, OSError):  # moved or deleted since it was opened
        return False
    return KEYS in maps and QUERIES in maps


class AttentionProbe(SceneDock):
    """Choose a scene with stored keys and queries; every click shows that pixel's attention."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.worker = None
        self.requested: tuple[str, int, int] | None = None  # the latest click; older results are dropped
        self.shown: tuple[str, int, int] | None = None
        self._armed = True

        self.armed_box = QCheckBox("probe on click")
        self.armed_box.setChecked(True)
        self.armed_box.toggled.connect(lambda on: setattr(self, "_armed", on))
        self.marker_box = QCheckBox("mark the probed pixel")
        self.marker_box.setChecked(True)
        self.marker_box.toggled.connect(self._marker_toggled)
        self.status = QLabel("Click a pixel of the scene.")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("scene", self.scene_box)
        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addWidget(self.armed_box)
        box.addWidget(self.marker_box)
        box.addWidget(self.status)
        box.addStretch(1)

        self.viewer.mouse_drag_callbacks.append(self._on_press)
        self.follow_scenes()

    def sync_scenes(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if str(layer_tag(layer).get("part", "") if layer is not None else "").startswith("probe/"):
            return  # the probe's own layers change no store: skip reopening them all
        super().sync_scenes(event)

    def scene_choices(self) -> list[str]:
        return [url for url in super().scene_choices() if _has_attention_inputs(url)]

    def scenes_synced(self, scenes: list[str], changed: bool) -> None:
        if changed and not scenes:
            self.status.setText("No open scene has maps/keys and maps/queries: run a holistic prediction.")

    # -- clicks ---------------------------------------------------------------------------------
    def _on_press(self, viewer, event):
        """Mouse drag callback: probe where a click (no drag) lands, in pan/zoom mode only."""
        active = viewer.layers.selection.active
        if not self._armed or event.button != 1 or event.modifiers or (active is not None and
                                                                         active.mode != "pan_zoom"):
            return
        start, position = np.asarray(event.pos, float), tuple(event.position)
        yield
        while event.type == "mouse_move":
            yield
        if np.abs(np.asarray(event.pos, float) - start).max() <= CLICK_TOLERANCE_PX:
            self.probe_world(position)

    def probe_world(self, position) -> None:
        """Probe the scene pixel under a world position (of the scene's image layer)."""
        url = self.scene_url
        image = find_layer(self.viewer, url, "image") if url else None
        if image is None:
            return
        y, x = (int(round(v)) for v in image.world_to_data(position)[-2:])
        h, w = image.data[0].shape[:2] if image.multiscale else image.data.shape[:2]
        if 0 <= y < h and 0 <= x < w:
            self.probe_at(y, x)

    def probe_at(self, y: int, x: int) -> None:
        """Show the attention pixel (y, x) (level-0 image pixels) pays to the whole scene."""
        url = self.scene_url
        if not url:
            return
        from napari.qt.threading import create_worker

        from elegantviz.io.store import open_scene

        self.requested = (url, int(y), int(x))
        self.status.setText(f"Reading the attention of pixel ({y}, {x})…")
        worker = create_worker(probe_layer, open_scene(url), int(y), int(x), _start_thread=False,
                               _connect={"errored": self._failed})
        worker.returned.connect(lambda layer, key=self.requested: self._show(key, layer))
        self.worker = worker
        worker.finished.connect(lambda w=worker: self._worker_done(w))
        worker.start()

    def _worker_done(self, worker) -> None:
        if self.worker is worker:
            self.worker = None

    def _failed(self, exc: BaseException) -> None:
        self.status.setText(f"Attention probe failed: {exc}")

    def _show(self, key: tuple[str, int, int], layer_data: tuple) -> None:
        if key != self.requested:
            return  # a later click is on its way
        url, y, x = key
        layer = put_layer(self.viewer, layer_data)
        layer.colorbar.visible = layer.visible
        self._mark(url, y, x)
        self.shown = key
        lo, hi = layer_data[1]["contrast_limits"]
        self.status.setText(f"Attention of pixel ({y}, {x}) relative to the average pixel (1.0): "
                            f"{lo:.2f} to {hi:.2f}.")

    # -- the marker -----------------------------------------------------------------------------
    def _mark(self, url: str, y: int, x: int) -> None:
        marker = find_layer(self.viewer, url, MARKER_PART)
        if marker is not None:
            marker.data = np.array([[y, x]], float)
            return
        self.viewer.add_points(
            np.array([[y, x]], float), name=MARKER_NAME, symbol="cross", size=9, face_color="cyan",
            border_width=0, canvas_size_limits=(12, 40), visible=self.marker_box.isChecked(),
            metadata={KEY: {"scene": url, "part": MARKER_PART}},
        )  # a new points layer starts in pan/zoom mode, so the next click probes again

    def _marker_toggled(self, on: bool) -> None:
        url = self.scene_url
        marker = find_layer(self.viewer, url, MARKER_PART) if url else None
        if marker is not None:
            marker.visible = on
