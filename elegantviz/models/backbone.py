"""HRNetV2 backbone: timm's HRNet branch outputs, resized to one output stride and concatenated.

timm's ``features_only=True, feature_location=''`` gives the raw outputs of the four final-stage
branches (W, 2W, 4W, 8W channels at strides 4, 8, 16, 32); the default ``'incre'`` location would
give the classification head's 128-1024 channels instead. HRNetV2 (and mmseg's FCN head on HRNet)
upsample the lower-resolution branches bilinearly to the highest one and concatenate them
(270 channels for W18). EHSNet runs its heads at stride 8 to save memory; timm keeps the
backbone itself at stride 32, so the output stride is chosen here, where branches are resized.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hrnet import HRNetUnit, hrnet_units

__all__ = ["HRNetBackbone"]


# timm's HRNet fuses branches with nearest upsampling by exact factors 2..8, so its input must be
# a multiple of the coarsest stride.
_HRNET_STRIDE = 32


class HRNetBackbone(nn.Module):
    """HRNetV2 features at ``output_stride`` (4 or 8) for inputs of any size and band count.

    The input is zero-padded at the bottom and right to a multiple of 32 (zero is the mean of a
    normalised image, and mmseg pads the same way); the features are cropped back to
    ``ceil(H / output_stride) x ceil(W / output_stride)``, so feature pixel (i, j) always covers
    input pixels ``[i * s, (i + 1) * s)`` and nothing of the padding leaks into ECR's statistics
    beyond the last partial cell.

    ``pretrained=True`` loads timm's ImageNet weights with timm's own loader, which adapts the
    first convolution to ``in_chans`` (repeats/sums the RGB filters); ``pretrained_file`` points
    timm at a local checkpoint for machines without internet.
    """

    def __init__(
        self,
        name: str = "hrnet_w18",
        in_chans: int = 3,
        output_stride: int = 4,
        pretrained: bool = False,
        pretrained_file: str | None = None,
    ):
        super().__init__()
        import timm  # imported here so that importing the models package stays light

        if output_stride not in (4, 8, 16, 32):
            raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
        kwargs = {}
        if pretrained_file is not None:
            kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        self.body = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            feature_location="",
            out_indices=(1, 2, 3, 4),
            in_chans=in_chans,
            **kwargs,
        )
        self.name = name
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.branch_channels: list[int] = list(self.body.feature_info.channels())
        self.out_channels = sum(self.branch_channels)

    def units(self) -> list[HRNetUnit]:
        """timm's HRNet as its forward runs it (:func:`.hrnet.hrnet_units`), strides in input px."""
        return hrnet_units(self.body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % _HRNET_STRIDE, -w % _HRNET_STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        branches = self.body(x)
        s = self.output_stride
        size = ((h + ph) // s, (w + pw) // s)
        # For a factor-2 reduction bilinear (align_corners=False) is exactly 2x2 average pooling.
        feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                 for f in branches]
        out = torch.cat(feats, dim=1)
        return out[..., : -(-h // s), : -(-w // s)]
