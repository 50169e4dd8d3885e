"""What every benchmark script does at the end: print its figures and write them as JSON."""

from __future__ import annotations

import json
from pathlib import Path

# Appended to a child script: its own peak RSS (getrusage would include what the forking parent held).
CHILD_PEAK_RSS = 'next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024'


def report(result: dict, out: str | Path) -> None:
    width = max(map(len, result)) + 2
    for k, v in result.items():
        print(f"{k:{width}s} {v:.3f}" if isinstance(v, float) else f"{k:{width}s} {v}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))


def models_picture(url: str, names: list[str], path: Path, errors: bool = False) -> None:
    """The scene, its ground truth and each model's labels (and, with ``errors``, its error map)
    side by side, as a PNG: the comparison benchmarks' picture."""
    import matplotlib

    matplotlib.use("Agg")
    from elegantviz.analysis.gallery import scene_rgb
    from elegantviz.io.store import open_scene
    from elegantviz.viz import plots

    scene = open_scene(url)
    panels = {"image": scene_rgb(scene), "ground truth": plots.colorize(scene.label("gt").compute(), scene.classes)}
    for name in names:
        panels[name] = plots.colorize(scene.label(name).compute(), scene.classes)
        if errors and f"error_{name}" in scene.labels:
            err = f"error_{name}"
            panels[f"{name} errors"] = plots.colorize(scene.label(err).compute(), scene.label_classes(err))
    ncols = 4 if errors else len(panels)  # with errors: image, truth, then each model and its errors
    fig = plots.panels_figure(panels, ncols=ncols, size=3.5 if errors else 4.0)
    fig.savefig(path, dpi=80, bbox_inches="tight")
