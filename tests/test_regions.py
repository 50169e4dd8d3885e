import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from elegantviz.analysis.regions import Region, find_regions, load_regions, parse_regions, regions_path, save_regions
from elegantviz.errors import InputError


def dense_regions(mask, values):
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        sel = lab == k
        out.append((int(sel.sum()), (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), round(float(values[sel].mean()), 6)))
    return sorted(out, key=lambda r: (-r[0], r[1]))


@pytest.mark.parametrize("seed,density,chunk", [(0, 0.45, 16), (1, 0.6, 7), (2, 0.3, 33), (3, 0.55, 64)])
def test_blockwise_regions_equal_scipy_label_on_the_dense_mask(seed, density, chunk):
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((90, 77)) < density) | (rng.random((90, 77)) < 0.05)
    values = rng.random((90, 77))
    got = find_regions(da.from_array(mask, chunks=chunk), {"v": da.from_array(values, chunks=chunk)}, progress=False)
    got = [(r.area, r.bbox, round(r.means["v"], 6)) for r in got]
    assert got == dense_regions(mask, values)


@pytest.mark.parametrize("pixels", [((3, 3), (4, 4)), ((3, 4), (4, 3))])
def test_diagonal_touch_across_a_block_corner_is_one_region(pixels):
    mask = np.zeros((8, 8), bool)
    for p in pixels:
        mask[p] = True  # blocks of 4: the two pixels sit in diagonal blocks
    regions = find_regions(da.from_array(mask, chunks=4), progress=False)
    assert [(r.area, r.bbox) for r in regions] == [(2, (3, 3, 5, 5))]


def test_empty_mask_has_no_regions():
    assert find_regions(da.zeros((10, 10), bool, chunks=5), progress=False) == []


# --- the regions file evaluation writes and the napari error navigator reads ---------------------
def test_regions_format(tmp_path):
    rows = [{"pair": "pond->river", "bbox": [0, 0, 10, 10], "area": 50},
            {"pair": "river->pond", "bbox": [5, 6, 40, 60], "area": 900, "label": 2}]
    regions = parse_regions(rows)
    assert [r.area for r in regions] == [900, 50] and regions[0].truth == "river" and regions[0].predicted == "pond"
    assert regions[0].centre == (22.5, 33.0)
    path = tmp_path / "s.errors.json"
    save_regions(path, [Region(pair="a->b", bbox=(1, 2, 3, 4), area=5)])
    assert json.loads(path.read_text()) == [{"pair": "a->b", "bbox": [1, 2, 3, 4], "area": 5}]
    assert load_regions(path)[0].bbox == (1, 2, 3, 4)
    assert regions_path("/data/s.zarr") == Path("/data/s.errors.json")
    # what `elegantviz evaluate` writes: report.json with pairs, each with its regions (and means)
    report = {"pairs": [{"pair": "river->pond", "pixels": 30, "regions": [
        {"pair": "river->pond", "area": 20, "bbox": [0, 0, 4, 5], "means": {"margin": 0.1}},
        {"pair": "river->pond", "area": 10, "bbox": [9, 9, 12, 14], "means": {}}]},
        {"pair": "pond->river", "pixels": 15, "regions": [{"pair": "pond->river", "area": 15, "bbox": [1, 1, 5, 5]}]}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert [(r.pair, r.area) for r in load_regions(tmp_path / "report.json")] == [
        ("river->pond", 20), ("pond->river", 15), ("river->pond", 10)]
    for bad in ({"pair": "x"}, [{"pair": "river", "bbox": [0, 0, 1, 1], "area": 1}],
                [{"pair": "a->b", "bbox": [5, 5, 5, 9], "area": 1}], [{"pair": "a->b", "bbox": [0, 0, 1, 1]}]):
        with pytest.raises(InputError):
            parse_regions(bad)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(InputError):
        load_regions(tmp_path / "broken.json")
