"""FCN-style segmentation heads (mmseg's FCNHead as used on HRNet)."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["FCNHead"]


class FCNHead(nn.Sequential):
    """conv-BN-ReLU, dropout, 1x1 classifier.

    mmseg's HRNet configs use a 1x1 first conv with as many channels as the input; a 3x3 conv
    at output stride 4 on a whole scene costs 9x more for little gain, so 1x1 is the default.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        kernel_size: int = 1,
        dropout: float = 0.1,
    ):
        channels = channels or in_channels
        super().__init__(
            nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
        classifier = self[-1]
        nn.init.normal_(classifier.weight, std=0.01)  # as mmseg: start from near-uniform logits
        nn.init.zeros_(classifier.bias)
        self.num_classes = num_classes
