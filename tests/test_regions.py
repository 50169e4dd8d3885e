import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from elegantviz.analysis.regions import find_regions


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
