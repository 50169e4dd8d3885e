"""Finding scenes among the viewer's layers, and adding or replacing a scene part's layer.

The reader tags every layer with ``metadata['elegantviz'] = {'scene': url, 'part': ...}``;
the docks that act on "the open scene" (Predict, Attention probe) look it up here rather than
asking the user for a path again. Call these on the main thread only: they touch layers.
"""

from __future__ import annotations

from elegantviz.io.schema import KEY


def layer_tag(layer) -> dict:
    """What the reader (or a dock) recorded about a layer's scene and part; {} for other layers."""
    return layer.metadata.get(KEY, {}) if isinstance(layer.metadata, dict) else {}


def scenes_in_viewer(viewer) -> list[str]:
    """Scene store urls of the open layers, in the order they were opened."""
    seen: list[str] = []
    for layer in viewer.layers:
        url = layer_tag(layer).get("scene")
        if url and url not in seen:
            seen.append(url)
    return seen


def find_layer(viewer, scene_url: str, part: str):
    """The layer showing ``part`` of the scene, or None."""
    for layer in viewer.layers:
        tag = layer_tag(layer)
        if tag.get("scene") == scene_url and tag.get("part") == part:
            return layer
    return None


def put_layer(viewer, layer_data: tuple, keep_look: bool = True):
    """Add a layer-data tuple, or replace the layer showing the same scene part in place.

    A replaced layer keeps its place in the stack, its name, and (``keep_look``) whether it
    was visible and how opaque: a refresh brings new pixels, not a new look.
    """
    from napari.layers import Layer

    data, kwargs, layer_type = layer_data
    kwargs = dict(kwargs)
    tag = kwargs.get("metadata", {}).get(KEY, {})
    old = find_layer(viewer, tag.get("scene"), tag.get("part")) if tag else None
    if old is None:
        new = Layer.create(data, kwargs, layer_type)
        viewer.layers.append(new)
        return new
    kwargs["name"] = old.name
    if keep_look:
        kwargs.update(visible=old.visible, opacity=old.opacity)
    new = Layer.create(data, kwargs, layer_type)
    index = [ly.name for ly in viewer.layers].index(old.name)  # by name: widgets see proxies of layers
    viewer.layers.pop(index)
    viewer.layers.insert(index, new)
    return new
