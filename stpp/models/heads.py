"""Segmentation heads: DeepLabv3+, PSPNet and DeepLabv2, as in the ST++ paper's code.

Every head takes the backbone's feature dict (``"low"``: stride 4, ``"high"``: last stage) and
returns class logits at the resolution of the features it ends on; the model upsamples them to the
input size. Bilinear resizing uses ``align_corners=False`` throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ALIGN_CORNERS = False


def resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize to ``size`` (H, W) with the package's ``align_corners`` convention."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=ALIGN_CORNERS)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _ImagePooling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = _conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return resize(self.conv(self.pool(x)), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches, image pooling.

    Args:
        in_channels: channels of the input features.
        rates: dilations of the three 3x3 branches.
        out_channels: channels of every branch and of the output.

    Note:
        The image-pooling branch has BatchNorm on a 1x1 map, so training mode needs a batch of at
        least 2 (as in torchvision's ASPP).
    """

    def __init__(self, in_channels: int, rates: tuple[int, int, int], out_channels: int = 256) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, out_channels, 1)]
            + [_conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
            + [_ImagePooling(in_channels, out_channels)]
        )
        self.project = nn.Sequential(
            _conv_bn_relu(len(self.branches) * out_channels, out_channels, 1),
            nn.Dropout2d(0.5),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ decoder: ASPP on the last stage, fused with the reduced stride-4 features.

    Args:
        low_channels: channels of the stride-4 features (reduced to 48).
        high_channels: channels of the last-stage features (ASPP input).
        num_classes: output channels.
        output_stride: 8 (ASPP rates 12, 24, 36) or 16 (6, 12, 18).
    """

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, output_stride: int) -> None:
        super().__init__()
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.aspp = ASPP(high_channels, rates, 256)
        self.reduce = _conv_bn_relu(low_channels, 48, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(256 + 48, 256, 3),
            _conv_bn_relu(256, 256, 3),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Logits at stride 4."""
        low = self.reduce(features["low"])
        high = resize(self.aspp(features["high"]), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([low, high], dim=1)))


class PSPHead(nn.Module):
    """PSPNet head: pyramid pooling (bins 1, 2, 3, 6; 512 channels each), concatenated with the input.

    Args:
        low_channels: unused (the head reads only the last stage).
        high_channels: channels of the last-stage features.
        num_classes: output channels.
        output_stride: unused.
    """

    bins = (1, 2, 3, 6)

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, output_stride: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(high_channels, 512, 1)) for b in self.bins
        )
        self.bottleneck = nn.Sequential(
            _conv_bn_relu(high_channels + 512 * len(self.bins), 512, 3),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(512, num_classes, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Logits at the output stride."""
        x = features["high"]
        pooled = [resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.classifier(self.bottleneck(torch.cat([x, *pooled], dim=1)))


class DeepLabV2Head(nn.Module):
    """DeepLabv2 ASPP-L: four dilated 3x3 classifier convolutions on the last stage, summed.

    The dilations are 6, 12, 18, 24 at output stride 8 (the paper's) and half that at 16, so each
    branch sees the same image area at either stride, as DeepLabv3+ halves its ASPP rates.

    Args:
        low_channels: unused (the head reads only the last stage).
        high_channels: channels of the last-stage features.
        num_classes: output channels.
        output_stride: 8 or 16.
    """

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, output_stride: int) -> None:
        super().__init__()
        rates = (6, 12, 18, 24) if output_stride == 8 else (3, 6, 9, 12)
        self.branches = nn.ModuleList(
            nn.Conv2d(high_channels, num_classes, 3, padding=r, dilation=r) for r in rates
        )

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Logits at the output stride."""
        x = features["high"]
        return sum(branch(x) for branch in self.branches)
