import json

import dask.array as da
import numpy as np
import pytest

from elegantviz.analysis.boundaries import boundary_counts, boundary_fscore, boundary_mask
from elegantviz.analysis.errors import error_codes
from elegantviz.analysis.metrics import confusion_matrix, mean_iou, per_class_iou, summarize
from elegantviz.cli import main
from elegantviz.classes import DEEPGLOBE, RIVERWORLD
from elegantviz.io.store import open_scene


def test_deepglobe_convention_averages_classes_one_to_six():
    target = [79.55, 88.21, 42.48, 79.82, 84.58, 65.20]
    cm = np.zeros((7, 7), np.int64)
    cm[0, 0] = 5000
    for c, iou in enumerate(target, start=1):
        tp = round(iou * 100)
        cm[c, c] = tp
        cm[c, 0] = 10000 - tp  # missed pixels predicted as "unknown": FN of c only
    iou = per_class_iou(cm)
    np.testing.assert_allclose(100 * iou[1:], target, atol=1e-9)
    assert round(100 * mean_iou(iou, "deepglobe"), 3) == 73.307
    assert mean_iou(iou, "all") != pytest.approx(mean_iou(iou, "deepglobe"))
    assert summarize(cm, DEEPGLOBE.names, "deepglobe")["miou"] == pytest.approx(0.73306667, abs=1e-6)


