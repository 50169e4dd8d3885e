"""Class legend dock: swatch, name, pixel share in view and in the scene, visibility per class.

napari has no legend for labels (napari issue #8630). Counting runs in napari thread workers
(the scene share is a generator with a progress bar and stops when the layer changes); the
table and the layer's colormap are touched only on the main thread, from the workers' signals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from elegantviz.analysis.shares import count_blocks, count_window, counting_level, shares, view_window
from elegantviz.classes import ClassTable
from elegantviz.io.schema import GT, KEY

from ..palette import label_colormap, table_from_layer
from .base import Dock, refill

if TYPE_CHECKING:
    import napari

VIEW_DEBOUNCE_MS = 250
COLUMNS = ("class", "in view", "in scene")


def layer_table(layer) -> ClassTable:
    """The class table of a Labels layer: from the store's metadata, else from its features."""
    stored = layer.metadata.get(KEY, {}).get("classes")
    if stored:
        return ClassTable.from_dict(stored)
    return table_from_layer(layer.features, layer.colormap, name=layer.name)


def view_box(center: tuple[float, float], zoom: float, canvas_hw: tuple[int, int]) -> np.ndarray:
    """World corners [[y0, x0], [y1, x1]] the camera shows (zoom = canvas pixels per world unit):
    from the camera, not from the last draw, so right even before napari has painted the view."""
    half = np.asarray(canvas_hw, np.float64) / (2 * zoom)
    c = np.asarray(center, np.float64)[-2:]
    return np.stack([c - half, c + half])


def _transparent_classes(layer, table: ClassTable) -> set[int]:
    """Classes the layer draws transparent already (0 of hard and error layers): shown unticked."""
    colors = getattr(layer.colormap, "color_dict", {})
    return {c.id for c in table.classes if c.id in colors and float(colors[c.id][3]) == 0.0}


def _levels(layer) -> list:
    return list(layer.data) if layer.multiscale else [layer.data]


def _swatch(color: tuple[int, int, int]) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(*color))
    return QIcon(pix)


