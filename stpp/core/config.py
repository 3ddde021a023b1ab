"""Typed, frozen configuration for every stpp run, with named presets and ``key=value`` overrides.

A run's configuration is one :class:`StppConfig`. It is resolved once (preset, then overrides, then
what the data says: number of classes and their names), written to ``config.json`` and stored in
every checkpoint, so a checkpoint alone can rebuild its model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

IGNORE_INDEX = 255
"""Mask value that the loss, the metrics and every transform treat as "no label"."""

METHODS = ("supervised", "st", "st++")
"""Every method, as a config's ``method`` says it."""
ARCHS = ("deeplabv3plus", "pspnet", "deeplabv2")
"""The segmentation heads :func:`stpp.models.build_model` builds."""
BACKBONES = ("mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101")
"""The backbones :func:`stpp.models.build_model` builds."""
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
"""The ``optim.amp`` settings."""
SWITCH_CHOICES = ("auto", "on", "off")
"""The ``optim.channels_last`` settings."""
SPLITS = ("stability", "random")
"""The ``selftrain.split`` settings."""
CHOICES: dict[str, tuple[str, ...]] = {"method": METHODS, "model.arch": ARCHS, "model.backbone": BACKBONES,
                                       "optim.amp": AMP_CHOICES, "optim.channels_last": SWITCH_CHOICES,
                                       "selftrain.split": SPLITS}
