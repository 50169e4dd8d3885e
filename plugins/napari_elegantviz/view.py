"""``elegantviz view SCENE.zarr`` and notebooks: napari with the scene and the plugin's docks.

napari is imported when a viewer is opened, not with this module."""

from __future__ import annotations

WIDGETS = ("Class legend", "Overlays", "Error navigator")
PLUGIN = "elegantviz"


def open_viewer(path: str, show: bool = True):
    """A napari viewer showing the scene store with the legend, overlays and navigator docked."""
    import napari

    from elegantviz.io.store import open_scene

    open_scene(path)  # a clear error for a missing or unfinished store, before a window opens
    viewer = napari.Viewer(title=f"elegantviz: {path}", show=show)
    viewer.open(str(path), plugin=PLUGIN)
    for name in WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name != WIDGETS[0])
    return viewer


def view_scene(path: str) -> None:
    """Open the scene in napari and run the event loop until the window closes."""
    import napari

    open_viewer(path)
    napari.run()
