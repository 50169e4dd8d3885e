"""BAE loss against scipy.ndimage and a brute-force window computation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from elegantviz.losses import (
    BoundaryAwareLoss,
    banded_bae_loss,
    boundary_mask,
    boundary_weights,
    elegantseg_loss,
    label_sobel,
    sobel_kernels,
    weighted_cross_entropy,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The 5x5 Sobel kernels written out (OpenCV's getDerivKernels(1, 0, 5)): smoothing x derivative.
SMOOTH5 = np.array([1, 4, 6, 4, 1], float)
DERIV5 = np.array([-1, -2, 0, 2, 1], float)
KX5 = np.outer(SMOOTH5, DERIV5)
KY5 = KX5.T


def _blocks(rng, h, w, classes=4, cell=6):
    """Blocky label maps (regions with straight and diagonal edges, and thin lines)."""
    small = rng.integers(0, classes, size=(-(-h // cell), -(-w // cell)))
    lab = np.kron(small, np.ones((cell, cell), int))[:h, :w]
    lab[rng.integers(0, h), :] = classes  # a 1-px line
    yy, xx = np.mgrid[:h, :w]
    lab[(yy + xx) % 17 == 0] = classes + 1  # a diagonal
    return lab.astype(np.int64)


def _scipy_boundary(lab):
    gx = ndimage.correlate(lab.astype(float), KX5, mode="mirror")
    gy = ndimage.correlate(lab.astype(float), KY5, mode="mirror")
    return np.hypot(gx, gy)


def test_kernels_are_opencv_sobel():
    k = sobel_kernels(5, torch.float64).numpy()
    assert np.array_equal(k[0, 0], KX5) and np.array_equal(k[1, 0], KY5)
    k3 = sobel_kernels(3, torch.float64).numpy()[0, 0]
    assert np.array_equal(k3, np.outer([1, 2, 1], [-1, 0, 1]))


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (9, 140)])
def test_boundary_equals_scipy_sobel(shape):
    rng = np.random.default_rng(shape[0])
    labs = np.stack([_blocks(rng, *shape) for _ in range(2)])
    t = torch.from_numpy(labs)
    mag = label_sobel(t, 5, ignore_index=None).numpy()
    for b in range(2):
        ref = _scipy_boundary(labs[b])
        assert np.allclose(mag[b], ref)
        assert np.array_equal(mag[b] > 0, ref > 0)
    w = boundary_weights(t, 5, w_bd=1.0, ignore_index=None).numpy()
    assert set(np.unique(w)) <= {1.0, 2.0}
    assert np.array_equal(w == 2.0, np.stack([_scipy_boundary(l) > 0 for l in labs]))
    assert 0 < (w == 2.0).mean() < 0.9


def _brute_force_boundary(lab, ignore, ksize=5):
    """Per pixel: mirror the border, give ignored neighbours the centre's label, apply Sobel."""
    p = ksize // 2
    kx = sobel_kernels(ksize, torch.float64).numpy()[0, 0]
    ky = kx.T
    padded = np.pad(lab, p, mode="reflect")  # numpy 'reflect' == reflect-101 == scipy 'mirror'
    out = np.zeros(lab.shape, bool)
    for i in range(lab.shape[0]):
        for j in range(lab.shape[1]):
            if lab[i, j] == ignore:
                continue
            win = padded[i : i + ksize, j : j + ksize].astype(float)
            win[win == ignore] = lab[i, j]
            out[i, j] = (win * kx).sum() != 0 or (win * ky).sum() != 0
    return out


@pytest.mark.parametrize("ksize", [3, 5, 7])
def test_ignore_pixels_excluded_from_boundary(ksize):
    rng = np.random.default_rng(ksize)
    lab = _blocks(rng, 30, 41, classes=3)
    lab[5:12, 8:30] = 255  # an ignored block straddling several regions
    lab[rng.random(lab.shape) < 0.03] = 255  # and scattered ignored pixels
    got = boundary_mask(torch.from_numpy(lab), ksize, 255).numpy()
    assert np.array_equal(got, _brute_force_boundary(lab, 255, ksize))
    # a uniform class with an ignored hole has no boundary at all
    uni = np.full((20, 20), 2)
    uni[5:9, 5:15] = 255
    assert not boundary_mask(torch.from_numpy(uni)).any()
    w = boundary_weights(torch.from_numpy(lab), ksize, w_bd=3.0).numpy()
    assert np.all(w[lab == 255] == 0)
    assert np.array_equal(w[lab != 255] == 4.0, got[lab != 255])


def test_boundary_works_on_uint8_and_2d_and_tiny():
    lab = torch.tensor([[0, 0, 1], [0, 0, 1]], dtype=torch.uint8)
    w = boundary_weights(lab)
    assert w.shape == lab.shape and (w == 2).any()


class _Out:
    def __init__(self, logits, aux_logits):
        self.logits, self.aux_logits = logits, aux_logits


def test_loss_without_boundary_is_plain_cross_entropy():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 24, 20))
    labels[0, :3] = 255
    logits, aux = torch.randn(2, 4, 24, 20), torch.randn(2, 4, 24, 20)
    total = elegantseg_loss(_Out(logits, aux), labels, w_bd=0.0)
    ref = F.cross_entropy(logits, labels, ignore_index=255) + 0.4 * F.cross_entropy(aux, labels, ignore_index=255)
    assert torch.allclose(total, ref)


