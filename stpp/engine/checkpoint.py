"""One checkpoint schema, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stpp.core.masks import atomic_save


def save_checkpoint(path: str | Path, **content: Any) -> Path:
    """Write a checkpoint dict atomically (temp file, then ``os.replace``).

    The schema is ``{model, optimizer, scaler, epoch, step, stage, config, metrics, rng}``;
    missing parts are simply absent. Only tensors and plain Python values are stored, so
    ``torch.load(weights_only=True)`` can read it back.
    """
    path = Path(path)
    atomic_save(path, lambda tmp: torch.save(content, tmp))
    return path


class CheckpointError(ValueError):
    """A file ``torch.load(weights_only=True)`` refuses (the message names it and says why)."""


def load_tensors(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, with a refusal turned into one line.

    Raises:
        CheckpointError: the file holds more than tensors and plain values (a pickled callable
            is named: nothing of it ran), or is no torch file at all.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: not a plain tensor checkpoint: {_refusal_reason(str(error))}") from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: not a torch checkpoint: {' '.join(str(error).split())}") from None


def _refusal_reason(message: str) -> str:
    """What torch's weights-only unpickler objected to, from its (long, multi-line) message."""
    named = re.search(r"GLOBAL ([\w.]+)", message)
    if named:
        return f"refusing to unpickle `{named.group(1)}`"
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return detail.group(1).strip() if detail else "refused by torch.load(weights_only=True)"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a file that is not a plain tensor checkpoint (see :func:`load_tensors`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_tensors(path, map_location)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild the model a checkpoint was saved from (its config says how) in eval mode."""
    from stpp.core.config import StppConfig
    from stpp.models import build_model

    state = load_checkpoint(path)
    cfg = StppConfig.from_dict(state["config"])
    # The file holds every weight, so the ImageNet file is not read.
    model = build_model(replace(cfg.model, pretrained="none"), cfg.data.num_classes)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights, to tell in the events which weights a stage started from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
