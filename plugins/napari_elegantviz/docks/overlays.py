"""Overlays dock: show, hide and style the evidence layers of a scene.

Rows appear for whichever overlay layers are present (``labels/hard``, ``labels/error``,
``maps/boundary``, ``maps/margin``, ``maps/attention`` and the Sobel boundaries this widget
adds). "Add boundary" draws the Sobel boundary of a labels layer lazily
(``elegantviz.analysis.sobel.boundary_levels``):
nothing is computed until napari asks for the chunks on screen, so it needs no worker.
Everything here runs on the main thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from elegantviz.analysis.sobel import boundary_levels
from elegantviz.io.schema import ATTENTION, BOUNDARY, ERROR, HARD, HARD_NAMES, KEY, LABELS, MAPS, MARGIN, part_path

from ..layers import PROBE_PART
from ..palette import HARD_COLOUR, hard_colormap, hard_table
from .base import Dock, refill

if TYPE_CHECKING:
    import napari

BOUNDARY_PART = "boundary"  # the Sobel boundary this dock adds: not a stored part
OVERLAY_PARTS = (part_path(LABELS, HARD), part_path(LABELS, ERROR), part_path(MAPS, BOUNDARY), part_path(MAPS, MARGIN),
                 part_path(MAPS, ATTENTION), BOUNDARY_PART, PROBE_PART)
HARD_COLOURS = ("magenta", "yellow", "cyan", "red", "white", "orange")
MAP_COLORMAPS = ("inferno", "magma", "viridis", "turbo", "gray", "yellow", "magenta", "cyan", "red")
BOUNDARY_SUFFIX = " boundary"


def overlay_part(layer) -> str | None:
    part = layer.metadata.get(KEY, {}).get("part")
    return part if part in OVERLAY_PARTS else None


class Overlays(Dock):
    """One row per overlay layer: visible, opacity, colour (hard region) or colormap (maps)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.rows: dict[str, dict[str, QWidget]] = {}

        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.source_box = QComboBox()
        self.add_boundary_button = QPushButton("Add boundary")
        self.add_boundary_button.setToolTip("Sobel boundary of the chosen labels, computed lazily on screen")
        self.add_boundary_button.clicked.connect(lambda: self.add_boundary(self.source_box.currentText()))
        add_row = QHBoxLayout()
        add_row.addWidget(self.source_box, 1)
        add_row.addWidget(self.add_boundary_button)
        self.empty_note = QLabel("No overlay layers yet: prediction adds hard, margin, attention and error.")
        self.empty_note.setWordWrap(True)
        box = QVBoxLayout(self)
        box.addWidget(self.grid_host)
        box.addWidget(self.empty_note)
        box.addLayout(add_row)
        box.addStretch(1)

        self.follow_layers(self._rebuild)

    # -- rows -----------------------------------------------------------------------------------
    def _rebuild(self, event=None) -> None:
        while self.grid.count():
            w = self.grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.rows = {}
        layers = [ly for ly in self.viewer.layers if overlay_part(ly)]
        for row, layer in enumerate(layers):
            self._add_row(row, layer)
        self.empty_note.setVisible(not layers)
        sources = [ly.name for ly in self.viewer.layers if isinstance(ly, Labels) and not overlay_part(ly)]
        refill(self.source_box, sources)

    def _add_row(self, row: int, layer) -> None:
        visible = QCheckBox(layer.name)
        visible.setChecked(layer.visible)
        visible.toggled.connect(lambda on, ly=layer: self.set_visible(ly, on))
        opacity = QSlider(Qt.Orientation.Horizontal)
        opacity.setRange(0, 100)
        opacity.setValue(int(round(layer.opacity * 100)))
        opacity.valueChanged.connect(lambda v, ly=layer: setattr(ly, "opacity", v / 100))
        style = QComboBox()
        part = overlay_part(layer)
        if part == part_path(LABELS, HARD):
            style.addItems(HARD_COLOURS)
            style.setCurrentText(layer.metadata[KEY].get("colour", HARD_COLOUR))
            style.currentTextChanged.connect(lambda c, ly=layer: self.set_hard_colour(ly, c))
        elif isinstance(layer, Image):
            names = list(MAP_COLORMAPS)
            if layer.colormap.name not in names:
                names.insert(0, layer.colormap.name)
            style.addItems(names)
            style.setCurrentText(layer.colormap.name)
            style.currentTextChanged.connect(lambda c, ly=layer: setattr(ly, "colormap", c))
        else:
            style.setEnabled(False)  # error labels keep their confusion-pair colours
        self.grid.addWidget(visible, row, 0)
        self.grid.addWidget(opacity, row, 1)
        self.grid.addWidget(style, row, 2)
        self.rows[layer.name] = {"visible": visible, "opacity": opacity, "style": style}

    # -- actions --------------------------------------------------------------------------------
    def set_visible(self, layer, on: bool) -> None:
        """Show or hide an overlay; a map brings its colorbar along (a heat map needs its scale)."""
        layer.visible = on
        if isinstance(layer, Image):
            layer.colorbar.visible = on

    def set_hard_colour(self, layer, colour: str) -> None:
        names = tuple(c["name"] for c in layer.metadata[KEY].get("classes", {}).get("classes", []))
        names = names if len(names) == 2 else HARD_NAMES
        layer.colormap = hard_colormap(colour, names)
        layer.metadata[KEY]["colour"] = colour
        layer.metadata[KEY]["classes"] = hard_table(colour, names).to_dict()  # the legend's swatches

    def add_boundary(self, labels_name: str):
        """Add (or show again) the lazy Sobel boundary of a labels layer as an image layer."""
        if labels_name not in self.viewer.layers:
            return None
        name = labels_name + BOUNDARY_SUFFIX
        if name in self.viewer.layers:
            self.viewer.layers[name].visible = True
            return self.viewer.layers[name]
        source = self.viewer.layers[labels_name]
        levels = list(source.data) if source.multiscale else [source.data]
        import dask.array as da

        levels = [lvl if isinstance(lvl, da.Array) else da.from_array(lvl, chunks=512) for lvl in levels]
        meta = dict(source.metadata.get(KEY, {}))
        meta.update(part=BOUNDARY_PART, of=labels_name)
        meta.pop("classes", None)
        return self.viewer.add_image(
            boundary_levels(levels) if len(levels) > 1 else boundary_levels(levels)[0],
            multiscale=len(levels) > 1,
            name=name,
            colormap="yellow",
            blending="additive",
            contrast_limits=(0, 1),
            scale=source.scale,
            translate=source.translate,
            metadata={KEY: meta},
        )
