"""The plugin's dock widgets, one module each, on ``base.Dock`` (napari builds them from
``napari.yaml``): ``legend``, ``overlays``, ``navigator``, ``predict``, ``probe``."""