"""The keys whose value is one of a few words, checked wherever a config is built or overridden."""


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture.

    Attributes:
        arch: segmentation head: ``deeplabv3plus``, ``pspnet`` or ``deeplabv2``.
        backbone: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``mobilenet_v2``.
        output_stride: 8 (the paper) or 16 (3-4x cheaper).
        deep_stem: replace the ResNet 7x7 stem by three 3x3 convolutions.
        pretrained: ``imagenet`` (MobileNetV2: the installed offline torchvision weights; ResNet:
            none exist offline, so random init with a warning), ``none`` (random init), or the path
            of a local torchvision-layout ``.pth`` file, loaded with a strict key check.
        sync_bn: convert BatchNorm to SyncBatchNorm under multi-GPU DistributedDataParallel.
    """

    arch: str = "deeplabv3plus"
    backbone: str = "resnet50"
    output_stride: int = 8
    deep_stem: bool = False
    pretrained: str = "imagenet"
    sync_bn: bool = False


@dataclass(frozen=True)
class DataConfig:
    """What the dataset says about itself; filled in from ``classes.json`` when a run starts."""

    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, ...], ...] = ()
    ignore_index: int = IGNORE_INDEX


@dataclass(frozen=True)
class AugmentConfig:
    """Weak augmentation (every training image) and strong augmentation (pseudo-labelled images).

    Attributes:
        base_size: the long side is rescaled to a random size in
            ``[scale_min, scale_max] x base_size`` (aspect ratio kept).
        crop_size: side of the random square crop (after padding image 0 / mask 255).
        hflip: probability of a horizontal flip.
        strong_unlabeled: strong data augmentation (SDA) on pseudo-labelled images (the paper: on).
        strong_labeled: SDA on labelled images too (a paper ablation: off).
        cutout: Cutout inside SDA (target set to ignore inside the box).
        cutout_redraw: draw the Cutout box's size, ratio and corner again until the box fits in the
            crop, as the paper's code does; off: shorten a side that does not fit to the crop side
            (stpp's earlier rule: about 1.5x the paper's mean erased area).
    """

    base_size: int = 400
    crop_size: int = 321
    scale_min: float = 0.5
    scale_max: float = 2.0
    hflip: float = 0.5
    strong_unlabeled: bool = True
    strong_labeled: bool = False
    cutout: bool = True
    cutout_redraw: bool = True


@dataclass(frozen=True)
class OptimConfig:
    """SGD with poly decay, shared by the teacher and every student.

    Attributes:
        epochs: teacher epochs (the paper: the same for students).
        student_epochs: epochs of each re-training stage; 0 means ``epochs`` (the paper).
        teacher_double_below: the teacher trains on its labelled list twice over when the list holds
            fewer images than this (the paper's code: 200); 0 never doubles it. Students are not
            affected (their labelled images repeat to match the pseudo-labelled ones).
        batch_size: per-step batch (global batch under DDP).
        base_lr: learning rate at batch 16; scaled by ``batch_size / 16``; backbone uses it,
            the head ``head_lr_mult`` times it.
        amp: mixed precision: ``auto`` (on for CUDA), ``off``, ``bf16`` or ``fp16``.
        channels_last: memory format: ``auto`` (on for CUDA), ``on`` or ``off``.
        last_every: epochs between ``last.pt`` writes (the mid-stage resume point).
        num_workers: DataLoader worker processes.
    """

    epochs: int = 80
    student_epochs: int = 0
    teacher_double_below: int = 200
    batch_size: int = 16
    base_lr: float = 0.001
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    amp: str = "auto"
    channels_last: str = "auto"
    last_every: int = 1
    num_workers: int = 2


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo-labelling and the stability ranking.

    Attributes:
        tta: test-time augmentation for the final labels (softmax averaged over scales and flip).
        tta_scales: the TTA scales.
        tta_flip: add horizontally flipped copies in TTA.
        num_checkpoints: K, the teacher checkpoints saved evenly over training for stability.
    """

    tta: bool = True
    tta_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
    tta_flip: bool = True
    num_checkpoints: int = 3


@dataclass(frozen=True)
class SelfTrainConfig:
    """ST / ST++ choices, including the paper's ablations.

    Attributes:
        reliable_ratio: R, the share of unlabelled images (top by stability) called reliable.
        split: ``stability`` (ST++) or ``random`` (ablation).
        pixel_threshold: when > 0, pixels whose confidence is below it become ignore (the paper's
            pixel-level selection ablation, 0.5); 0 disables it.
        stage3: after stage 2, re-label every unlabelled image and train once more.
        fresh_init: every training stage draws its own random initialisation (seeded by the run's
            seed and the stage), as the paper's code does; off: every student starts from the
            teacher's initial weights.
        init_seed_stride: with ``fresh_init``, the stage at index k of
            :data:`~stpp.core.method.STAGES` is initialised under ``seed + k * init_seed_stride``. The
            default (a prime) keeps every stage of runs seeded 0, 1, 2, ... apart; 1, what runs made
            before this key used, gave seed s + 1's stage k the initial weights of seed s's stage k + 1.
    """

    reliable_ratio: float = 0.5
    split: str = "stability"
    pixel_threshold: float = 0.0
    stage3: bool = False
    fresh_init: bool = True
    init_seed_stride: int = 7919


@dataclass(frozen=True)
class EvalConfig:
    """Validation: whole images at original resolution, or a sliding window for large images."""

    sliding_window: bool = False
    window_size: int = 0
    window_stride: int = 0


@dataclass(frozen=True)
class StppConfig:
    """The whole, resolved configuration of one run.

    Attributes:
        preset: the preset it started from.
        method: ``supervised`` (SupOnly), ``st`` or ``st++``.
        seed: seeds model initialisation, shuffling and augmentation.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    preset: str = "pascal"
    method: str = "st++"
    seed: int = 0
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def student_epochs(self) -> int:
        """Epochs of each re-training stage."""
        return self.optim.student_epochs or self.optim.epochs

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        """A short, stable hash of the resolved config, for manifests and result tables."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StppConfig":
        """Rebuild a config saved by :meth:`to_dict` (unknown keys are refused).

        A section saved without a key of :data:`LEGACY_VALUES` gets that key's legacy value; a
        missing section or any other missing key gets the default.
        """
        return _build(cls, values, prefix="")


LEGACY_VALUES: dict[str, Any] = {
    "augment.cutout_redraw": False,
    "optim.teacher_double_below": 0,
    "selftrain.fresh_init": False,
    "selftrain.init_seed_stride": 1,
}
"""What a saved config means by a key it lacks: the behaviour from before the key existed.

A run folder or run row written by an older stpp then resumes as it began (a stage's steps per
epoch, Cutout boxes and initial weights do not change halfway). A config built from scratch gets the
field defaults.
"""


class ConfigError(ValueError):
    """A preset name, override key or value that cannot be used."""


def _mobilenet_preset(name: str, **sections: Any) -> StppConfig:
    model = ModelConfig(backbone="mobilenet_v2", output_stride=16)
    return StppConfig(preset=name, model=model, **sections)


PRESETS: dict[str, StppConfig] = {
    # The paper's Pascal VOC recipe: DeepLabv3+ ResNet-50, OS 8, 321 crops, 80 epochs.
    "pascal": StppConfig(preset="pascal"),
    # The paper's Cityscapes recipe: base 2048, 721 crops, lr 0.004, 240 epochs.
    "cityscapes": StppConfig(
        preset="cityscapes",
        augment=AugmentConfig(base_size=2048, crop_size=721),
        optim=OptimConfig(epochs=240, base_lr=0.004),
    ),
    # CamVid at its full 480x360 resolution, for one GPU.
    "camvid": _mobilenet_preset(
        "camvid",
        augment=AugmentConfig(base_size=480, crop_size=321),
        # Teacher epochs are five steps long (1/8: 46 images, doubled): a resume point every 10 epochs.
        optim=OptimConfig(epochs=240, batch_size=16, base_lr=0.004, last_every=10),
    ),
    # CamVid trained at 240x180 scale (crop 160, batch 8, no TTA) so SupOnly + ST + ST++ fit in under
    # two hours on 2 CPU cores; evaluation and labelling stay at the original 480x360. Students keep
    # 30 epochs: at 12 the re-training gained nothing over SupOnly (BENCHMARKS.md, factor study).
    "camvid-cpu": _mobilenet_preset(
        "camvid-cpu",
        augment=AugmentConfig(base_size=240, crop_size=160),
        optim=OptimConfig(epochs=80, student_epochs=30, batch_size=8, base_lr=0.004, num_workers=1),
        pseudo=PseudoConfig(tta=False),
    ),
    # The demo project (data/demo, 240x180 images): ST++ in about 5 minutes on 2 CPU cores, every
    # stage as many epochs as the teacher, as the paper trains. 10 epochs are 30 teacher steps (12
    # labelled images, doubled), 90 for stage 1 (30 pseudo + 12 x 3 labelled) and 150 for stage 2
    # (60 + 12 x 5). A teacher trained 33 epochs with students at 6 (the earlier preset) ended above
    # its ST++ students (BENCHMARKS.md).
    "tiny": _mobilenet_preset(
        "tiny",
        augment=AugmentConfig(base_size=240, crop_size=128),
        optim=OptimConfig(epochs=10, batch_size=8, base_lr=0.004, num_workers=1),
        pseudo=PseudoConfig(tta=False),
    ),
    # Seconds on CPU, for the test suite (generated 64x64 images). 12 teacher epochs on the 8
    # labelled images, doubled, are 48 steps: fewer leave BatchNorm's running statistics too far from
    # the batch statistics. Students keep 6 epochs.
    "test": _mobilenet_preset(
        "test",
        augment=AugmentConfig(base_size=64, crop_size=48),
        optim=OptimConfig(epochs=12, student_epochs=6, batch_size=4, base_lr=0.01, num_workers=0),
        pseudo=PseudoConfig(tta_scales=(0.75, 1.0, 1.5)),
    ),
}

PRESET_NOTES: dict[str, str] = {
    "pascal": "the paper's Pascal VOC recipe (DeepLabv3+ ResNet-50, OS 8, 321 crops): for GPUs, hours a stage",
    "cityscapes": "the paper's Cityscapes recipe (721 crops, 240 epochs): for GPUs, hours a stage",
    "camvid": "CamVid at its full 480x360 (MobileNetV2): for one GPU, minutes a method on an H100",
    "camvid-cpu": "CamVid trained at 240x180 for CPU: ST++ about an hour on 2 cores (55 min measured)",
    "tiny": "the demo project on CPU: ST++ in about 5 minutes on 2 cores",
    "test": "the test suite's, for generated 64x64 images (seconds there); on real images it takes minutes "
            "and its mIoU means nothing",
}
"""What each preset is for and how long it takes where it is meant to run (measured figures: BENCHMARKS.md)."""


def get_preset(name: str) -> StppConfig:
    """The named preset; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def override_keys(config: StppConfig) -> list[str]:
    """Every ``section.key`` (and top-level key) that :func:`apply_overrides` accepts."""
    keys = []
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{sub.name}" for sub in fields(value)]
        else:
            keys.append(f.name)
    return keys


def apply_overrides(config: StppConfig, overrides: list[str] | dict[str, Any]) -> StppConfig:
    """Apply ``section.key=value`` overrides, converting each value to the field's type.

    Args:
        config: the config to start from.
        overrides: strings like ``"optim.epochs=3"`` or a ``{"optim.epochs": 3}`` mapping.

    Raises:
        ConfigError: a malformed override, an unknown key (the message lists the valid ones) or a
            value that does not convert to the field's type.
    """
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {text!r} is not of the form key=value")
            items.append((key.strip(), value.strip()))
    for key, value in items:
        config = _set(config, key, value)
    return config


def _set(config: StppConfig, key: str, value: Any) -> StppConfig:
    valid = override_keys(config)
    if key not in valid:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
    section, _, name = key.rpartition(".")
    if not section:
        hint = _field_types(StppConfig)[name]
        return replace(config, **{name: _convert(value, hint, key)})
    sub = getattr(config, section)
    hint = _field_types(type(sub))[name]
    return replace(config, **{section: replace(sub, **{name: _convert(value, hint, key)})})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, key: str) -> Any:
    if hint is str:
        return _choice(str(value), key)
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is tuple:
            (item_type, _) = typing.get_args(hint)
            parts = value if isinstance(value, (list, tuple)) else [p for p in str(value).split(",") if p.strip()]
            return tuple(_convert(p, item_type, key) for p in parts)
        if origin in (typing.Union, types.UnionType):
            raise NotImplementedError(f"optional fields are not supported ({key})")
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"config key {key!r} has an unsupported type {hint!r}")
    raise ConfigError(f"config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def _choice(value: str, key: str) -> str:
    allowed = CHOICES.get(key)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"config key {key!r} is one of {', '.join(allowed)}, not {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    legacy = {key[len(prefix):]: value for key, value in LEGACY_VALUES.items()
              if key.startswith(prefix) and "." not in key[len(prefix):]}
    values = {**legacy, **values}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(prefix + k for k in sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _convert(value, hint, prefix + name)
    return cls(**kwargs)
