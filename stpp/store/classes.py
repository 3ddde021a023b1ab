"""A project's classes: names, palette and ignore index, read from ``classes.json`` or given directly."""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from stpp.config import IGNORE_INDEX
from stpp.store.db import StoreError


@dataclass(frozen=True)
class ClassInfo:
    """Class names (index = mask value), one RGB colour per class, and the ignore value."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        """How many classes (valid mask values are ``0 .. num_classes - 1`` and ``ignore_index``)."""
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """The ``classes.json`` form."""
        return {"classes": list(self.names), "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index}


def default_palette(count: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: distinct colours for ``count`` classes."""
    colours = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def make_classes(names: list[str] | tuple[str, ...], palette: Any = None,
                 ignore_index: int = IGNORE_INDEX, *, source: str = "classes") -> ClassInfo:
    """Validate and build a :class:`ClassInfo`; a missing palette gets the VOC colours.

    Raises:
        StoreError: an empty or non-string class list, repeated names, a palette of the wrong
            length or with values outside 0..255, or an ignore index that is also a class.
    """
    if not isinstance(names, (list, tuple)) or not names:
        raise StoreError(f"{source}: the class list is empty")
    clean = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise StoreError(f"{source}: class {i} must be a non-empty name, got {name!r}")
        clean.append(name.strip())
    if len(set(clean)) != len(clean):
        raise StoreError(f"{source}: class names repeat: {', '.join(sorted({n for n in clean if clean.count(n) > 1}))}")
    if len(clean) > 255:
        raise StoreError(f"{source}: at most 255 classes fit an 8-bit mask, got {len(clean)}")
    if palette is None:
        palette = default_palette(len(clean))
    if not isinstance(palette, (list, tuple)) or len(palette) != len(clean):
        raise StoreError(f"{source}: the palette needs one [r, g, b] per class ({len(clean)})")
    colours = []
    for i, colour in enumerate(palette):
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(c, numbers.Integral) and 0 <= c <= 255 for c in colour)):
            raise StoreError(f"{source}: palette entry {i} must be [r, g, b] in 0..255, got {colour!r}")
        colours.append(tuple(int(c) for c in colour))
    if not isinstance(ignore_index, int) or not len(clean) <= ignore_index <= 255:
        raise StoreError(f"{source}: ignore_index must be an integer in {len(clean)}..255, got {ignore_index!r}")
    return ClassInfo(tuple(clean), tuple(colours), ignore_index)


def classes_from_dict(values: Mapping[str, Any], source: str = "classes") -> ClassInfo:
    """A :class:`ClassInfo` from the ``classes.json`` mapping (``classes``, ``palette``, ``ignore_index``)."""
    if not isinstance(values, Mapping) or "classes" not in values:
        raise StoreError(f"{source}: expected an object with a \"classes\" list")
    return make_classes(values["classes"], values.get("palette"), values.get("ignore_index", IGNORE_INDEX),
                        source=source)


def load_classes(path: str | Path) -> ClassInfo:
    """Read a ``classes.json`` file.

    Raises:
        StoreError: unreadable or malformed JSON (the message gives the line), or invalid content.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read: {exc}") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    return classes_from_dict(values, source=str(path))


def as_class_info(value: Any) -> ClassInfo:
    """Accept a :class:`ClassInfo`, a path to ``classes.json``, its mapping, or any object with
    ``names`` (or ``classes``), ``palette`` and ``ignore_index`` attributes."""
    if isinstance(value, ClassInfo):
        return value
    if isinstance(value, (str, Path)):
        return load_classes(value)
    if isinstance(value, Mapping):
        return classes_from_dict(value)
    names = getattr(value, "names", None) or getattr(value, "classes", None)
    if names is None:
        raise StoreError(f"cannot read classes from {type(value).__name__}")
    palette = getattr(value, "palette", None)
    return make_classes(list(names), [list(c) for c in palette] if palette is not None else None,
                        getattr(value, "ignore_index", IGNORE_INDEX))