def test_loss_weights_boundary_pixels():
    torch.manual_seed(1)
    labels = torch.from_numpy(_blocks(np.random.default_rng(1), 24, 20, classes=3))
    labels[:2] = 255
    labels = labels.unsqueeze(0).repeat(2, 1, 1)
    logits = torch.randn(2, 5, 24, 20, requires_grad=True)
    aux = torch.randn(2, 5, 24, 20, requires_grad=True)
    total, terms = elegantseg_loss(_Out(logits, aux), labels, w_bd=1.0, return_terms=True)
    # by hand: per-pixel CE, weight 2 on scipy-Sobel boundary pixels, mean over valid pixels
    valid = labels != 255
    bd = torch.from_numpy(np.stack([_brute_force_boundary(l.numpy(), 255) for l in labels]))
    wt = 1.0 + bd.float()
    safe = labels.clamp(max=4)
    ce = -torch.log_softmax(logits, 1).gather(1, safe.unsqueeze(1))[:, 0]
    ce_aux = -torch.log_softmax(aux, 1).gather(1, safe.unsqueeze(1))[:, 0]
    ref_seg = (ce * wt)[valid].sum() / valid.sum()
    ref_aux = (ce_aux * wt)[valid].sum() / valid.sum()
    assert torch.allclose(terms["seg"], ref_seg) and torch.allclose(terms["aux"], ref_aux)
    assert torch.allclose(total, ref_seg + 0.4 * ref_aux)
    assert torch.equal(terms["weights"], boundary_weights(labels))
    total.backward()
    assert logits.grad[:, :, ~valid[0]].abs().sum() == 0  # ignored pixels: no gradient
    assert torch.allclose(BoundaryAwareLoss()(_Out(logits, aux), labels), total)


def test_loss_resizes_logits_and_handles_all_ignored():
    labels = torch.full((1, 16, 16), 255)
    out = _Out(torch.randn(1, 3, 8, 8, requires_grad=True), torch.randn(1, 3, 8, 8, requires_grad=True))
    total = elegantseg_loss(out, labels)
    assert total.item() == 0.0
    total.backward()
    assert weighted_cross_entropy(torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long),
                                  torch.ones(1, 8, 8)).shape == ()


@pytest.mark.parametrize("h, w, stride, band_bytes", [(37, 50, 4, 1), (64, 64, 4, 3000), (70, 45, 8, 1 << 30),
                                                      (29, 31, 4, 5000)])
def test_banded_loss_equals_upsampled_loss(h, w, stride, band_bytes):
    """Logits at the feature stride, upsampled and weighed band by band (forward and backward
    recomputed per band), against the plain loss on the model's own upsampling of the whole map."""
    from types import SimpleNamespace

    rng = np.random.default_rng(h)
    hf, wf = -(-h // stride), -(-w // stride)
    logits = torch.randn(2, 4, hf, wf, requires_grad=True)
    aux = torch.randn(2, 4, hf, wf, requires_grad=True)
    labels = torch.from_numpy(np.stack([_blocks(rng, h, w, classes=2, cell=5) for _ in range(2)])).to(torch.uint8)
    labels[:, :6, :9] = 255

    def up(t):  # ElegantSeg._upsample: x stride, cropped
        return F.interpolate(t, size=(hf * stride, wf * stride), mode="bilinear", align_corners=False)[..., :h, :w]

    plain = elegantseg_loss(SimpleNamespace(logits=up(logits), aux_logits=up(aux)), labels)
    g_plain = torch.autograd.grad(plain, (logits, aux))
    seg, aux_term = banded_bae_loss(logits, aux, labels, stride, band_bytes=band_bytes)
    banded = seg + 0.4 * aux_term
    g_banded = torch.autograd.grad(banded, (logits, aux))
    # per-pixel terms are the same arithmetic; only the order of the sums differs
    torch.testing.assert_close(banded, plain, rtol=1e-6, atol=0)
    for a, b in zip(g_banded, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    via_output = elegantseg_loss(SimpleNamespace(logits=logits, aux_logits=aux, stride=stride), labels)
    torch.testing.assert_close(via_output, plain, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="do not cover labels"):
        banded_bae_loss(logits, aux, labels[..., : h // 2, :], stride)


def test_class_weights_scale_each_pixel_by_its_class_in_both_loss_paths():
    """Against a loop over pixels: sum(w_bd(p) * class_weight(label p) * CE(p)) / valid pixels, on
    the plain path and on the banded one (the same loss at stride 4)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(5)
    h = w = 24
    labels = torch.from_numpy(_blocks(rng, h, w, classes=3, cell=6)[None] % 3).to(torch.uint8)
    labels[0, :3, :5] = 255
    logits = torch.randn(1, 3, h // 4, w // 4)
    up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    cw = [0.5, 1.0, 4.0]
    bd = boundary_weights(labels)[0]
    ce = F.cross_entropy(up, labels.long(), reduction="none", ignore_index=255)[0]
    valid = [(y, x) for y in range(h) for x in range(w) if labels[0, y, x] != 255]
    want = sum(float(bd[y, x]) * cw[int(labels[0, y, x])] * float(ce[y, x]) for y, x in valid) / len(valid)
    out = SimpleNamespace(logits=up, aux_logits=up)
    plain = elegantseg_loss(out, labels, w_aux=0.0, class_weights=cw)
    banded = elegantseg_loss(SimpleNamespace(logits=logits, aux_logits=logits, stride=4), labels, w_aux=0.0,
                             class_weights=cw)
    assert abs(float(plain) - want) < 1e-5 * want and abs(float(banded) - want) < 1e-5 * want
    assert abs(float(elegantseg_loss(out, labels, w_aux=0.0)) - want) > 0.01 * want  # the weights changed it


def test_boundaries_under_bf16_autocast_stay_exact():
    """The Sobel sums are integers; a bf16 convolution (autocast on CUDA, here on the CPU) would round them."""
    rng = np.random.default_rng(9)
    lab = torch.from_numpy(_blocks(rng, 40, 50, classes=20))[None]
    ref = label_sobel(lab)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = label_sobel(lab)
    assert torch.equal(got, ref)
