"""Exact large-kernel depthwise convolution: direct or through the FFT.

MLK and LRD apply 7x7, 15x15 and 31x31 depthwise convolutions at output stride 4. On a CPU
the direct convolution of a 31x31 kernel is the bottleneck of training: its weight gradient
is one dot product of two whole feature maps per kernel tap (961 of them), which oneDNN
runs slowly, and slower still in channels_last. The same convolution through the FFT costs
a few transforms of the map whatever the kernel size and is exact up to rounding (about
1e-6 relative in float32), so it is a drop-in replacement, not an approximation.

:func:`select_impl` picks the faster of the two per device, kernel size, map size, memory
format and whether gradients are needed, from a small table measured by
``benchmarks/depthwise.py``; nothing is timed at run time.
:class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same parameters, same state dict, same
initialisation) whose forward dispatches to the chosen implementation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DepthwiseImpl",
    "DepthwiseConv2d",
    "depthwise_conv2d",
    "direct_depthwise_conv2d",
    "fft_depthwise_conv2d",
    "select_impl",
    "next_fast_len",
]

DepthwiseImpl = Literal["auto", "direct", "fft"]

# Measured by benchmarks/depthwise.py on this machine's CPU (2 cores shared with other work,
# torch 2.14, 1 x 256 x H x W maps, H x W from 16^2 to 225 x 212; results/depthwise.json):
# - training (forward + input and weight gradients): the FFT wins from 15x15 on at every map
#   size, 6-29x over the direct convolution at 31x31 (its weight gradient dominates); at 7x7
#   the direct convolution wins in channels_last, and in NCHW too with one thread, but NCHW's
#   multi-threaded weight gradient is slow enough (3-4 s at 128^2 and up) that the FFT wins;
# - inference (forward only): channels_last direct convolution is the fastest or level with
#   the FFT; NCHW direct convolution is 2-13x slower than the FFT from 15x15 on.
CPU_FFT_MIN_KERNEL_TRAIN = 15
CPU_FFT_MIN_KERNEL_TRAIN_NCHW_LARGE = 7
CPU_LARGE_MAP_PIXELS = 128 * 128
CPU_FFT_MIN_KERNEL_INFER_NCHW = 15
# Not measured (no GPU here): cuDNN's depthwise kernels are used on accelerators.
ACCEL_FFT_MIN_KERNEL: int | None = None


def select_impl(
    kernel_size: int,
    device_type: str = "cpu",
    spatial: tuple[int, int] | None = None,
    requires_grad: bool = True,
    channels_last: bool = False,
    threads: int | None = None,
) -> Literal["direct", "fft"]:
    """The faster exact implementation for a depthwise ``kernel_size`` conv on ``device_type``.

    ``spatial`` is the (h, w) of the map when known; ``requires_grad`` says whether gradients
    will be computed (training), where the direct convolution's weight gradient is slowest;
    ``channels_last`` is the input's memory format; ``threads`` defaults to torch's intra-op
    thread count. A table lookup, never a timing.
    """
    if device_type == "cpu":
        if requires_grad:
            if kernel_size >= CPU_FFT_MIN_KERNEL_TRAIN:
                return "fft"
            large = spatial is not None and spatial[0] * spatial[1] >= CPU_LARGE_MAP_PIXELS
            threads = torch.get_num_threads() if threads is None else threads
            if not channels_last and large and threads > 1 and kernel_size >= CPU_FFT_MIN_KERNEL_TRAIN_NCHW_LARGE:
                return "fft"
            return "direct"
        if channels_last:
            return "direct"
        return "fft" if kernel_size >= CPU_FFT_MIN_KERNEL_INFER_NCHW else "direct"
    if ACCEL_FFT_MIN_KERNEL is not None and kernel_size >= ACCEL_FFT_MIN_KERNEL:
        return "fft"
    return "direct"


@lru_cache(maxsize=None)
def next_fast_len(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3, 5 and 7 (fast FFT lengths)."""
    m = max(1, n)
    while True:
        r = m
        for f in (2, 3, 5, 7):
            while r % f == 0:
                r //= f
        if r == 1:
            return m
        m += 1


def direct_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d`` with ``groups = channels`` and 'same' zero padding (odd square kernels)."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, padding=k // 2, groups=x.shape[1])


def _fft_shape(h: int, w: int, k: int) -> tuple[int, int]:
    # Circular correlation of length L equals the zero-padded one on the h output rows as long
    # as L >= h + k // 2 (taps reaching past either edge of the map land in the zero tail) and
    # L >= k (no two taps share an index).
    p = k // 2
    return next_fast_len(max(h + p, k)), next_fast_len(max(w + p, k))


