"""The notebooks' controls, declared once as magicgui options and run as ipywidgets.

Each control is a dict of magicgui options (widget type, range, label). The same dict makes a
Qt widget in a napari dock and, after ``magicgui.use_app("ipynb")`` (``setup_notebook``), an
ipywidget in a notebook, so a slider's range and meaning live here only. ``interactive`` turns
a drawing function (keyword arguments in, matplotlib Figure out) into live controls above
the picture it draws.

The region picker lists the regions of ``elegantviz.analysis.errors.pair_regions`` (what
``evaluate_scene`` reports and the napari error navigator lists), largest first.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

RATIO = {"widget_type": "FloatSlider", "min": 0.01, "max": 0.5, "step": 0.01, "label": "a (hard share)"}
SOBEL_KSIZE = {"widget_type": "Slider", "min": 3, "max": 15, "step": 2, "label": "Sobel kernel size"}
W_BD = {"widget_type": "FloatSlider", "min": 0.0, "max": 10.0, "step": 0.5, "label": "w_bd"}


def pixel_controls(shape: Sequence[int]) -> dict[str, dict]:
    """Sliders ``y`` and ``x`` over an image of ``shape`` (h, w): pick a pixel."""
    return {"y": {"widget_type": "Slider", "min": 0, "max": int(shape[0]) - 1, "label": "y"},
            "x": {"widget_type": "Slider", "min": 0, "max": int(shape[1]) - 1, "label": "x"}}


def region_choices(regions: Sequence[dict], limit: int = 50) -> list[tuple[str, int]]:
    """(label, index) pairs for a picker over ``pair_regions`` regions, in their order."""
    return [(f"{i + 1}. {r['pair']}  {r['area']:,d} px  at y {r['bbox'][0]}, x {r['bbox'][1]}", i)
            for i, r in enumerate(list(regions)[:limit])]


def region_picker(regions: Sequence[dict], limit: int = 50) -> dict:
    return {"widget_type": "ComboBox", "choices": region_choices(regions, limit), "label": "region"}


def figure_png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def setup_notebook() -> None:
    """magicgui widgets as ipywidgets, and a Figure as the last line of a cell shows as PNG
    (plots return bare Figures, which IPython otherwise prints as text)."""
    import magicgui
    from matplotlib.figure import Figure

    magicgui.use_app("ipynb")
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["image/png"].for_type(Figure, figure_png)


@dataclass
class Live:
    """Controls and the picture they drive; displays as both, stacked."""

    gui: Any
    output: Any
    figures: list = field(default_factory=list)

    def show(self, fig) -> None:
        """Replace the picture (one sync to the frontend, so it does not flicker)."""
        self.figures.append(fig)
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": png, "text/plain": repr(fig)}},)

    @property
    def widget(self):
        import ipywidgets

        return ipywidgets.VBox([self.gui.native, self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def interactive(draw: Callable[..., Any], **controls: dict) -> Live:
    """Live controls over ``draw``: every change calls it and shows the Figure it returns.

    ``controls`` maps ``draw``'s keyword arguments to option dicts (``RATIO``, ``W_BD``...);
    arguments without one get magicgui's default widget for their annotation and default.
    """
    import ipywidgets
    from magicgui import magicgui

    import magicgui as mg

    mg.use_app("ipynb")  # notebook widgets, whatever app was current
    gui = magicgui(draw, auto_call=True, **controls)
    live = Live(gui, ipywidgets.Output())
    gui.called.connect(live.show)
    gui()
    return live
