"""The segmentation model: a backbone, a head, and logits upsampled to the input size."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from stpp.models.heads import resize


class SegmentationModel(nn.Module):
    """Backbone plus head, returning ``{"out": logits}`` at the input's height and width.

    Args:
        backbone: returns ``{"low": stride-4 features, "high": last-stage features}``.
        head: maps that dict to logits at some stride.
        num_classes: channels of the logits.
        arch: the head's registry name.
        backbone_name: the backbone's registry name.
        weights_note: a sentence saying what initialised the backbone.
        pretrained_loaded: whether the backbone was loaded from a weights file.

    Attributes:
        backbone: the backbone module (its parameters form the low-lr group).
        head: the head module (its parameters form the high-lr group).
        head_lr_mult: the paper's head learning-rate multiplier for this arch when it is not the
            usual 10 (DeepLabv2: 1.0), else None; the training loop decides whether to honour it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        arch: str,
        backbone_name: str,
        weights_note: str,
        pretrained_loaded: bool,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.arch = arch
        self.backbone_name = backbone_name
        self.weights_note = weights_note
        self.pretrained_loaded = pretrained_loaded
        self.head_lr_mult: float | None = 1.0 if arch == "deeplabv2" else None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Per-pixel class logits.

        Args:
            x: normalised images, shape ``(N, 3, H, W)``, any H and W.

        Returns:
            ``{"out": logits}`` with logits of shape ``(N, num_classes, H, W)``.
        """
        logits = self.head(self.backbone(x))
        return {"out": resize(logits, x.shape[-2:])}

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the backbone (the base learning rate)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the head (the head learning rate)."""
        return self.head.parameters()
