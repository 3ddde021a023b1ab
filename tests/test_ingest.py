"""Ingestion on a real store with real generated files: uploads, conversions, bad input, VOC labels, kills."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stpp.core.classes import format_labelmap, make_classes
from stpp.core.masks import read_image, read_mask
from stpp.store import (
    Limits,
    StoreError,
    create_project,
    delete_images,
    disk_usage,
    find_orphan_files,
    get_project,
    import_voc_labels,
    import_voc_project,
    ingest_files,
    open_store,
    project_summary,
    remove_orphan_files,
    seed_demo_project,
)

REPO = Path(__file__).resolve().parent.parent
NAMES = ["background", "road", "car"]
PALETTE = [(0, 0, 0), (128, 64, 128), (64, 0, 128)]
SIZE = (24, 16)  # width, height


@pytest.fixture
def store(workspace: Path):
    with open_store(workspace) as opened:
        yield opened


@pytest.fixture
def project(store):
    return create_project(store, "p", make_classes(NAMES, PALETTE))


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    folder = tmp_path / "upload"
    folder.mkdir()
    return folder


def rgb_array(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def index_mask(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, len(NAMES), (size[1], size[0]), dtype=np.uint8)


def save_image(path: Path, seed: int = 0, size: tuple[int, int] = SIZE, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_array(seed, size)).save(path, **kwargs)
    return path


def save_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette([c for rgb in PALETTE for c in rgb])
    image.save(path)
    return path


def save_pair(folder: Path, name: str, seed: int) -> tuple[Path, Path]:
    """``folder/images/NAME.png`` and ``folder/masks/NAME.png``."""
    return (save_image(folder / "images" / f"{name}.png", seed),
            save_mask(folder / "masks" / f"{name}.png", index_mask(seed)))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rows(store, sql: str = "SELECT * FROM images ORDER BY name", args=()) -> list[dict]:
    return [dict(r) for r in store.db.query(sql, list(args))]


def stored_mask(store, name: str, kind: str = "ground_truth") -> np.ndarray:
    row = rows(store, "SELECT masks.path FROM masks JOIN images ON images.id = image_id "
                      "WHERE images.name = ? AND kind = ?", [name, kind])[0]
    return read_mask(store.path(row["path"]))


def outcome(report, name: str):
    found = report.for_name(name)
    assert len(found) == 1, report.results
    return found[0]


def files_outside(tmp_path: Path, workspace: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if not p.is_relative_to(workspace)}


# --- uploads that work --------------------------------------------------------------------------------


def test_flat_files_pair_by_stem(store, project, upload):
    image_a = save_image(upload / "a.jpg", 1, quality=95)
    mask_a = save_mask(upload / "a.png", index_mask(1))
    image_b = save_image(upload / "b.png", 2)
    save_mask(upload / "b_mask.png", index_mask(2))

    report = ingest_files(store, project, [image_a, mask_a, image_b, upload / "b_mask.png"], "labelled")

    assert report.summary() == "2 added, 0 skipped, 0 failed", report.results
    assert {r["name"]: r["role"] for r in rows(store)} == {"a": "labelled", "b": "labelled"}
    np.testing.assert_array_equal(stored_mask(store, "a"), index_mask(1))
    np.testing.assert_array_equal(stored_mask(store, "b"), index_mask(2))
    stored = rows(store)[0]
    assert store.path(stored["path"]).read_bytes() == image_a.read_bytes()  # upright RGB JPEG kept as is


def test_folder_and_zip_in_one_upload(store, project, upload, tmp_path):
    for i in range(3):
        save_pair(upload / "set", f"f{i}", i)
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3, 5):
            image, mask = save_pair(tmp_path / "z", f"z{i}", i)
            zf.write(image, f"data/images/z{i}.png")
            zf.write(mask, f"data/masks/z{i}.png")
        zf.writestr("data/classes.json", "{}")
        zf.writestr("__MACOSX/._z3.png", b"junk")

    report = ingest_files(store, project, [upload / "set", archive], "validation")

    assert len(report.added) == 5 and not report.failed, report.results
    assert [r.status for r in report.results if "classes.json" in r.source] == ["skipped"]
    assert project_summary(store, project).images["validation"] == 5
    np.testing.assert_array_equal(stored_mask(store, "z4"), index_mask(4))


def test_unlabelled_masks_become_reference_masks(store, project, upload):
    save_pair(upload, "u0", 0)
    save_image(upload / "images" / "u1.png", 1)
    report = ingest_files(store, project, [upload], "unlabeled")
    assert len(report.added) == 2
    summary = project_summary(store, project)
    assert summary.images["unlabelled"] == 2
    assert summary.masks["reference"] == 1 and summary.masks["ground_truth"] == 0


def test_rgb_mask_is_mapped_through_the_palette(store, project, upload):
    mask = index_mask(3)
    colours = np.array(PALETTE + [(255, 255, 255)], dtype=np.uint8)
    mask[0, :5] = 3  # white: the ignore colour
    save_image(upload / "rgb.jpg", 3)
    Image.fromarray(colours[mask]).save(upload / "rgb.png")

    report = ingest_files(store, project, [upload / "rgb.jpg", upload / "rgb.png"], "labelled")

    assert len(report.added) == 1, report.results
    expected = mask.copy()
    expected[0, :5] = 255
    np.testing.assert_array_equal(stored_mask(store, "rgb"), expected)


def test_exif_rotated_jpeg_is_stored_upright_with_its_mask_aligned(store, project, upload):
    raw = rgb_array(5, (40, 20))  # 40 wide, 20 high as written in the file
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: upright it is 20 wide, 40 high
    Image.fromarray(raw).save(upload / "rot.jpg", exif=exif.tobytes(), quality=95)
    upright_mask = np.random.default_rng(0).integers(0, 3, (40, 20), dtype=np.uint8)
    save_mask(upload / "masks" / "rot.png", upright_mask)

    report = ingest_files(store, project, [upload / "rot.jpg", upload / "masks"], "labelled")

    result = outcome(report, "rot")
    assert result.status == "added" and "EXIF orientation 6" in result.reason
    row = rows(store)[0]
    assert (row["width"], row["height"]) == (20, 40)
    stored = Image.open(store.path(row["path"]))
    assert stored.size == (20, 40) and stored.getexif().get(0x0112) in (None, 1)
    expected = np.asarray(read_image(upload / "rot.jpg"))
    np.testing.assert_array_equal(np.asarray(stored.convert("RGB")), expected)
    np.testing.assert_array_equal(stored_mask(store, "rot"), upright_mask)


def test_mask_aligned_with_the_unrotated_file_is_explained(store, project, upload):
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgb_array(6, (40, 20))).save(upload / "r8.jpg", exif=exif.tobytes())
    save_mask(upload / "masks" / "r8.png", np.zeros((20, 40), np.uint8))
    save_pair(upload, "ok", 1)
    report = ingest_files(store, project, [upload], "labelled")
    result = outcome(report, "r8")
    assert result.status == "failed" and "r8.png" in result.source
    assert "40x20" in result.reason and "before its EXIF rotation" in result.reason
    assert outcome(report, "ok").status == "added"


@pytest.mark.parametrize("make, note", [
    (lambda p: Image.fromarray((np.arange(SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0]) * 170).astype(np.uint16))
     .save(p.with_suffix(".png")), "scaled to 8 bits"),
    (lambda p: Image.fromarray(rgb_array(1)[..., 0], mode="L").save(p.with_suffix(".png")), "greyscale"),
    (lambda p: Image.fromarray(np.dstack([rgb_array(2), np.full(SIZE[::-1], 7, np.uint8)]), mode="RGBA")
     .save(p.with_suffix(".png")), "alpha channel dropped"),
    (lambda p: Image.fromarray(rgb_array(3)).save(p.with_suffix(".tif")), "TIFF stored as PNG"),
])
def test_image_modes_are_converted_deliberately(store, project, upload, make, note):
    make(upload / "img")
    source = next(upload.glob("img.*"))
    with Image.open(source) as original:
        original.load()
        mode = original.mode
        values = np.asarray(original)

    report = ingest_files(store, project, [source], "unlabelled")

    result = outcome(report, "img")
    assert result.status == "added" and note in result.reason, result
    stored = Image.open(store.path(rows(store)[0]["path"]))
    assert stored.format == "PNG" and stored.mode == "RGB" and stored.size == SIZE
    pixels = np.asarray(stored)
    if mode.startswith("I"):
        np.testing.assert_array_equal(pixels[..., 0], (values.astype(np.int64) * 255 + 32767) // 65535)
    else:
        np.testing.assert_array_equal(pixels[..., 0], values if values.ndim == 2 else values[..., 0])


def test_duplicates_by_content_are_skipped(store, project, upload):
    save_image(upload / "one.png", 9)
    (upload / "two.png").write_bytes((upload / "one.png").read_bytes())
    first = ingest_files(store, project, [upload / "one.png"], "unlabelled")
    again = ingest_files(store, project, [upload / "one.png", upload / "two.png"], "unlabelled")
    assert len(first.added) == 1
    assert outcome(again, "one").reason == "already in the project"
    assert outcome(again, "two").status == "skipped" and "same content as 'one'" in outcome(again, "two").reason
    assert store.db["images"].count == 1


def test_register_in_place_references_files_without_copying(store, project, upload, workspace):
    image = save_image(upload / "big.png", 4)
    save_mask(upload / "masks" / "big.png", index_mask(4))
    Image.fromarray((np.ones(SIZE[::-1]) * 4000).astype(np.uint16)).save(upload / "deep.png")
    before = image.read_bytes()

    report = ingest_files(store, project, [image, upload / "masks", upload / "deep.png"], "unlabelled",
                          in_place=True)

    assert "registered in place" in outcome(report, "big").reason
    assert "copied, not registered in place" in outcome(report, "deep").reason
    row = rows(store)[0]
    assert row["name"] == "big" and row["in_place"] == 1 and Path(row["path"]) == image.resolve()
    assert list((workspace / "images").rglob("*.png")) == [workspace / rows(store)[1]["path"]]  # only deep.png
    assert stored_mask(store, "big", "reference").shape == SIZE[::-1]
    usage = disk_usage(store, project)
    assert usage.in_place == image.stat().st_size
    delete_images(store, project, ["big"])
    assert image.read_bytes() == before  # never deleted: not ours


# --- bad input: each names the file and the problem, and the rest of the upload is added -----------------


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rgb_array(11, (64, 64))).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _zip_with(entry: str):
    def make(folder: Path) -> Path:
        with zipfile.ZipFile(folder / "evil.zip", "w") as zf:
            zf.writestr(entry, png_bytes(Image.fromarray(rgb_array(12))))
            zf.writestr("fine.png", png_bytes(Image.fromarray(rgb_array(13))))
        return folder / "evil.zip"
    return make


BAD_INPUTS = {
    "corrupt image": (lambda f: (f / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200)) and f / "bad.png",
                      "bad.png", "corrupt"),
    "truncated jpeg": (lambda f: _truncated_jpeg(f / "cut.jpg") or f / "cut.jpg", "cut.jpg", "truncated"),
    "non-image with image suffix": (lambda f: (f / "notes.jpg").write_text("hello") and f / "notes.jpg",
                                    "notes.jpg", "not an image"),
    "non-image file type": (lambda f: (f / "report.pdf").write_bytes(b"%PDF-1.4") and f / "report.pdf",
                            "report.pdf", "unsupported file type .pdf"),
    "empty file": (lambda f: (f / "empty.png").write_bytes(b"") or f / "empty.png", "empty.png", "empty"),
    "broken link": (lambda f: os.symlink(f / "gone.png", f / "link.png") or f / "link.png", "link.png",
                    "cannot read"),
    "zip entry with absolute path": (_zip_with("/etc/evil.png"), "/etc/evil.png", "absolute path"),
    "zip entry with ..": (_zip_with("../../evil.png"), "../../evil.png", "'..'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_image_is_reported_and_the_rest_added(store, project, upload, tmp_path, workspace, case):
    make, file_name, problem = BAD_INPUTS[case]
    good = save_image(upload / "good.png", 1)
    bad = make(upload)
    outside = files_outside(tmp_path, workspace)

    report = ingest_files(store, project, [good, bad], "unlabelled")

    failures = [r for r in report.failed if file_name in r.source]
    assert len(failures) == 1, report.results
    assert problem in failures[0].reason, failures[0]
    assert outcome(report, "good").status == "added"
    assert "good" in {r["name"] for r in rows(store)}
    assert files_outside(tmp_path, workspace) == outside  # nothing written outside the workspace
    assert all(store.path(r["path"]).is_file() for r in rows(store))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(store, project, upload):
    good, bad = save_image(upload / "good.png", 1), save_image(upload / "locked.png", 2)
    bad.chmod(0)
    try:
        report = ingest_files(store, project, [good, bad], "unlabelled")
    finally:
        bad.chmod(0o644)
    assert "cannot read" in outcome(report, "locked").reason and outcome(report, "good").status == "added"


def test_fifo_is_not_read(store, project, upload):
    os.mkfifo(upload / "pipe.png")
    save_image(upload / "good.png", 1)
    report = ingest_files(store, project, [upload], "unlabelled")
    assert "not a regular file" in outcome(report, "pipe").reason
    assert outcome(report, "good").status == "added"


def test_decompression_bomb_is_refused_before_decoding(store, project, upload):
    Image.new("RGB", (3000, 3000)).save(upload / "bomb.png")  # tiny file, 9 megapixels
    save_image(upload / "good.png", 1)
    report = ingest_files(store, project, [upload], "unlabelled", limits=Limits(max_pixels=1_000_000))
    result = outcome(report, "bomb")
    assert result.status == "failed" and "bomb.png" in result.source
    assert "decompression bomb" in result.reason and "9,000,000 pixels" in result.reason
    assert outcome(report, "good").status == "added"


@pytest.mark.parametrize("limits, problem", [
    (Limits(max_archive_bytes=5_000_000), "bytes uncompressed"),
    (Limits(max_archive_entries=10), "entries"),
])
def test_zip_bomb_is_refused_whole(store, project, upload, tmp_path, workspace, limits, problem):
    bomb = upload / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bmp", b"\0" * 20_000_000)  # compresses to about 20 KB
        for i in range(20):
            zf.writestr(f"small{i}.txt", "x")
    assert bomb.stat().st_size < 100_000
    good = save_image(upload / "good.png", 1)
    outside = files_outside(tmp_path, workspace)

    report = ingest_files(store, project, [bomb, good], "unlabelled", limits=limits)

    result = [r for r in report.results if r.source == str(bomb)]
    assert len(result) == 1 and result[0].status == "failed", report.results
    assert "zip bomb" in result[0].reason and problem in result[0].reason
    assert outcome(report, "good").status == "added"
    assert files_outside(tmp_path, workspace) == outside


def test_oversized_zip_entry_is_refused(store, project, upload):
    archive = upload / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.png", b"\0" * 3_000_000)
        zf.writestr("good.png", png_bytes(Image.fromarray(rgb_array(1))))
    report = ingest_files(store, project, [archive], "unlabelled", limits=Limits(max_file_bytes=1_000_000))
    result = outcome(report, "huge")
    assert result.source.endswith("a.zip:huge.png") and "more than the limit" in result.reason
    assert outcome(report, "good").status == "added"


def test_mask_of_another_size_is_reported(store, project, upload):
    save_pair(upload, "good", 1)
    save_image(upload / "images" / "small.png", 2)
    save_mask(upload / "masks" / "small.png", np.zeros((10, 10), np.uint8))
    report = ingest_files(store, project, [upload], "labelled")
    result = outcome(report, "small")
    assert result.status == "failed" and result.source.endswith("masks/small.png")
    assert "mask is 10x10, its image is 24x16" in result.reason
    assert outcome(report, "good").status == "added" and store.db["images"].count == 1


def test_mask_values_outside_the_classes_are_reported(store, project, upload):
    save_pair(upload, "good", 1)
    save_image(upload / "images" / "odd.png", 2)
    values = index_mask(2)
    values[0, :3] = 7
    values[1, :2] = 200
    Image.fromarray(values, mode="L").save(upload / "masks" / "odd.png")
    report = ingest_files(store, project, [upload], "labelled")
    result = outcome(report, "odd")
    assert result.status == "failed" and result.source.endswith("masks/odd.png")
    assert "outside the classes 0..2" in result.reason and "7 (3 px)" in result.reason and "200 (2 px)" in result.reason
    assert outcome(report, "good").status == "added"


def test_unknown_mask_colours_are_listed_with_pixel_counts(store, project, upload):
    save_pair(upload, "good", 1)
    save_image(upload / "images" / "paint.png", 2)
    colours = np.array(PALETTE, dtype=np.uint8)[index_mask(2)]
    colours[0, :4] = (1, 2, 3)
    colours[5, :1] = (250, 0, 0)
    Image.fromarray(colours).save(upload / "masks" / "paint.png")
    report = ingest_files(store, project, [upload], "labelled")
    result = outcome(report, "paint")
    assert result.status == "failed" and result.source.endswith("masks/paint.png")
    assert "2 colour(s) not in the project palette (5 of 384 pixels)" in result.reason
    assert "(1, 2, 3) 4 px" in result.reason and "(250, 0, 0) 1 px" in result.reason
    assert outcome(report, "good").status == "added"


def test_colliding_names_are_all_refused(store, project, upload):
    save_image(upload / "x" / "same.png", 1)
    save_image(upload / "y" / "same.png", 2)
    save_image(upload / "z" / "copy.png", 3)
    save_image(upload / "w" / "copy.png", 3)  # identical file twice: kept once
    save_image(upload / "good.png", 4)
    report = ingest_files(store, project, [upload], "unlabelled")
    collisions = [r for r in report.failed if r.name == "same"]
    assert len(collisions) == 2 and all("name collision" in r.reason for r in collisions)
    assert {r.source for r in collisions} == {str(upload / "x" / "same.png"), str(upload / "y" / "same.png")}
    assert [r.status for r in report.for_name("copy")] == ["skipped", "added"]
    assert {r["name"] for r in rows(store)} == {"copy", "good"}


def test_a_different_image_under_a_known_name_is_refused(store, project, upload, tmp_path):
    ingest_files(store, project, [save_image(upload / "a.png", 1)], "unlabelled")
    other = save_image(tmp_path / "other" / "a.png", 2)
    report = ingest_files(store, project, [other, save_image(upload / "b.png", 3)], "unlabelled")
    assert "a different image named 'a' is already in the project" in outcome(report, "a").reason
    assert outcome(report, "b").status == "added"


def test_labelled_image_without_mask_and_mask_without_image(store, project, upload):
    save_pair(upload, "good", 1)
    save_image(upload / "images" / "alone.png", 2)
    save_mask(upload / "masks" / "orphan.png", index_mask(3))
    report = ingest_files(store, project, [upload], "labelled")
    assert "needs a mask" in outcome(report, "alone").reason
    assert outcome(report, "orphan").status == "failed" and "mask without an image" in outcome(report, "orphan").reason
    assert outcome(report, "good").status == "added"


# --- labels made elsewhere ------------------------------------------------------------------------------


def write_cvat_export(root: Path, names: list[str], seeds: list[int], masks_for: list[str]) -> Path:
    """A CVAT "Segmentation mask 1.1" layout: RGB masks in labelmap colours, ImageSets/Segmentation/default.txt."""
    classes = make_classes(NAMES, PALETTE)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(format_labelmap(classes))
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(names) + "\n")
    for name, seed in zip(names, seeds):
        save_image(root / "JPEGImages" / f"{name}.png", seed)
        if name in masks_for:
            (root / "SegmentationClass").mkdir(exist_ok=True)
            colours = np.array(PALETTE, np.uint8)[index_mask(seed)]
            Image.fromarray(colours).save(root / "SegmentationClass" / f"{name}.png")
    (root / "SegmentationObject").mkdir()
    return root


def test_voc_layout_becomes_a_project(store, tmp_path):
    root = write_cvat_export(tmp_path / "cvat", ["v0", "v1", "v2"], [0, 1, 2], ["v0", "v1"])
    archive = tmp_path / "cvat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in root.rglob("*"):
            zf.write(path, Path("export") / path.relative_to(root))

    project, report = import_voc_project(store, archive, "from-cvat")

    assert report.summary() == "3 added, 0 skipped, 0 failed", report.results
    assert project.classes.names == tuple(NAMES) and project.classes.palette == tuple(PALETTE)
    assert project_summary(store, project).images == {"labelled": 2, "unlabelled": 1, "validation": 0}
    np.testing.assert_array_equal(stored_mask(store, "v1"), index_mask(1))


def test_voc_masks_are_added_as_ground_truth_to_matching_images(store, project, upload, tmp_path):
    for i in range(3):
        save_image(upload / f"im{i}.png", i)
    save_pair(upload / "lab", "im9", 9)
    ingest_files(store, project, [upload / f"im{i}.png" for i in range(3)], "unlabelled")
    ingest_files(store, project, [upload / "lab"], "labelled")
    # The other tool knows the classes in another order, with its own background colour.
    names = ["car", "background", "road"]
    palette = [(64, 0, 128), (10, 10, 10), (128, 64, 128)]
    root = tmp_path / "cvat"
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "labelmap.txt").write_text(format_labelmap(make_classes(names, palette)))
    to_theirs = np.array([1, 2, 0], np.uint8)  # our index -> theirs
    for name, seed in (("im0", 0), ("im9", 9), ("nothere", 5)):
        Image.fromarray(np.array(palette, np.uint8)[to_theirs[index_mask(seed)]]).save(
            root / "SegmentationClass" / f"{name}.png")
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / "SegmentationClass" / "im1.png")
    old_gt = rows(store, "SELECT masks.path FROM masks JOIN images ON images.id = image_id WHERE name = 'im9'")[0]
    Image.fromarray(np.array(palette, np.uint8)[to_theirs[index_mask(42)]]).save(root / "SegmentationClass" / "im9.png")

    report = import_voc_labels(store, project, root)

    assert "moved from unlabelled to labelled" in outcome(report, "im0").reason
    assert outcome(report, "im9").reason.startswith("ground_truth mask replaced")
    assert outcome(report, "nothere").status == "skipped"
    assert outcome(report, "im1").status == "failed" and "mask is 3x3" in outcome(report, "im1").reason
    np.testing.assert_array_equal(stored_mask(store, "im0"), index_mask(0))
    np.testing.assert_array_equal(stored_mask(store, "im9"), index_mask(42))
    assert not store.path(old_gt["path"]).exists()  # the replaced file went with its row
    assert project_summary(store, project).images == {"labelled": 2, "unlabelled": 2, "validation": 0}


def test_voc_export_of_the_demo_imports_back_as_the_same_project(store, demo_dir, tmp_path):
    from stpp.store.export import export_project

    demo = seed_demo_project(store, demo_dir)
    export_project(store, demo, tmp_path / "demo-voc.zip", "voc")  # ground truth only: reference masks stay

    project, report = import_voc_project(store, tmp_path / "demo-voc.zip", "round-trip")

    assert report.summary() == "24 added, 0 skipped, 0 failed", report.results
    assert project.classes == demo.classes

    def labelled(project_id: int) -> dict[str, tuple]:
        return {r["name"]: (r["hash"], r["role"], r["width"], r["height"], read_mask(store.path(r["mask"])).tobytes())
                for r in store.db.query("SELECT images.*, masks.path AS mask FROM images JOIN masks ON image_id = "
                                        "images.id WHERE project_id = ? AND kind = 'ground_truth'", [project_id])}

    assert labelled(project.id) == labelled(demo.id)  # same image bytes, roles, sizes and masks
    assert project_summary(store, project).masks["reference"] == 0


# --- a killed import ------------------------------------------------------------------------------------

KILL_SCRIPT = """
import sys
from pathlib import Path
from stpp.store import ingest_files, open_store
store = open_store(sys.argv[1])
report = ingest_files(store, "p", [Path(sys.argv[2])], "unlabelled", batch_size=8)
print(report.summary())
"""


def assert_consistent(store) -> None:
    for row in rows(store, "SELECT path FROM images UNION ALL SELECT path FROM masks"):
        assert store.path(row["path"]).is_file(), row
    referenced = {r["path"] for r in rows(store, "SELECT path FROM images WHERE in_place = 0")}
    usage = disk_usage(store, "p")
    assert usage.images == sum(store.path(p).stat().st_size for p in referenced)


def test_killed_import_leaves_a_consistent_store_and_reruns_to_completion(store, project, tmp_path, workspace):
    data = tmp_path / "many"
    count = 300
    for i in range(count):
        save_pair(data, f"n{i:03d}", i)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", KILL_SCRIPT, str(workspace), str(data)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    conn = sqlite3.connect(workspace / "stpp.db", timeout=30)
    try:
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM images").fetchone()[0] < 40 and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.002)
    finally:
        conn.close()
    process.send_signal(signal.SIGKILL)
    process.wait()

    done = store.db["images"].count
    assert 40 <= done < count, "the import finished before it could be killed"
    assert_consistent(store)
    assert project_summary(store, project).images["unlabelled"] == done

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"{count - done} added, {done} skipped, 0 failed"
    assert store.db["images"].count == count and store.db["masks"].count == count
    assert_consistent(store)
    remove_orphan_files(store, min_age_s=0)  # only leftovers of the killed write, if any
    assert find_orphan_files(store) == []
    assert_consistent(store)
    assert get_project(store, "p").id == project.id


def test_import_stops_when_classes_change_midway(store, project, upload, monkeypatch):
    import stpp.store.ingest as ingest
    from stpp.store import delete_class

    for i in range(4):
        save_pair(upload, f"c{i}", i)
    real = ingest._prepare

    def prepare_then_edit(store_, project_, pair, *args):
        if pair.name == "c2":
            delete_class(store, project, "car")  # another process edits the classes meanwhile
        return real(store_, project_, pair, *args)

    monkeypatch.setattr(ingest, "_prepare", prepare_then_edit)
    with pytest.raises(StoreError, match="classes of project 'p' changed during the import"):
        ingest_files(store, project, [upload], "labelled", batch_size=2)
    assert {r["name"] for r in rows(store)} == {"c0", "c1"}  # the first batch, remapped by the edit
