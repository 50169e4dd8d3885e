"""Error navigator dock: the confusion regions of an evaluation, largest first; select to go there.

Reads the regions file ``elegantviz evaluate`` writes (``elegantviz.analysis.regions``:
``NAME.errors.json`` beside ``NAME.zarr`` is loaded by itself when a scene is open, else the
regions evaluation kept in ``labels/error``; any regions file or an evaluation ``report.json``
loads through the Load button). Selecting a row centres the camera on the region, zooms
so it fills most of the canvas and outlines it in a Shapes layer. Main thread only: the file is
small and the camera and layers are Qt-side objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from elegantviz.analysis.regions import Region, fold_small, load_regions, regions_in_store, regions_path
from elegantviz.errors import ElegantvizError
from elegantviz.io.schema import ERROR, KEY, LABELS, MIN_REGION_AREA

from ..viewer_layers import scenes_in_viewer
from .base import Dock

if TYPE_CHECKING:
    import napari

ALL_PAIRS = "all pairs"
HIGHLIGHT_LAYER = "error region"
FILL_FRACTION = 0.6  # the region spans this much of the canvas after zooming
COLUMNS = ("pair", "area", "bbox (y0, x0, y1, x1)")


class ErrorNavigator(Dock):
    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.regions: list[Region] = []
        self.shown: list[Region] = []
        self.path: Path | None = None

        self.file_label = QLabel("no regions loaded")
        self.file_label.setWordWrap(True)
        self.load_button = QPushButton("Load…")
        self.load_button.clicked.connect(self._ask_path)
        self.pair_box = QComboBox()
        self.pair_box.currentTextChanged.connect(lambda _: self._fill())
        self.min_area = QSpinBox()
        self.min_area.setRange(1, 10**9)
        self.min_area.setValue(MIN_REGION_AREA)
        self.min_area.setSuffix(" px")
        self.min_area.setToolTip("regions smaller than this are folded away")
        self.min_area.valueChanged.connect(lambda _: self._fill())
        self.folded_label = QLabel("")
        self.grid = QTableWidget(0, len(COLUMNS))
        self.grid.setHorizontalHeaderLabels(COLUMNS)
        self.grid.verticalHeader().setVisible(False)
        self.grid.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.grid.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.grid.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.grid.itemSelectionChanged.connect(self._selected)
        top = QHBoxLayout()
        top.addWidget(self.file_label, 1)
        top.addWidget(self.load_button)
        box = QVBoxLayout(self)
        box.addLayout(top)
        filters = QHBoxLayout()
        filters.addWidget(self.pair_box, 1)
        filters.addWidget(QLabel("min area"))
        filters.addWidget(self.min_area)
        box.addLayout(filters)
        box.addWidget(self.folded_label)
        box.addWidget(self.grid)

        self.follow_layers(self._look_for_default, removed=False)

    # -- loading --------------------------------------------------------------------------------
    def _look_for_default(self, event=None) -> None:
        if self.path is not None:
            return
        scenes = sorted(scenes_in_viewer(self.viewer))
        for scene in scenes:
            if regions_path(scene).is_file():
                self.load(regions_path(scene))
                return
        for scene in scenes:
            regions = regions_in_store(scene)
            if regions:
                self.show_regions(regions, f"{Path(scene).name} {LABELS}/{ERROR}")
                self.path = Path(scene)
                return

    def _ask_path(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Error regions", "", "Error regions (*.json)")
        if path:
            self.load(path)

    def load(self, path: str | Path) -> None:
        try:
            self.regions = load_regions(path)
        except ElegantvizError as e:
            self.file_label.setText(str(e))
            return
        self.path = Path(path)
        self.show_regions(self.regions, self.path.name)

    def show_regions(self, regions: list[Region], source: str) -> None:
        self.regions = regions
        self.file_label.setText(f"{source}: {len(self.regions)} regions")
        pairs = sorted({r.pair for r in self.regions})
        self.pair_box.blockSignals(True)
        self.pair_box.clear()
        self.pair_box.addItems([ALL_PAIRS, *pairs])
        self.pair_box.blockSignals(False)
        self._fill()

    def _fill(self) -> None:
        pair = self.pair_box.currentText()
        of_pair = [r for r in self.regions if pair in ("", ALL_PAIRS) or r.pair == pair]
        self.shown, folded = fold_small(of_pair, self.min_area.value())
        self.folded_label.setText(f"{len(self.shown)} regions shown; {folded} under {self.min_area.value()} px "
                                  "folded away" if folded else f"{len(self.shown)} regions shown")
        self.grid.blockSignals(True)
        self.grid.clearSelection()
        self.grid.setRowCount(len(self.shown))
        for row, r in enumerate(self.shown):
            for col, text in enumerate((r.pair, f"{r.area:,d}", ", ".join(map(str, r.bbox)))):
                self.grid.setItem(row, col, QTableWidgetItem(text))
        self.grid.blockSignals(False)

    # -- going there ----------------------------------------------------------------------------
    def select_row(self, row: int) -> None:
        """Select a row as a click would (going there even if it was selected already)."""
        self.grid.clearSelection()
        self.grid.selectRow(row)

    def _selected(self) -> None:
        rows = {i.row() for i in self.grid.selectedItems()}
        if rows:
            self.go_to(self.shown[min(rows)])

    def go_to(self, region: Region) -> None:
        """Centre and zoom the camera on the region and outline it."""
        y0, x0, y1, x1 = region.bbox
        camera = self.viewer.scene.camera
        camera.center = (region.centre[0] - 0.5, region.centre[1] - 0.5)
        canvas_h, canvas_w = self.viewer.canvas.size
        camera.zoom = FILL_FRACTION * min(canvas_h / (y1 - y0), canvas_w / (x1 - x0))
        self._highlight(region)

    def _highlight(self, region: Region) -> None:
        y0, x0, y1, x1 = region.bbox
        box = np.array([[y0 - 0.5, x0 - 0.5], [y1 - 0.5, x1 - 0.5]], np.float64)
        edge_width = max(1.0, 0.02 * max(y1 - y0, x1 - x0))  # data units: a few screen pixels once zoomed
        if HIGHLIGHT_LAYER in self.viewer.layers:
            layer = self.viewer.layers[HIGHLIGHT_LAYER]
            layer.data = [box]
            layer.shape_type = ["rectangle"]
            layer.visible = True
        else:
            self.viewer.add_shapes(
                [box], shape_type="rectangle", name=HIGHLIGHT_LAYER, edge_color="red", face_color="transparent",
                edge_width=edge_width, metadata={KEY: {"part": HIGHLIGHT_LAYER}},
            )
        self.viewer.layers[HIGHLIGHT_LAYER].edge_width = [edge_width]
