"""The patch grid GLNet and FCtL share, the crop of a global map at a patch footprint, the focal
loss and D4 test-time augmentation, each against a direct computation."""

import math

import numpy as np
import pytest
import torch

from elegantviz.inference.patches import D4, d4, d4_inverse, predict_patches
from elegantviz.losses.focal import focal_loss
from elegantviz.models.patch_grid import PatchGrid, PatchOutput, crop_footprints, grid_starts


def _overlaps(starts, patch):
    return [patch - (b - a) for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize("size, patch, count, step, overlap", [(2448, 508, 6, 388, 120), (5000, 508, 11, 449.2, 58.8),
                                                               (5000, 536, 11, 446.4, 89.6)])
def test_grid_of_the_official_scenes(size, patch, count, step, overlap):
    """The digest's figures (baselines.md 1), and the grid's defining properties."""
    starts = grid_starts(size, patch)
    assert len(starts) == count
    assert starts[0] == 0 and starts[-1] + patch == size  # the last patch is flush with the border
    assert starts == [round(i * step) for i in range(count - 1)] + [size - patch]
    assert min(_overlaps(starts, patch)) >= 50
    assert (size - patch) / (count - 1) == pytest.approx(step)
    assert patch - (size - patch) / (count - 1) == pytest.approx(overlap)
    # one patch fewer, evenly spread, would overlap by less than 50 px: the count is the least
    assert patch - (size - patch) / (count - 2) < 50


@pytest.mark.parametrize("h, w, patch", [(2448, 2448, 508), (5000, 5000, 508), (700, 1030, 256), (256, 300, 256)])
def test_grid_covers_every_pixel(h, w, patch):
    grid = PatchGrid(h, w, patch)
    counts = np.zeros((h, w), int)
    for y, x in grid.boxes():
        assert 0 <= y <= h - patch and 0 <= x <= w - patch
        counts[y : y + patch, x : x + patch] += 1
    assert counts.min() >= 1
    assert len(grid) == len(grid.boxes())
    np.testing.assert_array_equal(grid.counts().numpy(), counts)


def test_patch_larger_than_the_scene_is_refused():
    with pytest.raises(ValueError, match="508 px patch does not fit a 400 px side"):
        grid_starts(400, 508)
    assert grid_starts(508, 508) == [0]


def test_crop_of_a_global_map_at_the_footprint():
    """Each cell of the map holds its own (row, col): a crop resized to its own size is the slice at
    the footprint GLNet computes (top = round(y / H * h), size = round(h * p / H))."""
    H, W, p, h, w = 2448, 2448, 508, 127, 127
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    feat = torch.stack([rows, cols])[None]
    boxes = PatchGrid(H, W, p).boxes()
    side = round(h * p / H)
    assert side == 26  # the digest: 26 x 26 on the 127^2 map
    crops = crop_footprints(feat, boxes, p, (H, W), (side, side))
    for (y, x), crop in zip(boxes, crops):
        top, left = round(y / H * h), round(x / W * w)
        assert crop[0, 0, 0] == top and crop[1, 0, 0] == left
        torch.testing.assert_close(crop, feat[0, :, top : top + side, left : left + side])
    # resized to the local tensor's size: bilinear between the same corners
    big = crop_footprints(feat, boxes[:1], p, (H, W), (127, 127))
    assert big.shape == (1, 2, 127, 127)
    assert float(big[0, 0].min()) >= 0 and float(big[0, 0].max()) <= side - 1


def test_focal_loss_against_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 12, 14))
    labels[0, :2] = 255  # nodata: left out
    small = labels[:, 1::2, 1::2]  # nearest to 6 x 7 takes each 2 x 2 cell's centre pixel (as PIL), rounding up
    p = torch.softmax(logits, 1).numpy()
    total, n = 0.0, 0
    for b in range(2):
        for i in range(6):
            for j in range(7):
                c = int(small[b, i, j])
                if c == 255:
                    continue
                pt = min(max(p[b, c, i, j], 1e-7), 1 - 1e-7)
                total += -((1 - pt) ** 3) * math.log(pt)
                n += 1
    assert float(focal_loss(logits, labels)) == pytest.approx(total / n, rel=1e-6)
    # gamma 0 is the cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, small.long(), ignore_index=255)
    assert float(focal_loss(logits, labels, gamma=0)) == pytest.approx(float(ce), rel=1e-6)


def test_d4_inverse_on_a_rectangle():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    seen = set()
    for k, flip in D4:
        y = d4(x, k, flip)
        seen.add(y.flatten().tolist().__str__())
        torch.testing.assert_close(d4_inverse(y, k, flip), x)
    assert len(seen) == 8  # eight distinct transforms


class _PixelModel(torch.nn.Module):
    """Logits are the image's first bands, pointwise; it counts its patches."""

    def forward(self, x, return_evidence=False, upsample=True, progress=None):
        if progress:
            progress(1)
        logits = x[:, :3] * torch.arange(1, 4, dtype=x.dtype).view(1, 3, 1, 1)
        return PatchOutput(logits, None, views={"global": x[:, 0].long()} if return_evidence else {})


def test_tta_sums_the_eight_transforms_back_in_place():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 9, 13)).astype(np.float32)
    plain = predict_patches(_PixelModel(), image, torch.device("cpu"))
    tta = predict_patches(_PixelModel(), image, torch.device("cpu"), tta=True)
    expected = (image * np.arange(1, 4)[:, None, None]).argmax(0)
    np.testing.assert_array_equal(plain.labels, expected)
    np.testing.assert_array_equal(tta.labels, expected)  # a pointwise model: 8 x the same logits
    assert set(plain.views) == {"global"} and plain.views["global"].shape == (9, 13)
