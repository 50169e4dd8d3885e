"""Exact depthwise convolutions: the FFT path equals the direct one, forward and gradients."""

import pytest
import torch

from elegantviz.models.depthwise import (
    DepthwiseConv2d,
    depthwise_conv2d,
    direct_depthwise_conv2d,
    fft_depthwise_conv2d,
    next_fast_len,
    select_impl,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("k", [3, 7, 15, 31])
@pytest.mark.parametrize("shape", [(2, 3, 21, 17), (1, 4, 5, 40), (1, 2, 8, 9)])
def test_fft_matches_direct_forward_and_gradients(k, shape):
    torch.manual_seed(k)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(shape[1], 1, k, k, requires_grad=True)
    b = torch.randn(shape[1], requires_grad=True)
    g = torch.randn(shape[0], shape[1], *shape[2:])
    y_ref = direct_depthwise_conv2d(x, w, b)
    ref = torch.autograd.grad(y_ref, (x, w, b), g)
    y = fft_depthwise_conv2d(x, w, b)
    got = torch.autograd.grad(y, (x, w, b), g)
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) < 1e-5
    for a, r in zip(got, ref):
        assert _rel(a, r) < 1e-5


def test_fft_in_channel_groups_equals_one_group(monkeypatch):
    """Channels go through the FFT in groups (bounded spectra); any grouping gives the same numbers."""
    from elegantviz.models import depthwise

    torch.manual_seed(1)
    x = torch.randn(2, 7, 19, 23, requires_grad=True)
    w = torch.randn(7, 1, 15, 15, requires_grad=True)
    g = torch.randn(2, 7, 19, 23)
    runs = []
    for group in (7, 3, 1):
        monkeypatch.setattr(depthwise, "FFT_GROUP_CHANNELS", group)
        y = fft_depthwise_conv2d(x, w)
        runs.append((y, *torch.autograd.grad(y, (x, w), g)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    ref = direct_depthwise_conv2d(x, w)
    assert _rel(runs[-1][0], ref) < 1e-5


def test_fft_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fft_depthwise_conv2d(a, b), (x, w))


def test_channels_last_and_half_inputs():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 30, 26).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 15, 15)
    y = fft_depthwise_conv2d(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, direct_depthwise_conv2d(x.contiguous(), w)) < 1e-5
    yb = fft_depthwise_conv2d(x.to(torch.bfloat16), w.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16


def test_module_is_a_conv2d_and_impls_agree():
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, 31, impl="fft")
    ref = torch.nn.Conv2d(6, 6, 31, padding=15, groups=6)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 6, 40, 37)
    assert _rel(conv(x), ref(x)) < 1e-5
    conv.impl = "direct"
    assert torch.equal(conv(x), ref(x))


def test_select_impl_table():
    # training: FFT from 15x15 on; 7x7 direct except NCHW multi-threaded on large maps
    assert select_impl(31, "cpu", (200, 200), requires_grad=True) == "fft"
    assert select_impl(15, "cpu", (16, 16), requires_grad=True, channels_last=True) == "fft"
    assert select_impl(7, "cpu", (200, 200), requires_grad=True, channels_last=True) == "direct"
    assert select_impl(7, "cpu", (200, 200), requires_grad=True, channels_last=False, threads=2) == "fft"
    assert select_impl(7, "cpu", (200, 200), requires_grad=True, channels_last=False, threads=1) == "direct"
    assert select_impl(7, "cpu", (64, 64), requires_grad=True, channels_last=False) == "direct"
    assert select_impl(3, "cpu", (200, 200), requires_grad=True) == "direct"
    # inference: channels_last direct, NCHW FFT from 15x15 on
    assert select_impl(31, "cpu", (200, 200), requires_grad=False, channels_last=True) == "direct"
    assert select_impl(31, "cpu", (200, 200), requires_grad=False, channels_last=False) == "fft"
    assert select_impl(7, "cpu", (200, 200), requires_grad=False, channels_last=False) == "direct"
    assert select_impl(31, "cuda", (200, 200)) == "direct"
    assert select_impl(31, "meta", (200, 200)) == "direct"  # flop counting on meta tensors
    x = torch.randn(1, 2, 64, 64, requires_grad=True)
    w = torch.randn(2, 1, 31, 31)
    assert _rel(depthwise_conv2d(x, w), direct_depthwise_conv2d(x, w)) < 1e-5


def test_next_fast_len():
    def smooth(m):
        for f in (2, 3, 5, 7):
            while m % f == 0:
                m //= f
        return m == 1

    for n in range(1, 600):
        m = next_fast_len(n)
        assert m >= n and smooth(m)
        assert not any(smooth(j) for j in range(n, m))
