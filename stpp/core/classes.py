"""Class metadata: names, one colour per class and the ignore value, from any of the forms users have.

Three sources, one result (:class:`ClassInfo`):

- ``classes.json``: ``{"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255}``
  (:func:`load_classes`; ``palette`` and ``ignore_index`` optional);
- a Pascal VOC / CVAT ``labelmap.txt``: one ``label:r,g,b:parts:actions`` line per class, ``#``
  comments (:func:`load_labelmap`);
- names entered by hand, optionally with colours (:func:`make_classes`, :func:`parse_class_names`).

Every problem raises :class:`DataError` naming the file and, for files, the line at fault. This
module imports no torch: the store and the web UI use it.
"""

from __future__ import annotations

import json
import numbers
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from stpp.core.config import IGNORE_INDEX

Colour = tuple[int, int, int]
MAX_CLASSES = 255
"""An 8-bit mask holds class indices 0..254 below the ignore value 255."""

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
"""The 21 Pascal VOC classes, in mask-index order."""


class DataError(ValueError):
    """A dataset, split file or class file that cannot be used; the message names file and problem."""


@dataclass(frozen=True)
class ClassInfo:
    """The classes of a dataset or project.

    Attributes:
        names: one name per class index.
        palette: one RGB colour per class index.
        ignore_index: the mask value meaning "no label".
    """

    names: tuple[str, ...]
    palette: tuple[Colour, ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        """The number of classes (valid mask values: ``0 .. num_classes - 1`` and ``ignore_index``)."""
        return len(self.names)

    def index(self, name: str) -> int:
        """The index of the class called ``name``.

        Raises:
            DataError: no class has this name.
        """
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"no class named {name!r} (classes: {', '.join(self.names)})") from None

    def to_dict(self) -> dict[str, Any]:
        """The ``classes.json`` form."""
        return {"classes": list(self.names), "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index}


def default_palette(num_classes: int) -> tuple[Colour, ...]:
    """Distinct colours for ``num_classes`` classes: the Pascal VOC colour map (class 0 black)."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append((r, g, b))
    return tuple(palette)


def voc_classes() -> ClassInfo:
    """The Pascal VOC 2012 classes with their standard colours."""
    return ClassInfo(VOC_CLASSES, default_palette(len(VOC_CLASSES)), IGNORE_INDEX)


def make_classes(names: Sequence[str], palette: Sequence[Sequence[int]] | None = None,
                 ignore_index: int = IGNORE_INDEX, *, source: str = "classes") -> ClassInfo:
    """Validate classes given directly (entered by hand, or read from a file) and build a :class:`ClassInfo`.

    Names are stripped of surrounding spaces; a missing palette gets the VOC colours.

    Args:
        names: one name per class index.
        palette: one ``[r, g, b]`` per class, or None.
        ignore_index: the mask value meaning "no label"; above every class index, at most 255.
        source: how messages name where the classes came from.

    Raises:
        DataError: an empty list, a name that is empty or not a string, repeated names, more than
            255 classes, a palette of the wrong length or with values outside 0..255, or a bad
            ignore index.
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise DataError(f"{source}: the class list is empty; a project needs at least one class")
    clean = [_name(source, index, name) for index, name in enumerate(names)]
    repeated = sorted(name for name, count in Counter(clean).items() if count > 1)
    if repeated:
        raise DataError(f"{source}: duplicate class names: {', '.join(repeated)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral) or not 0 <= ignore_index <= 255:
        raise DataError(f"{source}: ignore_index must be an integer in 0..255, got {ignore_index!r}")
    if len(clean) > min(ignore_index, MAX_CLASSES):
        raise DataError(f"{source}: {len(clean)} classes do not fit below ignore_index {ignore_index} "
                        f"(8-bit masks hold class indices 0..{ignore_index - 1})")
    if palette is None:
        colours = default_palette(len(clean))
    else:
        if isinstance(palette, str) or not isinstance(palette, Sequence) or len(palette) != len(clean):
            count = len(palette) if isinstance(palette, Sequence) and not isinstance(palette, str) else "no list of"
            raise DataError(f"{source}: the palette has {count} colours but there are {len(clean)} classes")
        colours = tuple(_colour(source, index, clean[index], colour) for index, colour in enumerate(palette))
    return ClassInfo(tuple(clean), colours, int(ignore_index))


def _name(source: str, index: int, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{source}: class {index} has an invalid name {name!r} (expected a non-empty string)")
    return name.strip()


def _colour(source: str, index: int, name: str, colour: Any) -> Colour:
    if (isinstance(colour, str) or not isinstance(colour, Sequence) or len(colour) != 3
            or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 255
                       for c in colour)):
        raise DataError(f"{source}: palette colour {index} ({name}) is {colour!r}; expected [r, g, b] "
                        "with integers in 0..255")
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def parse_class_names(text: str, *, source: str = "class names") -> ClassInfo:
    """Classes typed by hand: ``"sky, road, car"``, optionally with colours ``"road=#804080"``.

    Raises:
        DataError: no names, a bad colour, or anything :func:`make_classes` refuses.
    """
    names, colours = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, colour = part.partition("=")
        names.append(name)
        colours.append(_hex_colour(source, name, colour.strip()) if colour.strip() else None)
    if not names:
        raise DataError(f"{source}: the class list is empty; a project needs at least one class")
    defaults = default_palette(len(names))
    palette = [c if c is not None else defaults[i] for i, c in enumerate(colours)]
    return make_classes(names, palette, source=source)


def _hex_colour(source: str, name: str, text: str) -> Colour:
    if not re.fullmatch(r"#?[0-9a-fA-F]{6}", text):
        raise DataError(f"{source}: colour of {name.strip()!r} is {text!r}; expected #rrggbb")
    value = int(text.lstrip("#"), 16)
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255)


def classes_from_dict(values: Mapping[str, Any], source: str = "classes") -> ClassInfo:
    """A :class:`ClassInfo` from the ``classes.json`` mapping (``classes``, ``palette``, ``ignore_index``).

    Raises:
        DataError: not a mapping with a non-empty ``classes`` list, or invalid content.
    """
    if not isinstance(values, Mapping):
        raise DataError(f"{source}: expected a JSON object with a \"classes\" list, got {type(values).__name__}")
    names = values.get("classes")
    if not isinstance(names, list) or not names:
        raise DataError(f"{source}: \"classes\" must be a non-empty list of class names")
    return make_classes(names, values.get("palette"), values.get("ignore_index", IGNORE_INDEX), source=source)


def load_classes(path: str | Path) -> ClassInfo:
    """Read a ``classes.json``: ``{"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255}``.

    ``palette`` and ``ignore_index`` are optional (VOC colours, 255); other keys are ignored.

    Raises:
        DataError: the file is missing or unreadable; malformed JSON; an empty or invalid class
            list, palette or ignore index. The message starts ``PATH, line N:`` with the line at
            fault.
    """
    path = Path(path)
    return parse_classes_json(_read_text(path, "class file"), str(path))


def parse_classes_json(text: str, source: str) -> ClassInfo:
    """The classes of ``classes.json`` text (see :func:`load_classes`); ``source`` names it in messages."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}, line {exc.lineno}, column {exc.colno}: malformed JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{source}, line 1: expected a JSON object with a \"classes\" list, got {type(data).__name__}")
    lines = _json_lines(text)
    names = data.get("classes")
    if not isinstance(names, list) or not names:
        line = lines.get("classes", (1, []))[0]
        raise DataError(f"{source}, line {line}: \"classes\" must be a non-empty list of class names")
    try:
        return make_classes(names, data.get("palette"), data.get("ignore_index", IGNORE_INDEX), source=source)
    except DataError as exc:
        raise DataError(_with_line(str(exc), source, _blame(str(exc), lines))) from None


def _blame(message: str, lines: dict[str, tuple[int, list[int]]]) -> int:
    """The line a :func:`make_classes` message is about."""
    for pattern, key in ((r"class (\d+) has an invalid name", "classes"), (r"palette colour (\d+)", "palette")):
        match = re.search(pattern, message)
        if match and key in lines:
            items = lines[key][1]
            index = int(match.group(1))
            return items[index] if index < len(items) else lines[key][0]
    for word, key in (("ignore_index", "ignore_index"), ("palette", "palette"), ("duplicate", "classes")):
        if word in message and key in lines:
            return lines[key][0]
    return lines.get("classes", (1, []))[0]


def _with_line(message: str, source: str, line: int) -> str:
    prefix = f"{source}: "
    rest = message[len(prefix):] if message.startswith(prefix) else message
    return f"{source}, line {line}: {rest}"


def _json_lines(text: str) -> dict[str, tuple[int, list[int]]]:
    """For each top-level key of a valid JSON object: the line of its value and of each list item."""
    decoder = json.JSONDecoder()
    space = re.compile(r"[ \t\n\r]*")

    def skip(pos: int) -> int:
        return space.match(text, pos).end()

    def line(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    found: dict[str, tuple[int, list[int]]] = {}
    pos = skip(text.index("{") + 1)
    while pos < len(text) and text[pos] != "}":
        key, pos = decoder.raw_decode(text, pos)
        pos = skip(skip(pos) + 1)  # past the colon
        start, items = pos, []
        if text[pos] == "[":
            pos = skip(pos + 1)
            while text[pos] != "]":
                items.append(line(pos))
                _, pos = decoder.raw_decode(text, pos)
                pos = skip(pos)
                if text[pos] == ",":
                    pos = skip(pos + 1)
            pos += 1
        else:
            _, pos = decoder.raw_decode(text, pos)
        found.setdefault(key, (line(start), items))
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
    return found


def load_labelmap(path: str | Path) -> ClassInfo:
    """Read a Pascal VOC / CVAT ``labelmap.txt``: ``label:r,g,b:parts:actions`` per class, ``#`` comments.

    Class indices follow the line order (CVAT writes ``background:0,0,0::`` first). Only the
    name and the colour are used; a line may omit the ``parts`` and ``actions`` fields.

    Raises:
        DataError: the file is unreadable, a line is malformed, a colour is invalid, two classes
            share a name or a colour (masks could not be mapped back), or there is no class;
            the message gives the line at fault.
    """
    path = Path(path)
    return parse_labelmap(_read_text(path, "label map"), str(path))


def parse_labelmap(text: str, source: str) -> ClassInfo:
    """The classes of ``labelmap.txt`` text (see :func:`load_labelmap`); ``source`` names it in messages."""
    names: list[str] = []
    palette: list[Colour] = []
    seen_names: dict[str, int] = {}
    seen_colours: dict[Colour, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2:
            raise DataError(f"{source}, line {number}: expected label:r,g,b:parts:actions, got {line!r}")
        # Names may contain colons: the last three fields (colour, parts, actions) are positional.
        name, colour_text = (":".join(fields[:-3]), fields[-3]) if len(fields) >= 4 else (fields[0], fields[1])
        name = name.strip()
        if not name:
            raise DataError(f"{source}, line {number}: the label name is empty")
        colour = _labelmap_colour(source, number, colour_text)
        if name in seen_names:
            raise DataError(f"{source}, line {number}: label {name!r} is already defined on line {seen_names[name]}")
        if colour in seen_colours:
            raise DataError(f"{source}, line {number}: colour {','.join(map(str, colour))} of {name!r} is already "
                            f"used on line {seen_colours[colour]}; colour masks could not be told apart")
        seen_names[name], seen_colours[colour] = number, number
        names.append(name)
        palette.append(colour)
    if not names:
        raise DataError(f"{source}, line 1: no labels; a label map needs at least one label:r,g,b:: line")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{source}, line {seen_names[names[MAX_CLASSES]]}: more than {MAX_CLASSES} labels "
                        "do not fit an 8-bit mask")
    return make_classes(names, palette, source=source)


def _labelmap_colour(source: str, number: int, text: str) -> Colour:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise DataError(f"{source}, line {number}: colour {text!r} must be r,g,b with integers in 0..255")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def format_labelmap(classes: ClassInfo) -> str:
    """The ``labelmap.txt`` text of ``classes`` (what :func:`load_labelmap` reads back)."""
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{name}:{r},{g},{b}::" for name, (r, g, b) in zip(classes.names, classes.palette)]
    return "\n".join(lines) + "\n"


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc})") from None
