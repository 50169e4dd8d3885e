"""What the docks share: the viewer, following its layer list, and combo boxes (of scenes or
layers) that keep the user's choice when the list changes. Main thread only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from qtpy.QtWidgets import QComboBox, QWidget

from ..viewer_layers import scenes_in_viewer

if TYPE_CHECKING:
    import napari


def refill(box: QComboBox, items: list[str], prefer: str = "") -> bool:
    """Make ``items`` the choices of ``box`` without emitting signals, keeping the current one if
    it is still there, else ``prefer`` if there, else the first. True when the items changed."""
    if items == [box.itemText(i) for i in range(box.count())]:
        return False
    current = box.currentText()
    keep = current if current in items else (prefer if prefer in items else (items[0] if items else ""))
    box.blockSignals(True)
    box.clear()
    box.addItems(items)
    if keep:
        box.setCurrentText(keep)
    box.blockSignals(False)
    return True


class Dock(QWidget):
    """A dock widget on one napari viewer (napari passes it as ``napari_viewer``)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer

    def follow_layers(self, callback: Callable, removed: bool = True) -> None:
        """Call ``callback(event)`` when a layer is added (and removed), and once now."""
        self.viewer.layers.events.inserted.connect(callback)
        if removed:
            self.viewer.layers.events.removed.connect(callback)
        callback()


class SceneDock(Dock):
    """A dock that acts on one open scene store, chosen in ``scene_box`` among the scenes whose
    layers the viewer shows (the reader tags every layer with its scene)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.scene_box = QComboBox()

    @property
    def scene_url(self) -> str:
        return self.scene_box.currentText()

    def scene_choices(self) -> list[str]:
        """The scenes this dock can act on (all open ones unless a dock narrows them)."""
        return scenes_in_viewer(self.viewer)

    def sync_scenes(self, event=None) -> None:
        scenes = self.scene_choices()
        changed = refill(self.scene_box, scenes)
        self.scenes_synced(scenes, changed)

    def scenes_synced(self, scenes: list[str], changed: bool) -> None:
        """Called after every sync of ``scene_box``."""

    def follow_scenes(self) -> None:
        """Keep ``scene_box`` in step with the viewer's layers (call last in ``__init__``)."""
        self.follow_layers(self.sync_scenes)
