import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from elegantviz.io.pyramid import level_shapes, mean_pool, mode_pool


def brute_mean(a, nodata):
    h, w = a.shape
    out = np.zeros(((h + 1) // 2, (w + 1) // 2))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            win = a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(float).ravel()
            win = win[(win != nodata) & ~np.isnan(win)] if nodata is not None else win[~np.isnan(win)]
            out[i, j] = win.mean() if win.size else (np.nan if nodata is None else nodata)
    return out


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.sampled_from([0.0, 1.0, 2.5, 7.0, -9.0, np.nan])))
def test_mean_pool_matches_brute_force_with_nodata_and_odd_edges(a):
    got = mean_pool(a, nodata=-9.0)
    np.testing.assert_allclose(got, brute_mean(a, -9.0).astype(np.float32), rtol=1e-6, equal_nan=True)


def test_mean_pool_integer_nodata_window_stays_nodata():
    a = np.array([[0, 0, 10, 20], [0, 0, 30, 0]], np.uint16)
    assert mean_pool(a, nodata=0).tolist() == [[0, 20]]


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.sampled_from([0, 1, 2, 255])))
def test_mode_pool_picks_a_most_frequent_non_ignore_value(a):
    got = mode_pool(a)
    for i in range(got.shape[0]):
        for j in range(got.shape[1]):
            win = a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].ravel()
            votes = win[win != 255]
            if votes.size == 0:
                assert got[i, j] == 255
            else:
                counts = np.bincount(votes)
                assert counts[got[i, j]] == counts.max()


def nearest(a):
    return a[::2, ::2]


@pytest.mark.parametrize("column", [10, 11])
def test_one_pixel_river_survives_two_levels_where_nearest_neighbour_loses_it(column):
    RIVER = 3
    a = np.zeros((64, 64), np.uint8)
    a[:, column] = RIVER
    m1 = mode_pool(a)
    m2 = mode_pool(m1)
    assert (m1 == RIVER).any(axis=1).all() and (m2 == RIVER).any(axis=1).all()
    n2 = nearest(nearest(a))
    assert not (n2 == RIVER).any()  # a 1-px river at x=10 or 11 is gone after two nearest steps


def test_diagonal_thin_river_survives():
    a = np.zeros((64, 64), np.uint8)
    idx = np.arange(64)
    a[idx, idx] = 4
    assert (mode_pool(mode_pool(a)) == 4).sum() >= 14


def test_level_shapes_halve_until_one_tile():
    assert level_shapes(20000, 20000, 512)[-1] == (313, 313)
    assert len(level_shapes(20000, 20000, 512)) == 7
    assert level_shapes(100, 300, 512) == [(100, 300)]
    assert level_shapes(1025, 513, 512) == [(1025, 513), (513, 257), (257, 129)]


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)).map(lambda s: (s[0], 2 * s[1], 2 * s[2]))))
def test_integer_fast_path_equals_the_masked_path(a):
    slow = brute_mean(a[0].astype(float), None)
    np.testing.assert_array_equal(mean_pool(a)[0], np.floor(slow + 0.5).astype(np.uint16))
