"""Dilated ResNet-18/34/50/101 backbones with torchvision parameter names.

The backbones are torchvision's own ``ResNet`` modules (built with ``weights=None``) minus the
classifier, so a torchvision ``resnet50-0676ba61.pth``-layout state dict loads with a strict key
check. Output stride 8 dilates the last two stages (dilations 2 and 4), output stride 16 only the
last (dilation 2).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

_LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3]),
}


class ResNetBackbone(tv_resnet.ResNet):
    """A torchvision ResNet without ``avgpool``/``fc`` that returns stride-4 and last-stage features.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        output_stride: 8 (stages 3 and 4 dilated 2 and 4), 16 (stage 4 dilated 2) or 32 (no
            dilation, torchvision's plain ResNet).
        deep_stem: replace the 7x7 ``conv1`` by three 3x3 convolutions (64, 64, 128 channels) as
            in the deep-stem ResNet of the paper's code; ``conv1`` becomes a ``Sequential`` and
            ``bn1`` has 128 channels, so plain torchvision weight files no longer fit.

    Attributes:
        low_channels: channels of the stride-4 ``layer1`` features.
        high_channels: channels of the ``layer4`` features.
        output_stride: stride of the ``layer4`` features.
        ignored_weight_keys: key prefixes of ImageNet files that the backbone does not use.
    """

    ignored_weight_keys = ("fc.",)

    def __init__(self, name: str, output_stride: int = 8, deep_stem: bool = False) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block, layers = _LAYOUTS[name]
        dilate = [False, output_stride == 8, output_stride <= 16]
        native = block is tv_resnet.Bottleneck
        # torchvision refuses dilation in BasicBlock; those stages are patched after construction.
        super().__init__(block, layers, replace_stride_with_dilation=dilate if native else None)
        del self.avgpool, self.fc
        if not native:
            _dilate_basic_blocks(self, dilate)
        if deep_stem:
            self._make_deep_stem(block, layers[0])
        self.name = name
        self.deep_stem = deep_stem
        self.low_channels = 64 * block.expansion
        self.high_channels = 512 * block.expansion
        self.output_stride = output_stride

    def _make_deep_stem(self, block: type[nn.Module], num_blocks: int) -> None:
        norm = self._norm_layer
        self.conv1 = nn.Sequential(
            tv_resnet.conv3x3(3, 64, stride=2), norm(64), nn.ReLU(inplace=True),
            tv_resnet.conv3x3(64, 64), norm(64), nn.ReLU(inplace=True),
            tv_resnet.conv3x3(64, 128),
        )
        self.bn1 = norm(128)
        # layer1 now receives 128 channels; rebuild it with torchvision's own layer factory.
        self.inplanes, self.dilation = 128, 1
        self.layer1 = self._make_layer(block, 64, num_blocks)
        for module in (self.conv1, self.bn1, self.layer1):
            _init_like_torchvision(module)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of an image batch.

        Args:
            x: images, shape ``(N, 3, H, W)``.

        Returns:
            ``{"low": layer1 features (stride 4), "high": layer4 features (stride output_stride)}``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return {"low": low, "high": high}


def _dilate_basic_blocks(model: tv_resnet.ResNet, dilate: list[bool]) -> None:
    """Turn the strides of layer2-4 into dilations where ``dilate`` says so, for BasicBlock nets.

    Follows torchvision's Bottleneck convention: in a dilated stage the first block's strided conv
    keeps the previous dilation (it still reads the undilated grid) and every later 3x3 conv gets
    the new one, so the dilated net computes exactly the strided net's features on a denser grid.
    """
    dilation = 1
    for stage, use in zip((model.layer2, model.layer3, model.layer4), dilate):
        if not use:
            continue
        previous, dilation = dilation, dilation * 2
        first = stage[0]
        set_conv_geometry(first.conv1, stride=1, dilation=previous)
        set_conv_geometry(first.conv2, stride=1, dilation=dilation)
        if first.downsample is not None:
            first.downsample[0].stride = (1, 1)
        first.stride = 1
        for block in stage[1:]:
            set_conv_geometry(block.conv1, stride=1, dilation=dilation)
            set_conv_geometry(block.conv2, stride=1, dilation=dilation)


def set_conv_geometry(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    """Set a square conv's stride and dilation, with the padding that keeps it "same"-aligned.

    Args:
        conv: the convolution to change in place (its weights are untouched).
        stride: the new stride.
        dilation: the new dilation; padding becomes ``dilation * (kernel_size - 1) // 2``.
    """
    k = conv.kernel_size[0]
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (k - 1) // 2,) * 2


def _init_like_torchvision(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
