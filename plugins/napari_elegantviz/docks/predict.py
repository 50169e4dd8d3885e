"""Predict dock: run a checkpoint over the open scene in a worker, with progress and cancel.

The prediction runs in a napari generator worker (``prediction``); the GUI thread only gets
its stages, moves the progress bar and adds each new part's layer as soon as the part is
written, using the reader's own layer functions. A part that replaces one the store already had
is swapped in when the whole run ends (elegantviz.engine.predict), so its layer is refreshed
then, and layers of parts the run removed go. Cancel stops at the next stage boundary and keeps
what is finished; running again resumes from the network output cached in the store.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..cache import configured_checkpoint
from ..prediction import DONE, Stage, prediction_running, prediction_stages
from ..viewer_layers import layer_tag, put_layer
from .base import SceneDock

if TYPE_CHECKING:
    import napari

MODES = ("holistic", "sliced")
MODE_TIPS = {"holistic": "the whole scene through the network in one piece, with the model's evidence",
             "sliced": "sliding windows with blended logits (the crop-and-stitch baseline): labels only"}


def stored_parts(scene_url: str) -> list[str]:
    """The finished labels and maps of a scene store, as parts (``labels/pred``)."""
    from elegantviz.io.store import open_scene

    scene = open_scene(scene_url)
    return [f"labels/{n}" for n in scene.labels] + [f"maps/{n}" for n in scene.maps]


class Predict(SceneDock):
    """Checkpoint, mode and scene in; pred, hard, error, margin, boundary, attention layers out."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.worker = None
        self.cancel_event: threading.Event | None = None
        self.progress_bar = None
        self.stage_names: dict[int, str] = {}  # stage index -> name, for the stages seen so far
        self.added: list[str] = []  # parts whose layers this run added or refreshed
        self.replaced: set[str] = set()  # parts the store had when the run started: refreshed at its end
        self.summary: dict | None = None
        self._pending: list[Callable[[], None]] = []
        self._handling = False

        self.checkpoint_edit = QLineEdit(str(configured_checkpoint() or ""))
        self.checkpoint_edit.setPlaceholderText("a .pt written by `elegantviz train`")
        browse = QPushButton("…")
        browse.setToolTip("choose a checkpoint file")
        browse.clicked.connect(self._browse)
        self.mode_box = QComboBox()
        for i, mode in enumerate(MODES):
            self.mode_box.addItem(mode)
            self.mode_box.setItemData(i, MODE_TIPS[mode], 3)  # 3 = Qt.ToolTipRole
        self.run_button = QPushButton("Predict")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        checkpoint_row = QHBoxLayout()
        checkpoint_row.addWidget(self.checkpoint_edit, 1)
        checkpoint_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("scene", self.scene_box)
        form.addRow("checkpoint", checkpoint_row)
        form.addRow("mode", self.mode_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addLayout(buttons)
        box.addWidget(self.status)
        box.addStretch(1)

        self.follow_scenes()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def scenes_synced(self, scenes: list[str], changed: bool) -> None:
        self.run_button.setEnabled(bool(scenes) and not self.running)

    def _browse(self) -> None:
        start = self.checkpoint_edit.text() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", start, "checkpoints (*.pt *.pth);;all files (*)")
        if path:
            self.checkpoint_edit.setText(path)

    # -- running --------------------------------------------------------------------------------
    def run(self) -> None:
        """Start predicting the chosen scene (no-op while a prediction runs)."""
        if self.running:
            return
        if prediction_running():
            self.status.setText("The previous prediction is still finishing its current stage; try again shortly.")
            return
        scene = self.scene_url
        checkpoint = self.checkpoint_edit.text().strip()
        if not scene:
            self.status.setText("Open a scene store first.")
            return
        if not Path(checkpoint).is_file():
            self.status.setText(f"No checkpoint file at {checkpoint!r}.")
            return
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.stage_names, self.added, self.summary = {}, [], None
        self.replaced = set(stored_parts(scene))
        self.cancel_event = threading.Event()
        self.progress_bar = progress(total=0, desc="predict: loading the model")
        worker = create_worker(prediction_stages, checkpoint, scene, self.mode_box.currentText(), self.cancel_event,
                               _start_thread=False, _connect={"errored": self._failed})
        worker.yielded.connect(lambda stage, scene=scene: self._stage_started(scene, stage))
        worker.returned.connect(self._returned)
        # napari's own cancel (the activity dock) quits the worker: stop the prediction process too
        worker.aborted.connect(self.cancel_event.set)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Predicting {scene} ({self.mode_box.currentText()})…")
        worker.start()

    def cancel(self) -> None:
        """Stop after the stage running now; what is written stays valid and resumable."""
        if self.cancel_event is not None and self.running:
            self.cancel_event.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling after the current stage…")

    def _in_order(self, handle: Callable[[], None]) -> None:
        """Handle the worker's signals one at a time, in order: adding a layer or moving the
        progress bar can run the event loop, which would deliver the next signal mid-way."""
        self._pending.append(handle)
        if self._handling:
            return
        self._handling = True
        try:
            while self._pending:
                self._pending.pop(0)()
        finally:
            self._handling = False

    def _stage_started(self, scene: str, stage: Stage) -> None:
        self._in_order(lambda: self._handle_stage(scene, stage))

    def _handle_stage(self, scene: str, stage: Stage) -> None:
        self.stage_names[stage.done] = stage.name
        bar = self.progress_bar
        if bar is not None:
            bar.total = max(stage.total, stage.done)
            bar.update(stage.done - bar.n)
            bar.set_description("predict: finished" if stage.name == DONE else f"predict: {stage.name}")
        self._show_finished(scene, stage.done)

    def _show_finished(self, scene_url: str, done: int) -> None:
        """Show the parts among the first ``done`` stages that have no fresh layer yet."""
        for index in range(done):
            if index in self.stage_names:
                self._show_part(scene_url, self.stage_names[index])

    def _show_part(self, scene_url: str, part: str) -> None:
        """Add or refresh the layer of a part just written (the prediction's labels shown)."""
        if "/" not in part or part in self.added or part in self.replaced:
            return
        self.added.append(part)
        from elegantviz.io.store import open_scene

        from ..layers import part_layer

        is_prediction = part == self.stage_names.get(1)  # the stage after the forward pass
        layer = part_layer(open_scene(scene_url), part, visible=is_prediction)
        if layer is not None:
            put_layer(self.viewer, layer, keep_look=not is_prediction)

    def _show_swapped(self, scene_url: str, written: list[str]) -> None:
        """At the end of a run: refresh the layers of the parts it replaced, in the order written,
        and drop the layers of parts it removed (old evidence it does not write again)."""
        now = set(stored_parts(scene_url))
        for layer in [ly for ly in self.viewer.layers if layer_tag(ly).get("scene") == scene_url]:
            part = layer_tag(layer).get("part", "")
            if "/" in part and part not in now:
                self.viewer.layers.remove(layer)
        self.replaced -= set(written)
        for part in written:
            self._show_part(scene_url, part)

    def _returned(self, summary: dict) -> None:
        self._in_order(lambda: self._handle_returned(summary))

    def _handle_returned(self, summary: dict) -> None:
        self.summary = summary
        if summary.get("cancelled"):
            self._show_finished(summary["scene"], summary["done"])
            self.status.setText(f"Cancelled before {summary['before']} ({summary['done']} of {summary['total']} "
                                "stages done). Finished parts are shown; predict again to resume without "
                                "running the network again.")
        else:
            self._show_swapped(summary["scene"], summary["written"])
            resumed = " (resumed)" if summary.get("resumed") else ""
            self.status.setText(f"Predicted in {summary['total_s']:.1f} s{resumed}: "
                                f"{', '.join(summary['written'])}.")

    def _failed(self, exc: BaseException) -> None:
        self._in_order(lambda: self._handle_failure(exc))

    def _handle_failure(self, exc: BaseException) -> None:
        self.summary = {"error": f"{type(exc).__name__}: {exc}"}
        self.status.setText(f"Prediction failed: {exc}")

    def _finished(self) -> None:
        self._in_order(self._handle_finished)

    def _handle_finished(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.close()
            self.progress_bar = None
        self.worker = None
        self.cancel_button.setEnabled(False)
        self.run_button.setEnabled(bool(self.scene_url))
