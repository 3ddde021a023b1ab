"""Segmentation models: registries of heads and backbones, and :func:`build_model`.

Backbones keep torchvision's parameter names, so torchvision ImageNet files load with a strict
key check; see :mod:`stpp.models.weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from stpp.core.config import ARCHS as ARCH_NAMES
from stpp.core.config import BACKBONES as BACKBONE_NAMES
from stpp.core.config import ModelConfig
from stpp.core.resolve import check_model_config
from stpp.models.heads import DeepLabV2Head, DeepLabV3PlusHead, PSPHead
from stpp.models.mobilenet import MobileNetV2Backbone
from stpp.models.model import SegmentationModel
from stpp.models.resnet import ResNetBackbone
from stpp.models.weights import WeightsError, init_backbone

__all__ = ["ARCHS", "BACKBONES", "SegmentationModel", "WeightsError", "build_model", "list_models"]


def _mobilenet_v2(output_stride: int, deep_stem: bool) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(output_stride)


ARCHS: dict[str, Callable[..., nn.Module]] = dict(zip(ARCH_NAMES, (DeepLabV3PlusHead, PSPHead, DeepLabV2Head),
                                                      strict=True))
"""Head classes by name; each takes ``(low_channels, high_channels, num_classes, output_stride)``."""

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    name: _mobilenet_v2 if name == "mobilenet_v2" else partial(ResNetBackbone, name) for name in BACKBONE_NAMES}
"""Backbone factories by name; each takes ``(output_stride, deep_stem)``."""


def list_models() -> dict[str, list[str]]:
    """The registered names: ``{"archs": [...], "backbones": [...]}``."""
    return {"archs": list(ARCHS), "backbones": list(BACKBONES)}


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationModel:
    """Build a segmentation model and initialise its backbone as ``cfg.pretrained`` asks.

    Args:
        cfg: architecture, backbone, output stride, deep stem and weights source.
        num_classes: channels of the logits.

    Returns:
        The model, in training mode, on the CPU; ``weights_note`` and ``pretrained_loaded`` say
        what initialised the backbone.

    Raises:
        ValueError: an unknown arch or backbone (the message lists the valid ones), an output
            stride other than 8 or 16, a deep stem on MobileNetV2, or ``num_classes < 1``.
        WeightsError: a weights file that is missing, corrupt or does not fit the backbone.
    """
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; available: {', '.join(ARCHS)}")
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown model.backbone {cfg.backbone!r}; available: {', '.join(BACKBONES)}")
    check_model_config(cfg, num_classes)
    backbone = BACKBONES[cfg.backbone](cfg.output_stride, cfg.deep_stem)
    loaded, note = init_backbone(backbone, cfg.backbone, cfg.pretrained)
    head = ARCHS[cfg.arch](backbone.low_channels, backbone.high_channels, num_classes, cfg.output_stride)
    return SegmentationModel(
        backbone,
        head,
        num_classes=num_classes,
        arch=cfg.arch,
        backbone_name=cfg.backbone,
        weights_note=note,
        pretrained_loaded=loaded,
    )