class ClassLegend(Dock):
    """Legend of the chosen Labels layer; unticking a class makes it transparent."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.layer = None
        self.table: ClassTable | None = None
        self.hidden: set[int] = set()
        self.scene_counts: np.ndarray | None = None
        self.view_counts: np.ndarray | None = None
        self.scene_worker = None
        self.view_worker = None
        self._filling = False

        self.layer_box = QComboBox()
        self.status = QLabel("")
        self.grid = QTableWidget(0, len(COLUMNS))
        self.grid.setHorizontalHeaderLabels(COLUMNS)
        self.grid.verticalHeader().setVisible(False)
        self.grid.horizontalHeader().setStretchLastSection(True)
        self.grid.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        top = QHBoxLayout()
        top.addWidget(QLabel("labels"))
        top.addWidget(self.layer_box, 1)
        box = QVBoxLayout(self)
        box.addLayout(top)
        box.addWidget(self.grid)
        box.addWidget(self.status)

        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(VIEW_DEBOUNCE_MS)
        self._view_timer.timeout.connect(self.refresh_view_share)

        self.layer_box.currentTextChanged.connect(self._choose)
        self.grid.itemChanged.connect(self._toggled)
        self.viewer.scene.camera.events.center.connect(self._view_changed)
        self.viewer.scene.camera.events.zoom.connect(self._view_changed)
        self.follow_layers(self._sync_layers)

    # -- which layer ----------------------------------------------------------------------------
    def _labels_layers(self) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, Labels)]

    def _sync_layers(self, event=None) -> None:
        refill(self.layer_box, [ly.name for ly in self._labels_layers()], prefer=GT)
        keep = self.layer_box.currentText()
        if keep != (self.layer.name if self.layer is not None else ""):
            self._choose(keep)

    def _choose(self, name: str) -> None:
        if self.scene_worker is not None:
            self.scene_worker.quit()
        self.layer = self.viewer.layers[name] if name in self.viewer.layers else None
        self.table = layer_table(self.layer) if self.layer is not None else None
        self.hidden = _transparent_classes(self.layer, self.table) if self.layer is not None else set()
        self.scene_counts = self.view_counts = None
        self._fill()
        if self.layer is not None:
            self.layer.events.data.connect(self._view_changed)
            self.refresh_scene_share()
            self.refresh_view_share()

    # -- the table ------------------------------------------------------------------------------
    def _fill(self) -> None:
        self._filling = True
        classes = self.table.classes if self.table else ()
        self.grid.setRowCount(len(classes))
        for row, c in enumerate(classes):
            item = QTableWidgetItem(_swatch(c.color), c.name)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if c.id in self.hidden else Qt.CheckState.Checked)
            item.setData(Qt.ItemDataRole.UserRole, c.id)
            self.grid.setItem(row, 0, item)
            for col, counts in ((1, self.view_counts), (2, self.scene_counts)):
                text = f"{100 * shares(counts, self.table.ignore_index)[c.id]:.1f} %" if counts is not None else "…"
                self.grid.setItem(row, col, QTableWidgetItem(text))
        self._filling = False

    def share_text(self, class_name: str, column: str) -> str:
        """The text shown for a class in a column ("in view" or "in scene")."""
        row = self.table.names.index(class_name)
        return self.grid.item(row, COLUMNS.index(column)).text()

    def set_class_visible(self, class_name: str, visible: bool) -> None:
        row = self.table.names.index(class_name)
        self.grid.item(row, 0).setCheckState(Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked)

    def _toggled(self, item: QTableWidgetItem) -> None:
        if self._filling or item.column() != 0 or self.layer is None:
            return
        cid = int(item.data(Qt.ItemDataRole.UserRole))
        if item.checkState() == Qt.CheckState.Checked:
            self.hidden.discard(cid)
        else:
            self.hidden.add(cid)
        self.layer.colormap = label_colormap(self.table, self.hidden)

    # -- counting -------------------------------------------------------------------------------
    def refresh_scene_share(self) -> None:
        from napari.qt.threading import create_worker

        levels = _levels(self.layer)
        k = counting_level(levels)
        level = levels[k]
        total = int(np.prod(level.numblocks)) if hasattr(level, "numblocks") else 1
        source = level if hasattr(level, "numblocks") else _as_dask(level)
        self.status.setText(f"counting the scene at level {k}…")
        worker = create_worker(
            count_blocks, source, _progress={"total": total, "desc": f"class shares of {self.layer.name}"},
            _start_thread=False,
        )
        layer = self.layer
        worker.yielded.connect(lambda out, layer=layer: self._scene_counted(layer, out))
        worker.finished.connect(lambda layer=layer: self._scene_done(layer))
        self.scene_worker = worker
        worker.start()

    def _scene_counted(self, layer, out) -> None:
        if layer is not self.layer:
            return
        done, total, counts = out
        if done == total:  # partial counts would show wrong shares
            self.scene_counts = counts
            self._fill()

    def _scene_done(self, layer) -> None:
        if layer is self.layer:
            self.status.setText("")
            self._fill()

    def _view_changed(self, event=None) -> None:
        self._view_timer.start()

    def refresh_view_share(self) -> None:
        if self.layer is None:
            return
        from napari.qt.threading import create_worker

        levels = _levels(self.layer)
        camera = self.viewer.scene.camera
        world = view_box(camera.center, camera.zoom, self.viewer.canvas.size)
        box = np.stack([self.layer.world_to_data(np.r_[corner])[-2:] for corner in world])
        level_index, window = view_window(levels, np.sort(box, axis=0))
        level = levels[level_index]
        source = level if hasattr(level, "numblocks") else _as_dask(level)
        worker = create_worker(count_window, source, window, _start_thread=False)
        layer = self.layer
        worker.returned.connect(lambda counts, layer=layer: self._view_counted(layer, counts))
        self.view_worker = worker
        worker.start()

    def _view_counted(self, layer, counts: np.ndarray) -> None:
        if layer is self.layer:
            self.view_counts = counts
            self._fill()


def _as_dask(array):
    import dask.array as da

    return da.asarray(np.asarray(array), chunks=(1024, 1024))
