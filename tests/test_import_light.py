"""napari imports the package at start-up to find the manifest: it must stay light."""

import subprocess
import sys

HEAVY = ("torch", "napari", "PyQt6", "PyQt5", "PySide6", "qtpy", "timm", "vispy")


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_import_elegantviz_pulls_in_no_torch_qt_or_napari():
    loaded = _modules_after("import elegantviz")
    assert "elegantviz" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_import_plugin_package_is_light():
    loaded = _modules_after("import napari_elegantviz")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_lazy_public_api_resolves():
    import elegantviz

    assert callable(elegantviz.open_scene) and callable(elegantviz.convert_raster)
    assert callable(elegantviz.synthesize_riverworld)
    assert callable(elegantviz.load_model) and callable(elegantviz.predict_scene)