def test_blockwise_confusion_matrix_equals_a_dense_count():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (97, 83)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, (97, 83)).astype(np.uint8)
    dense = np.zeros((5, 5), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            dense[g, p] += 1
    got = confusion_matrix(da.from_array(gt, chunks=20), da.from_array(pred, chunks=31), 5, progress=False)
    np.testing.assert_array_equal(got, dense)
    with pytest.raises(ValueError, match="outside 0..4"):
        confusion_matrix(da.from_array(gt, chunks=20), da.from_array(pred + 3, chunks=20), 5, progress=False)


def test_error_codes():
    gt = np.array([3, 3, 4, 4, 0, 255], np.uint8)
    pred = np.array([3, 4, 3, 4, 1, 4], np.uint8)
    assert error_codes(gt, pred, [(3, 4), (4, 3)]).tolist() == [0, 1, 2, 0, 3, 255]


def test_boundary_fscore_on_hand_made_masks():
    gt = np.zeros((20, 20), np.uint8)
    gt[:, 10:] = 1  # boundary at column 9 (its right neighbour differs)
    assert boundary_mask(gt)[:, 9].all() and boundary_mask(gt).sum() == 20
    shifted = np.zeros_like(gt)
    shifted[:, 12:] = 1  # 2 px off
    whole = (slice(None), slice(None))
    assert boundary_counts(gt, shifted, 2, whole).tolist() == [20, 20, 20, 20]
    assert boundary_counts(gt, shifted, 1, whole).tolist() == [0, 20, 0, 20]
    extra = gt.copy()
    extra[5, 2] = 1  # a spurious pixel adds 3 boundary pixels (left of it, it, above it), none near gt
    c = boundary_counts(gt, extra, 1, whole)
    assert c.tolist() == [20, 23, 20, 20]
    res = boundary_fscore(da.from_array(gt, chunks=7), da.from_array(extra, chunks=7), tolerance=1, progress=False)
    assert res["precision"] == pytest.approx(20 / 23) and res["recall"] == 1.0
    assert res["fscore"] == pytest.approx(2 * (20 / 23) / (20 / 23 + 1))


def test_evaluate_cli_writes_report_error_map_and_regions(riverworld_store, tmp_path, capsys):
    scene = riverworld_store
    gt = scene.label("gt").compute()
    pred = gt.copy()
    river, pond = RIVERWORLD.id_of("river"), RIVERWORLD.id_of("pond")
    pred[(gt == pond)] = river  # every pond predicted as river
    scene.add_labels("pred", pred, progress=False)
    assert main(["evaluate", scene.url, "--out", str(tmp_path / "ev"), "-q"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 5000
    assert report["per_class"]["pond"]["iou"] == 0.0 and report["per_class"]["cropland"]["iou"] == 1.0
    pond_as_river = next(e for e in report["pairs"] if e["pair"] == "pond->river")
    assert pond_as_river["pixels"] == int((gt == pond).sum())
    from scipy import ndimage

    _, n = ndimage.label(gt == pond, structure=np.ones((3, 3)))
    assert pond_as_river["regions_total"] == n
    areas = [r["area"] for r in pond_as_river["regions"]]
    assert areas == sorted(areas, reverse=True)
    stored = open_scene(scene.url)
    codes = stored.label("error").compute()
    assert (codes[gt == pond] == 2).all() and (codes[gt != pond] == 0).all()
    assert stored.part_meta("labels", "error")["pairs"][1]["pair"] == "pond->river"
    assert "pond->river" in capsys.readouterr().out
    # the regions file beside the store, which the napari error navigator loads by itself
    from elegantviz.analysis.regions import load_regions, regions_path

    regions = load_regions(regions_path(scene.url))
    assert [(r.pair, r.area, r.bbox) for r in regions if r.pair == "pond->river"] == [
        (r["pair"], r["area"], tuple(r["bbox"])) for r in pond_as_river["regions"]]
    assert [r.area for r in regions] == sorted((r.area for r in regions), reverse=True)
    assert report["regions_file"] == str(regions_path(scene.url))


def test_small_regions_are_folded_away_and_counted(riverworld_store, tmp_path, capsys):
    """Specks along true edges do not crowd the report, the regions file or the navigator."""
    from elegantviz.analysis.regions import load_regions, regions_path

    from scipy import ndimage

    scene = riverworld_store
    gt = scene.label("gt").compute()
    river, pond = RIVERWORLD.id_of("river"), RIVERWORLD.id_of("pond")
    pred = gt.copy()
    top = (gt == river) & (np.arange(gt.shape[0])[:, None] < np.nonzero(gt == river)[0].min() + 12)
    pred[top] = pond  # one big region (and maybe a small piece of another)
    ys, xs = np.nonzero((gt == river) & ~ndimage.binary_dilation(top, iterations=20))
    for y, x in zip(ys[::300], xs[::300]):  # 1-px river->pond specks
        pred[y, x] = pond
    scene.add_labels("pred", pred, progress=False)
    # the independent count: 8-connected regions of river predicted as pond
    lab, n = ndimage.label((gt == river) & (pred == pond), structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    assert (sizes >= 32).sum() == 1 and (sizes < 32).sum() >= 4
    assert main(["evaluate", scene.url, "--out", str(tmp_path / "ev"), "-q"]) == 0
    entry = next(e for e in json.loads((tmp_path / "ev" / "report.json").read_text())["pairs"]
                 if e["pair"] == "river->pond")
    assert entry["pixels"] == sizes.sum()
    assert entry["regions_total"] == 1 and entry["regions"][0]["area"] == sizes.max()
    assert entry["regions_folded"] == (sizes < 32).sum() and entry["folded_pixels"] == sizes[sizes < 32].sum()
    assert f"+{entry['regions_folded']} under 32 px folded away" in capsys.readouterr().out
    assert [r.area for r in load_regions(regions_path(scene.url)) if r.pair == "river->pond"] == [sizes.max()]
    # --min-area 1 lists every speck
    assert main(["evaluate", scene.url, "--out", str(tmp_path / "ev1"), "--min-area", "1", "-q"]) == 0
    entry = next(e for e in json.loads((tmp_path / "ev1" / "report.json").read_text())["pairs"]
                 if e["pair"] == "river->pond")
    assert entry["regions_folded"] == 0 and entry["regions_total"] == n


def test_a_convention_must_fit_the_classes(riverworld_store, tmp_path, capsys):
    """Inria's score on a riverworld scene was forest's IoU, reported as the building IoU."""
    scene = riverworld_store
    scene.add_labels("pred", scene.label("gt"), progress=False)
    for convention in ("inria", "deepglobe"):
        assert main(["evaluate", scene.url, "--convention", convention, "--out", str(tmp_path / convention),
                     "-q"]) == 2
        err = capsys.readouterr().err
        assert f"--convention {convention} scores {convention} classes" in err and "cropland" in err
        assert not (tmp_path / convention).exists()
    from elegantviz.analysis.metrics import mean_iou

    iou = np.array([0.1, 0.9])
    assert mean_iou(iou, "inria", ["background", "building"]) == 0.9
