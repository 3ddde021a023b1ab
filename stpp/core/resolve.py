"""A run's config from what a person chose, and the checks it must pass before anything is written.

The headless CLI, the app's Train tab and the project CLI resolve a run's config here, so each
refuses the same values with the same message; nothing here needs torch, so the app answers at
once. What only the engine can tell (a weights file that does not fit its backbone) it checks when
it builds the model (:func:`stpp.headless.validate_config`, and the worker when the run starts).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from stpp.core.classes import ClassInfo
from stpp.core.config import METHODS, ConfigError, DataConfig, ModelConfig, StppConfig, apply_overrides, get_preset
from stpp.core.method import stage_names

OUTPUT_STRIDES = (8, 16)
"""The ``model.output_stride`` values every backbone builds."""
PRETRAINED_WORDS = ("imagenet", "none")
"""The ``model.pretrained`` values that name no file."""


def resolve_config(preset: str, method: str, overrides: Sequence[str] = (), device: str | None = None,
                   classes: ClassInfo | None = None) -> StppConfig:
    """Preset, then method, device and ``key=value`` overrides, then the dataset's classes; checked.

    Raises:
        ConfigError: an unknown preset, method or key, or a value :func:`check_config` refuses.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    cfg = replace(get_preset(preset), method=method)
    cfg = apply_overrides(cfg, list(overrides))
    if device is not None:
        cfg = replace(cfg, device=device)
    if classes is not None:
        cfg = replace(cfg, data=DataConfig(
            num_classes=classes.num_classes, class_names=tuple(classes.names),
            palette=tuple(tuple(c) for c in classes.palette), ignore_index=classes.ignore_index))
    check_config(cfg)
    return cfg


def check_config(cfg: StppConfig) -> None:
    """Refuse values that would only fail later in the run (the choice words are checked where a
    config is built: :data:`stpp.core.config.CHOICES`).

    Raises:
        ConfigError: the message names the key, the value and what would do.
    """
    stage_names(cfg)
    if cfg.selftrain.init_seed_stride < 1:
        raise ConfigError(f"selftrain.init_seed_stride must be at least 1, not {cfg.selftrain.init_seed_stride}")
    if not 0 <= cfg.selftrain.reliable_ratio <= 1:
        raise ConfigError(f"selftrain.reliable_ratio must be within [0, 1], not {cfg.selftrain.reliable_ratio}")
    if cfg.optim.last_every < 1:
        raise ConfigError(f"optim.last_every must be at least 1, not {cfg.optim.last_every}")
    for key, value in (("optim.epochs", cfg.optim.epochs), ("optim.batch_size", cfg.optim.batch_size),
                       ("pseudo.num_checkpoints", cfg.pseudo.num_checkpoints)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, not {value}")
    if cfg.pseudo.num_checkpoints < 2 and cfg.method == "st++":
        raise ConfigError("st++ needs pseudo.num_checkpoints >= 2 to measure stability")
    if cfg.optim.epochs < cfg.pseudo.num_checkpoints:
        raise ConfigError(f"the teacher saves pseudo.num_checkpoints={cfg.pseudo.num_checkpoints} checkpoints at "
                          f"distinct epochs: optim.epochs must be at least that, not {cfg.optim.epochs} "
                          f"(or lower pseudo.num_checkpoints; st++ needs 2 or more)")
    check_model_config(cfg.model, max(1, cfg.data.num_classes))
    if cfg.model.pretrained not in PRETRAINED_WORDS and not Path(cfg.model.pretrained).is_file():
        raise ConfigError(f"weights file not found: {cfg.model.pretrained}")


def check_model_config(model: ModelConfig, num_classes: int) -> None:
    """Refuse a model the engine cannot build (arch and backbone names are choice words already).

    Raises:
        ConfigError: an output stride other than 8 or 16, a deep stem on MobileNetV2, or fewer than
            one class.
    """
    if model.output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"model.output_stride must be 8 or 16, not {model.output_stride}")
    if model.deep_stem and model.backbone == "mobilenet_v2":
        raise ConfigError("model.deep_stem applies to ResNet backbones only, not mobilenet_v2")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, not {num_classes}")
