"""The notebooks' analysis and plotting helpers against brute-force computations."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy import ndimage

from elegantviz.analysis import bae, confusions, gallery, hard_region
from elegantviz.classes import RIVERWORLD
from elegantviz.data.synthetic import POND, RIVER
from elegantviz.io.bands import choose_bands
from elegantviz.viz import plots, widgets


# --- hard region ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,ratio", [((9, 7), 0.1), ((16, 16), 0.25), ((5, 3), 1.0), ((4, 4), 0.01)])
def test_hard_cut_is_the_k_lowest_margins(shape, ratio):
    margin = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape).astype(np.float32)
    mask, cut = hard_region.hard_cut(margin, ratio)
    k = max(1, round(ratio * margin.size))
    want = np.zeros(margin.size, bool)
    want[np.argsort(margin.ravel())[:k]] = True
    np.testing.assert_array_equal(mask, want.reshape(shape))
    assert cut == np.sort(margin.ravel())[k - 1]


def test_errors_caught_equals_counting_per_ratio():
    rng = np.random.default_rng(1)
    margin = rng.random((20, 30))
    wrong = rng.random((20, 30)) < 0.2 + 0.5 * (margin < 0.2)
    ratios = np.array([0.02, 0.1, 0.33, 0.5, 1.0])
    got = hard_region.errors_caught(margin, wrong, ratios)
    for r, rec, prec in zip(ratios, got["recall"], got["precision"]):
        mask, _ = hard_region.hard_cut(margin, r)
        assert rec == pytest.approx((mask & wrong).sum() / wrong.sum())
        assert prec == pytest.approx((mask & wrong).sum() / mask.sum())
    assert got["recall"][-1] == 1.0


@pytest.mark.parametrize("norm", ["softmax", "scaling"])
def test_explicit_attention_is_the_loop_and_equals_efficient(norm):
    from elegantviz.models.ecr import efficient_attention

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 6, 40, generator=g, dtype=torch.float64)
    queries = feats[:, :, [3, 17, 29]]
    attended, amap = hard_region.explicit_attention(queries, feats, norm)
    f, q = feats[0].numpy(), queries[0].numpy()
    if norm == "softmax":
        k = np.exp(f) / np.exp(f).sum(1, keepdims=True)
        qn = np.exp(q) / np.exp(q).sum(0, keepdims=True)
    else:
        k, qn = f / np.sqrt(40), q / np.sqrt(40)
    loop = np.array([[qn[:, i] @ k[:, p] for p in range(40)] for i in range(3)])
    np.testing.assert_allclose(amap[0].numpy(), loop, rtol=1e-10)
    np.testing.assert_allclose(attended[0].numpy(), np.array([f @ loop[i] for i in range(3)]).T, rtol=1e-10)
    np.testing.assert_allclose(attended.numpy(), efficient_attention(queries, feats, norm)[0].numpy(), rtol=1e-8)


def test_attention_bytes_count_the_tensors_each_form_holds():
    n, m, d = 50, 5, 6
    feats = torch.randn(1, d, n)
    _, amap = hard_region.explicit_attention(feats[:, :, :m], feats)
    got = hard_region.attention_bytes(n, m, d)
    shared = (d * n + d * m) * 4
    assert got["explicit"] - shared == amap.nbytes
    assert got["efficient"] - shared == d * d * 4


# --- BAE --------------------------------------------------------------------------------------
def _labels():
    lab = np.zeros((24, 20), np.int64)
    lab[5:15, 4:12] = 3
    lab[18:, 15:] = 4
    lab[0:3, 0:3] = 255
    return lab


def test_weight_map_ksize3_is_scipy_sobel_on_the_mask():
    lab = np.zeros((24, 20), np.int64)
    lab[5:15, 4:12] = 3
    got = bae.weight_map(lab, ksize=3, w_bd=2.5)
    f = lab.astype(float)
    edge = np.hypot(ndimage.sobel(f, 0, mode="mirror"), ndimage.sobel(f, 1, mode="mirror")) > 0
    np.testing.assert_array_equal(got, np.where(edge, 3.5, 1.0))


def test_loss_terms_equal_a_numpy_cross_entropy():
    rng = np.random.default_rng(2)
    lab = _labels()
    logits, aux = rng.normal(size=(5, 24, 20)), rng.normal(size=(5, 24, 20))
    w = bae.weight_map(lab, 5, 2.0)
    valid = lab != 255

    def ce(z):
        logp = z - np.log(np.exp(z).sum(0, keepdims=True))
        picked = np.take_along_axis(logp, np.where(valid, lab, 0)[None], 0)[0]
        return -picked * w

    seg, ax = ce(logits), ce(aux)
    got = bae.loss_terms(logits, aux, lab, 5, 2.0)
    n = valid.sum()
    assert got["seg"] == pytest.approx(seg.sum() / n, rel=1e-5)
    assert got["total"] == pytest.approx(seg.sum() / n + 0.4 * ax.sum() / n, rel=1e-5)
    on = w > 1
    assert got["boundary_loss_share"] == pytest.approx(seg[on].sum() / seg.sum(), rel=1e-5)
    assert got["boundary_pixel_share"] == pytest.approx(on.sum() / n)


def test_loss_sweep_is_loss_terms_on_a_grid():
    rng = np.random.default_rng(3)
    lab = _labels()
    logits, aux = rng.normal(size=(5, 24, 20)), rng.normal(size=(5, 24, 20))
    grid = bae.loss_sweep(logits, aux, lab, [3, 7], [0.0, 1.0, 4.0])
    assert grid.shape == (2, 3)
    assert grid[1, 2] == pytest.approx(bae.loss_terms(logits, aux, lab, 7, 4.0)["total"])
    assert grid[0, 0] == pytest.approx(grid[1, 0])  # w_bd = 0: the kernel does not matter
    assert grid[0, 2] < grid[1, 2]  # a wider band weighs more pixels


# --- confusions -------------------------------------------------------------------------------
def test_top_confusions_are_the_largest_off_diagonal_cells():
    cm = np.array([[50, 3, 0], [9, 40, 1], [0, 12, 7]])
    got = confusions.top_confusions(cm, ["a", "b", "c"], k=5)
    assert [(r["pair"], r["pixels"]) for r in got] == [("c:b", 12), ("b:a", 9), ("a:b", 3), ("b:c", 1)]
    assert got[0]["share"] == pytest.approx(12 / 19)
    assert confusions.top_confusions(np.eye(3, dtype=int), ["a", "b", "c"]) == []


# --- gallery ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bbox", [(0, 0, 3, 4), (40, 50, 47, 64), (10, 10, 46, 12), (20, 5, 25, 9)])
def test_crop_box_contains_the_region_and_stays_inside(bbox):
    y0, x0, y1, x1 = gallery.crop_box(bbox, (48, 64), pad=4, min_size=20)
    assert 0 <= y0 <= bbox[0] and bbox[2] <= y1 <= 48
    assert 0 <= x0 <= bbox[1] and bbox[3] <= x1 <= 64
    assert y1 - y0 >= min(20, 48) and x1 - x0 >= 20


def test_feature_mask_marks_every_cell_with_a_pixel():
    rng = np.random.default_rng(4)
    mask = rng.random((13, 11)) < 0.1
    got = gallery.feature_mask(mask, (5, 6), 4, (5, 5))
    want = np.zeros((5, 5), bool)
    for y, x in zip(*np.nonzero(mask)):
        want[min((y + 5) // 4, 4), min((x + 6) // 4, 4)] = True
    np.testing.assert_array_equal(got, want)


def test_display_rgb_stretches_each_band_by_its_window():
    img = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 20.0), np.array([[0.0, 50.0], [100.0, 200.0]])])
    out = gallery.display_rgb(img, [2, 1, 0], [(0, 20), (10, 30), (0, 100)])
    np.testing.assert_allclose(out[..., 0], [[0, 0.5], [1, 1]])
    np.testing.assert_allclose(out[..., 1], 0.5)
    np.testing.assert_allclose(out[..., 2], 0.5)
    assert choose_bands(["nir", "Blue", "green", "red"]) == [3, 2, 1]  # the one band picker (io.bands)


@pytest.fixture
def predicted_store(riverworld_store):
    """The riverworld store with a stand-in prediction (a river stretch called pond) and evidence."""
    scene = riverworld_store
    gt = np.asarray(scene.label("gt"))
    pred = gt.copy()
    river = gt == RIVER
    rows = np.nonzero(river.any(1))[0]
    pred[rows[0] : rows[0] + 40][river[rows[0] : rows[0] + 40]] = POND
    scene.add_labels("pred", pred, progress=False)
    scene.add_labels("hard", (np.arange(gt.size).reshape(gt.shape) % 3 == 0).astype(np.uint8), progress=False)
    rng = np.random.default_rng(5)
    grid = (-(-gt.shape[0] // 8), -(-gt.shape[1] // 8))
    scene.add_map("keys", rng.random((4, *grid)), progress=False, attrs={"stride": 8})
    scene.add_map("queries", rng.random((4, *grid)), progress=False, attrs={"stride": 8})
    return scene, gt, pred


def test_region_panels_are_crops_of_the_store(predicted_store):
    from elegantviz.analysis.errors import pair_regions

    scene, gt, pred = predicted_store
    pairs = [(RIVERWORLD.id_of("river"), RIVERWORLD.id_of("pond"))]
    region = pair_regions(scene.label("gt"), scene.label("pred"), pairs, RIVERWORLD, progress=False)[0]["regions"][0]
    p = gallery.region_panels(scene, region, pad=8, min_size=32)
    y0, x0, y1, x1 = p["box"]
    np.testing.assert_array_equal(p["gt"], gt[y0:y1, x0:x1])
    np.testing.assert_array_equal(p["pred"], pred[y0:y1, x0:x1])
    np.testing.assert_array_equal(p["mask"], ((gt == RIVER) & (pred == POND))[y0:y1, x0:x1])
    assert p["image"].shape == (y1 - y0, x1 - x0, 3) and 0 <= p["image"].min() and p["image"].max() <= 1
    # the region's attention: its pixels' mean query against every stored key
    keys = np.asarray(scene.map("keys"), np.float32)
    queries = np.asarray(scene.map("queries"), np.float32)
    fm = gallery.feature_mask(p["mask"], (y0, x0), 8, keys.shape[1:])
    want = np.einsum("d,dhw->hw", queries[:, fm].mean(1), keys)
    np.testing.assert_allclose(p["attention"], want, rtol=1e-4)
    assert p["stride"] == 8


# --- plots ------------------------------------------------------------------------------------
def test_colorize_and_overlay():
    lab = np.array([[0, 3], [4, 255]], np.uint8)
    rgb = plots.colorize(lab, RIVERWORLD)
    assert tuple(rgb[0, 1]) == RIVERWORLD.classes[3].color and tuple(rgb[1, 1]) == (0, 0, 0)
    base = np.full((2, 2, 3), 0.5, np.float32)
    out = plots.overlay(base, np.array([[True, False], [False, False]]), colour=(1, 0, 0), alpha=0.5)
    np.testing.assert_allclose(out[0, 0], [0.75, 0.25, 0.25])
    np.testing.assert_allclose(out[1, 1], 0.5)


def test_margin_histogram_counts_every_pixel_and_marks_the_cut():
    rng = np.random.default_rng(6)
    margin = rng.random((30, 30))
    wrong = margin < 0.3
    mask, cut = hard_region.hard_cut(margin, 0.2)
    fig = plots.margin_histogram_figure(margin, cut, 0.2, wrong=wrong, bins=10)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    correct, wrongs = ([p.get_height() for p in c] for c in ax.containers)  # stacked bars
    assert sum(correct) == (~wrong).sum() and sum(wrongs) == wrong.sum()
    assert any(np.allclose(line.get_xdata(), cut) for line in ax.lines)


def test_hard_region_figure_paints_the_hard_pixels():
    rgb = np.zeros((16, 16, 3), np.float32)
    margin = np.arange(4, dtype=np.float32).reshape(2, 2)
    hard = np.array([[True, False], [False, False]])
    fig = plots.hard_region_figure(rgb, margin, hard, 0.0, 0.25)
    shown = fig.axes[2].images[0].get_array()
    np.testing.assert_allclose(shown[:8, :8], np.broadcast_to(plots.overlay(rgb[:1, :1], np.ones((1, 1), bool)), (8, 8, 3)))
    np.testing.assert_allclose(shown[8:, 8:], 0)


def test_offload_figure_bars_are_the_records():
    records = [{"policy": "none", "seconds": 2.0, "peak_rss_bytes": 300 << 20, "start_rss_bytes": 100 << 20},
               {"policy": "disk", "seconds": 3.0, "peak_rss_bytes": 150 << 20, "start_rss_bytes": 100 << 20,
                "spilled_disk_bytes": 80 << 20, "move_seconds": 1.0}]
    fig = plots.offload_figure(records)
    mem, tim = fig.axes[:2]
    heights = [p.get_height() for p in mem.patches]
    assert heights == [200.0, 50.0, 0.0, 80.0]
    assert [p.get_height() for p in tim.patches] == [2.0, 2.0, 0.0, 1.0]
    assert [t.get_text() for t in mem.get_xticklabels()] == ["none", "disk"]
    for r, live in zip(records, (500 << 20, 40 << 20)):
        r["peak_live_bytes"] = live
    assert [p.get_height() for p in plots.offload_figure(records).axes[0].patches] == [500.0, 40.0, 0.0, 80.0]


def test_live_tensor_bytes_counts_what_a_step_holds():
    """Peak live bytes of a known computation: a, then b = a * 2 while a lives, then a freed."""
    import torch

    from elegantviz.offload import LiveTensorBytes

    model = torch.nn.Linear(1, 1)
    with LiveTensorBytes(model) as live:
        a = torch.ones(1 << 18)  # 1 MiB
        b = a * 2  # 2 MiB live
        del a
        c = b + 1  # 2 MiB live again (a is gone)
        del b, c
    assert live.peak == 2 << 20


def test_region_gallery_has_a_row_per_region(predicted_store):
    from elegantviz.analysis.errors import pair_regions

    scene, _, _ = predicted_store
    pairs = [(RIVERWORLD.id_of("river"), RIVERWORLD.id_of("pond"))]
    regions = pair_regions(scene.label("gt"), scene.label("pred"), pairs, RIVERWORLD, progress=False)[0]["regions"]
    rows = [gallery.region_panels(scene, r) for r in regions[:2]]
    fig = plots.region_gallery_figure(rows, RIVERWORLD)
    assert len(fig.axes) == len(rows) * len(plots.GALLERY_COLUMNS)
    assert isinstance(plots.region_gallery_figure([], RIVERWORLD), Figure)


def test_panels_and_curves_figures():
    fig = plots.panels_figure({"a": np.zeros((8, 8)), "b": (np.ones((2, 2)), {"cmap": "magma"})}, colorbar=True)
    assert fig.axes[1].images[0].get_extent() == [0, 8, 8, 0]  # coarse map on the image's ground
    fig = plots.loss_sweep_figure([3, 5], [0.0, 1.0], np.array([[1.0, 2.0], [1.0, 3.0]]), current=(5, 1.0))
    assert [list(line.get_ydata()) for line in fig.axes[0].lines[:2]] == [[1.0, 2.0], [1.0, 3.0]]
    fig = plots.training_curves_figure({"holistic": ([1, 2], [3.0, 2.0])})
    assert list(fig.axes[0].lines[0].get_ydata()) == [3.0, 2.0]
    curve = {"ratio": [0.1, 0.5], "recall": [0.4, 0.9], "precision": [0.3, 0.1]}
    assert len(plots.errors_caught_figure(curve, 0.1).axes[0].lines) == 4
    fig = plots.attention_figure(np.zeros((16, 16, 3)), np.ones((2, 2)), point=(3, 4), box=(1, 1, 5, 5))
    assert fig.axes[1].images[0].get_extent() == [0, 16, 16, 0]


def test_plots_and_widgets_leave_pyplot_alone():
    code = ("import sys, numpy as np; from elegantviz.viz import plots, widgets; "
            "plots.panels_figure({'a': np.zeros((4, 4))}); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- widgets ----------------------------------------------------------------------------------
def test_interactive_redraws_on_every_change_into_one_picture():
    calls = []

    def draw(a: float = 0.1, ksize: int = 5):
        calls.append((a, ksize))
        return plots.panels_figure({"x": np.full((4, 4), a)})

    live = widgets.interactive(draw, a=widgets.RATIO, ksize=widgets.SOBEL_KSIZE)
    live.gui.a.value = 0.3
    live.gui.ksize.value = 9
    assert calls == [(0.1, 5), (0.3, 5), (0.3, 9)]
    assert len(live.figures) == 3
    assert len(live.output.outputs) == 1 and live.output.outputs[0]["data"]["image/png"]
    # the declared ranges are the controls' ranges
    assert (live.gui.a.min, live.gui.a.max) == (widgets.RATIO["min"], widgets.RATIO["max"])
    assert live.gui.ksize.step == 2
    import ipywidgets

    assert isinstance(live.widget, ipywidgets.VBox)


def test_region_picker_lists_regions_in_order():
    regions = [{"pair": "river->pond", "area": 1200, "bbox": [1, 2, 3, 4]},
               {"pair": "pond->river", "area": 50, "bbox": [5, 6, 7, 8]}]
    choices = widgets.region_choices(regions)
    assert [v for _, v in choices] == [0, 1]
    assert choices[0][0].startswith("1. river->pond  1,200 px")
    seen = []
    live = widgets.interactive(lambda region=0: seen.append(region) or plots.panels_figure({"r": np.zeros((2, 2))}),
                               region=widgets.region_picker(regions))
    live.gui.region.value = 1
    assert seen == [0, 1]
    pix = widgets.pixel_controls((30, 40))
    assert (pix["y"]["max"], pix["x"]["max"]) == (29, 39)


def test_lookalike_windows_equal_a_brute_force_search():
    rng = np.random.default_rng(5)
    lab = np.zeros((60, 70), np.uint8)
    lab[:, 20:24] = 3  # a river, border to border
    lab[40:50, 45:58] = 4  # a pond
    lab[rng.random(lab.shape) < 0.02] = 1
    size, step = 16, 3
    got = confusions.lookalike_windows(lab, 3, 4, size, step)
    for c, other in ((3, 4), (4, 3)):
        best, where = 0, None
        for y in range(0, 60 - size + 1, step):
            for x in range(0, 70 - size + 1, step):
                win = lab[y: y + size, x: x + size]
                n = int((win == c).sum())
                if not (win == other).any() and n > best:
                    best, where = n, (y, x)
        assert got[c] == where
    assert confusions.lookalike_windows(lab, 3, 7, size, step)[7] is None
    with pytest.raises(ValueError, match="larger than"):
        confusions.lookalike_windows(lab, 3, 4, 80)
    fig = plots.lookalikes_figure(np.zeros((60, 70, 3)), {"river": got[3], "pond": got[4]}, size)
    assert len(fig.axes) == 3


def test_attention_limits_ignore_a_few_hot_pixels():
    att = np.linspace(0, 2, 10000, dtype=np.float32).reshape(100, 100)
    att[3, 4] = 1e6  # one pixel holding most of the mass
    lim = plots.attention_limits(att)
    assert 1.9 < lim["vmax"] < 2.0 and lim["vmin"] < 0.02
    assert plots.attention_limits(np.full((4, 4), np.nan)) == {"vmin": 0.0, "vmax": 1.0}
    image = plots.attention_figure(np.zeros((100, 100, 3)), att).axes[1].images[0]
    assert image.get_clim() == (lim["vmin"], lim["vmax"])