def _shifted_kernel(weight: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(C, 1, k, k) kernel zero-padded to ``shape`` and rolled so that tap (p, p) sits at 0."""
    k = weight.shape[-1]
    p = k // 2
    padded = weight.new_zeros(weight.shape[0], *shape)
    padded[:, :k, :k] = weight[:, 0]
    return torch.roll(padded, shifts=(-p, -p), dims=(-2, -1))


# Spectra are complex and padded: a whole map's spectrum is about twice the map, and backward
# holds three. Channels are independent, so the work goes in groups of this many channels: a
# fixed share of the map whatever its size, so memory stays linear in pixels (the planner
# extrapolates from small maps) at 1/16 of the spectra, for a loop of 16 steps at 256 channels.
FFT_GROUP_CHANNELS = 16


def _channel_groups(x: torch.Tensor) -> list[slice]:
    c = x.shape[1]
    return [slice(i, min(i + FFT_GROUP_CHANNELS, c)) for i in range(0, c, FFT_GROUP_CHANNELS)]


class _FFTDepthwise(torch.autograd.Function):
    """y[c, i, j] = sum_{u,v} x[c, i+u-p, j+v-p] w[c, u, v] (zero padding), by the FFT.

    With ws the kernel rolled so that its centre tap sits at index 0, y is the circular
    cross-correlation of x (zero-padded to L) with ws, i.e. irfft(X conj(Ws)). Backward:
    grad_x = irfft(G Ws) (circular convolution) and grad_ws = irfft(sum_n X_n conj(G_n)),
    from which the k x k taps are read back. Only x and w are saved; X is recomputed in
    backward, and channels go in groups (:data:`FFT_GROUP_CHANNELS`), which keeps the memory of
    the direct convolution.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = weight.shape[-1]
        shape = _fft_shape(h, w, k)
        # FFTs along a strided (channels_last) last axis are about 2x slower than a copy plus
        # FFTs on NCHW; the copy is not kept (x itself is saved).
        y = x.new_empty(x.shape)
        for g in _channel_groups(x):
            xs = torch.fft.rfft2(x[:, g].contiguous(), s=shape)
            ws = torch.fft.rfft2(_shifted_kernel(weight[g], shape))
            y[:, g] = torch.fft.irfft2(xs * ws.conj(), s=shape)[..., :h, :w]
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        h, w = x.shape[-2:]
        k = weight.shape[-1]
        p = k // 2
        shape = _fft_shape(h, w, k)
        grad_x = x.new_empty(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = weight.new_empty(weight.shape) if ctx.needs_input_grad[1] else None
        for g in _channel_groups(x):
            gs = torch.fft.rfft2(grad[:, g].contiguous(), s=shape)
            if grad_x is not None:
                ws = torch.fft.rfft2(_shifted_kernel(weight[g], shape))
                grad_x[:, g] = torch.fft.irfft2(gs * ws, s=shape)[..., :h, :w]
            if grad_w is not None:
                xs = torch.fft.rfft2(x[:, g].contiguous(), s=shape)
                corr = torch.fft.irfft2((xs * gs.conj()).sum(0), s=shape)  # (C, L1, L2)
                grad_w[g] = torch.roll(corr, shifts=(p, p), dims=(-2, -1))[:, :k, :k].unsqueeze(1)
        return grad_x, grad_w


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def fft_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same result as :func:`direct_depthwise_conv2d`, computed with real FFTs.

    Half precision inputs are computed in float32 (FFTs of arbitrary lengths need it) and cast
    back; the output keeps the input's memory format.
    """
    if weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
        raise ValueError(f"odd square kernels only, got {tuple(weight.shape[-2:])}")
    if weight.shape[0] != x.shape[1] or weight.shape[1] != 1:
        raise ValueError(f"depthwise weight must be ({x.shape[1]}, 1, k, k), got {tuple(weight.shape)}")
    dtype = x.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    channels_last = _is_channels_last(x)
    y = _FFTDepthwise.apply(x.to(compute), weight.to(compute))
    if bias is not None:
        y = y + bias.to(compute).view(1, -1, 1, 1)
    y = y.to(dtype)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: DepthwiseImpl = "auto",
) -> torch.Tensor:
    """Depthwise 'same' convolution by ``impl`` ('auto' asks :func:`select_impl`)."""
    if impl == "auto":
        grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        impl = select_impl(weight.shape[-1], x.device.type, tuple(x.shape[-2:]), grad, _is_channels_last(x))
    if impl == "fft":
        return fft_depthwise_conv2d(x, weight, bias)
    if impl == "direct":
        return direct_depthwise_conv2d(x, weight, bias)
    raise ValueError(f"unknown depthwise impl {impl!r}")


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise k x k convolution with 'same' padding and a choice of exact implementation.

    A subclass of ``nn.Conv2d`` so parameters, initialisation and state dicts are those of
    ``nn.Conv2d(c, c, k, padding=k // 2, groups=c)``; only the arithmetic differs.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, impl: DepthwiseImpl = "auto"):
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.impl)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", impl={self.impl!r}"
