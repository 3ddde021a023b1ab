"""A project's classes in whatever form the caller has them, as the store's :class:`ClassInfo`.

The class model and its file formats live in :mod:`stpp.core.classes` (re-exported here); this
module only turns them into store errors. Editing a project's classes is in
:mod:`stpp.store.class_edits`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from stpp.core.classes import (
    ClassInfo,
    DataError,
    classes_from_dict,
    default_palette,
    load_classes,
    load_labelmap,
    make_classes,
    parse_class_names,
)
from stpp.core.config import IGNORE_INDEX
from stpp.store.db import StoreError

__all__ = ["ClassInfo", "as_class_info", "classes_from_dict", "default_palette", "load_classes", "load_labelmap",
           "make_classes", "parse_class_names"]


def as_class_info(value: Any) -> ClassInfo:
    """Accept classes in any form the app or the CLI has them.

    Args:
        value: a :class:`ClassInfo`; a path to a ``classes.json`` or a ``labelmap.txt`` (by name:
            a ``.txt`` file is read as a label map); the ``classes.json`` mapping; a list of names;
            or any object with ``names`` (or ``classes``), ``palette`` and ``ignore_index``.

    Raises:
        StoreError: the classes are invalid (the message names the file and line at fault).
    """
    try:
        if isinstance(value, ClassInfo):
            return make_classes(value.names, value.palette, value.ignore_index)
        if isinstance(value, (str, Path)):
            path = Path(value)
            return load_labelmap(path) if path.suffix.lower() == ".txt" else load_classes(path)
        if isinstance(value, Mapping):
            return classes_from_dict(value)
        if isinstance(value, (list, tuple)):
            return make_classes(list(value))
        names = getattr(value, "names", None) or getattr(value, "classes", None)
        if names is None:
            raise StoreError(f"cannot read classes from {type(value).__name__}")
        palette = getattr(value, "palette", None)
        return make_classes(list(names), [list(c) for c in palette] if palette is not None else None,
                            getattr(value, "ignore_index", IGNORE_INDEX))
    except DataError as exc:
        raise StoreError(str(exc)) from None
