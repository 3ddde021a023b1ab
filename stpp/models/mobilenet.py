"""A dilated MobileNetV2 backbone with torchvision parameter names.

High-level features are the 320-channel output of the last inverted-residual block
(``features[17]``); the final 1x1 convolution to 1280 channels (``features[18]``) and the classifier
are dropped, as in DeepLab's own MobileNetV2 feature extractor: the 1280-channel map would make
the ASPP four times more expensive for no gain reported there. Low-level features for DeepLabv3+
are the stride-4, 24-channel output of ``features[:4]``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import mobilenetv2 as tv_mobilenet

from stpp.models.resnet import set_conv_geometry

_LOW_LEVEL_INDEX = 3
"""``features[:4]`` ends at stride 4 with 24 channels."""


class MobileNetV2Backbone(tv_mobilenet.MobileNetV2):
    """torchvision's MobileNetV2 without its last 1x1 conv and classifier, dilated to OS 8 or 16.

    The stride-2 inverted-residual blocks beyond the requested output stride get stride 1, and
    every later depthwise convolution is dilated (2 after the first removed stride, 4 after the
    second). As in torchvision's dilated ResNet, the block whose stride was removed keeps the
    previous dilation, so the dilated net computes the undilated net's features on a denser grid.

    Args:
        output_stride: 8, 16 or 32 (no dilation, torchvision's plain MobileNetV2).

    Attributes:
        low_channels: 24, channels of the stride-4 features.
        high_channels: 320, channels of the last block's features.
        output_stride: stride of the high-level features.
        ignored_weight_keys: key prefixes of ImageNet files that the backbone does not use.
    """

    ignored_weight_keys = ("classifier.", "features.18.")

    def __init__(self, output_stride: int = 16) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        super().__init__()
        del self.classifier
        self.features = self.features[:-1]
        _dilate(self.features, output_stride)
        self.name = "mobilenet_v2"
        self.deep_stem = False
        self.low_channels = self.features[_LOW_LEVEL_INDEX].out_channels
        self.high_channels = self.features[-1].out_channels
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of an image batch.

        Args:
            x: images, shape ``(N, 3, H, W)``.

        Returns:
            ``{"low": stride-4 features (24 ch), "high": last block's features (320 ch)}``.
        """
        low = x
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == _LOW_LEVEL_INDEX:
                low = x
        return {"low": low, "high": x}


def _dilate(features: nn.Sequential, output_stride: int) -> None:
    stride, dilation = 2, 1  # features[0] is a stride-2 conv
    for block in features[1:]:
        depthwise = next(m for m in block.conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
        if block.stride == 1:
            set_conv_geometry(depthwise, stride=1, dilation=dilation)
        elif stride * block.stride <= output_stride:
            stride *= block.stride
        else:
            set_conv_geometry(depthwise, stride=1, dilation=dilation)
            dilation *= block.stride
            block.stride = 1
