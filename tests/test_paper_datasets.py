"""The Pascal VOC (+SBD) and Cityscapes readers on tiny generated trees in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_stpp
from PIL import Image

from stpp.core.masks import read_mask
from stpp.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    LABEL_TO_TRAIN_ID,
    CityscapesDataset,
    to_train_ids,
)
from stpp.data.datasets import DataError, check_run_inputs
from stpp.data.voc import VOC_CLASSES, VOCDataset
from stpp.headless import describe_inputs, load_folder_run_data, open_dataset

VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000008", "2011_003276"]
VOC_VAL = ["2007_000033", "2010_005958"]
SBD_ONLY = "2008_000008"  # in SegmentationClassAug only, as SBD images are
VOC_ONLY = "2011_003276"  # in SegmentationClass only

CITY_TRAIN = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313", "bremen_000002_000019"]
CITY_VAL = ["frankfurt_000000_000294", "lindau_000000_000019"]
CITY_TEST = ["berlin_000000_000019"]
TRAIN_IDS_GIVEN = "bremen_000002_000019"  # also has a cityscapesScripts labelTrainIds file


def _image(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _mask(path: Path, mask: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    image.save(path)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VOCdevkit/VOC2012 with JPEGImages, SegmentationClassAug (grey), SegmentationClass (palette), ImageSets."""
    root = tmp_path_factory.mktemp("voc")
    base = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(1)
    for index, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        size = (50, 37) if index % 2 else (37, 50)
        _image(base / "JPEGImages" / f"{image_id}.jpg", rng, size)
        mask = rng.integers(0, 21, (size[1], size[0]))
        mask[0, :] = 255  # the VOC object border
        if image_id != VOC_ONLY:
            _mask(base / "SegmentationClassAug" / f"{image_id}.png", mask)
        if image_id != SBD_ONLY:
            # VOC's own palette masks; where Aug also has one, Aug must win (give this one other values).
            _mask(base / "SegmentationClass" / f"{image_id}.png", mask if image_id == VOC_ONLY else (mask + 1) % 21,
                  palette=True)
    _image(base / "JPEGImages" / "2012_004000.jpg", rng, (40, 30))  # an image of no split
    (base / "Annotations").mkdir()
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(VOC_TRAIN[:2]) + "\n")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    # The paper's published split format: image and mask paths relative to the root.
    (root / "labeled.txt").write_text("".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n" for i in VOC_TRAIN[:2]))
    (root / "unlabeled.txt").write_text("".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png\n"
                                                for i in VOC_TRAIN[2:]))
    return root


def _label_ids(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    values = np.arange(34, dtype=np.uint8)  # every Cityscapes label ID appears
    flat = np.concatenate([values, rng.integers(0, 34, height * width - values.size, dtype=np.uint8)])
    return rng.permutation(flat).reshape(height, width)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """leftImg8bit/ and gtFine/ with labelIds (plus the color/instance/polygon files that must be ignored)."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(2)
    for split, ids in (("train", CITY_TRAIN), ("val", CITY_VAL), ("test", CITY_TEST)):
        for image_id in ids:
            city = image_id.split("_")[0]
            _image(root / "leftImg8bit" / split / city / f"{image_id}_leftImg8bit.png", rng, (64, 32))
            gt = root / "gtFine" / split / city
            labels = _label_ids(rng, 32, 64) if split != "test" else np.zeros((32, 64), np.uint8)
            _mask(gt / f"{image_id}_gtFine_labelIds.png", labels)
            _mask(gt / f"{image_id}_gtFine_instanceIds.png", labels)
            Image.new("RGBA", (64, 32)).save(gt / f"{image_id}_gtFine_color.png")
            (gt / f"{image_id}_gtFine_polygons.json").write_text("{}")
            if image_id == TRAIN_IDS_GIVEN:
                _mask(gt / f"{image_id}_gtFine_labelTrainIds.png", to_train_ids(labels))
    (root / "labeled.txt").write_text("\n".join(CITY_TRAIN[:2]) + "\n")
    (root / "unlabeled.txt").write_text("".join(
        f"leftImg8bit/train/{i.split('_')[0]}/{i}_leftImg8bit.png "
        f"gtFine/train/{i.split('_')[0]}/{i}_gtFine_labelTrainIds.png\n" for i in CITY_TRAIN[2:]))
    (root / "val.txt").write_text("".join(
        f"leftImg8bit/val/{i.split('_')[0]}/{i}_leftImg8bit.png "
        f"gtFine/val/{i.split('_')[0]}/{i}_gtFine_labelTrainIds.png\n" for i in CITY_VAL))
    return root


# Pascal VOC -----------------------------------------------------------------------------------

def test_voc_ids_classes_and_mask_sources(voc_root: Path):
    dataset = open_dataset(f"voc:{voc_root}")
    assert isinstance(dataset, VOCDataset)
    assert dataset.root == voc_root / "VOCdevkit" / "VOC2012"
    assert dataset.ids == sorted(VOC_TRAIN + VOC_VAL + ["2012_004000"])
    assert dataset.classes.names == VOC_CLASSES and dataset.classes.num_classes == 21
    assert dataset.classes.palette[0] == (0, 0, 0) and dataset.classes.palette[1] == (128, 0, 0)
    assert dataset.classes.palette[15] == (192, 128, 128)  # person
    assert dataset.mask_path(SBD_ONLY).parent.name == "SegmentationClassAug"
    assert dataset.mask_path(VOC_ONLY).parent.name == "SegmentationClass"
    both = VOC_TRAIN[0]
    assert dataset.mask_path(both).parent.name == "SegmentationClassAug"
    aug = read_mask(dataset.mask_path(both))
    assert aug.max() <= 255 and set(np.unique(aug)) - {255} <= set(range(21))
    assert dataset.mask_path("2012_004000") is None
    # palette masks are read as their indices
    assert read_mask(dataset.mask_path(VOC_ONLY)).dtype == np.uint8


def test_voc_split_files_in_both_formats(voc_root: Path):
    dataset = open_dataset(f"voc:{voc_root}")
    assert dataset.read_split(voc_root / "labeled.txt") == VOC_TRAIN[:2]
    assert dataset.read_split(dataset.root / "ImageSets" / "Segmentation" / "train.txt") == VOC_TRAIN[:2]
    mixed = voc_root / "mixed.txt"
    mixed.write_text(f"{VOC_VAL[0]}\nJPEGImages/{VOC_VAL[1]}.jpg\n")
    assert dataset.read_split(mixed) == VOC_VAL
    bad = voc_root / "bad.txt"
    bad.write_text(f"{VOC_VAL[0]}\na b c\n")
    with pytest.raises(DataError, match="line 2"):
        dataset.read_split(bad)


def test_voc_run_inputs_validate_and_name_the_voc_folders(voc_root: Path):
    dataset = open_dataset(f"voc:{voc_root}")
    val = dataset.root / "ImageSets" / "Segmentation" / "val.txt"
    inputs = check_run_inputs(dataset, voc_root / "labeled.txt", voc_root / "unlabeled.txt", val, 21)
    assert inputs.labeled == tuple(VOC_TRAIN[:2]) and inputs.unlabeled == tuple(VOC_TRAIN[2:])
    missing = voc_root / "missing.txt"
    missing.write_text("2012_004000\n")  # an image without a mask cannot be labelled training data
    with pytest.raises(DataError, match="SegmentationClassAug"):
        check_run_inputs(dataset, missing, [], None, 21)
    data = load_folder_run_data(f"voc:{voc_root}", voc_root / "labeled.txt", voc_root / "unlabeled.txt", val)
    assert [s.id for s in data.labeled] == VOC_TRAIN[:2]
    assert all(s.mask_path is None for s in data.unlabeled)
    assert describe_inputs(f"voc:{voc_root}", data)["data"] == f"voc:{voc_root.resolve()}"


def test_voc_needs_jpegimages(tmp_path: Path):
    with pytest.raises(DataError, match="JPEGImages"):
        open_dataset(f"voc:{tmp_path}")


# Cityscapes -----------------------------------------------------------------------------------

def test_cityscapes_ids_and_classes(cityscapes_root: Path, tmp_path: Path):
    dataset = CityscapesDataset.open(cityscapes_root, cache_dir=tmp_path / "cache")
    assert dataset.ids == sorted(CITY_TRAIN + CITY_VAL + CITY_TEST)
    assert dataset.image_path("aachen_000000_000019") == (
        cityscapes_root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png")
    assert dataset.classes.names == CITYSCAPES_CLASSES and dataset.classes.num_classes == 19
    assert dataset.classes.palette[0] == (128, 64, 128) and dataset.classes.palette[13] == (0, 0, 142)
    assert len(CITYSCAPES_PALETTE) == 19


def test_cityscapes_label_ids_map_to_the_19_train_ids(cityscapes_root: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    dataset = CityscapesDataset.open(cityscapes_root, cache_dir=cache)
    image_id = CITY_TRAIN[0]
    source = cityscapes_root / "gtFine" / "train" / "aachen" / f"{image_id}_gtFine_labelIds.png"
    label_ids = read_mask(source)
    converted = read_mask(dataset.mask_path(image_id))
    assert dataset.mask_path(image_id).parent == cache  # the dataset folder is left alone
    assert converted.shape == label_ids.shape
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert LABEL_TO_TRAIN_ID == expected
    for label_id in range(34):
        values = set(np.unique(converted[label_ids == label_id]))
        assert values == {expected.get(label_id, 255)}, label_id
    assert set(np.unique(converted)) == set(range(19)) | {255}
    # unlabeled (0), ego vehicle (1), rectification border (2), out of roi (3), static (4), dynamic (5),
    # ground (6), parking (9), rail track (10), guard rail (14), bridge (15), tunnel (16), polegroup (18),
    # caravan (29) and trailer (30) are ignored
    for ignored in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30):
        assert (converted[label_ids == ignored] == 255).all()


def test_cityscapes_prefers_given_train_ids_and_caches_conversions(cityscapes_root: Path, tmp_path: Path):
    dataset = CityscapesDataset.open(cityscapes_root, cache_dir=tmp_path / "cache")
    given = dataset.mask_path(TRAIN_IDS_GIVEN)
    assert given.name == f"{TRAIN_IDS_GIVEN}_gtFine_labelTrainIds.png"
    first = dataset.mask_path(CITY_VAL[0])
    stamp = first.stat().st_mtime_ns
    assert dataset.mask_path(CITY_VAL[0]) == first and first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{CITY_VAL[0]}.png"]


def test_cityscapes_split_files_in_both_formats(cityscapes_root: Path, tmp_path: Path):
    dataset = CityscapesDataset.open(cityscapes_root, cache_dir=tmp_path / "cache")
    assert dataset.read_split(cityscapes_root / "labeled.txt") == CITY_TRAIN[:2]
    assert dataset.read_split(cityscapes_root / "unlabeled.txt") == CITY_TRAIN[2:]
    assert dataset.read_split(cityscapes_root / "val.txt") == CITY_VAL
    inputs = check_run_inputs(dataset, cityscapes_root / "labeled.txt", cityscapes_root / "unlabeled.txt",
                              cityscapes_root / "val.txt", 19)
    assert inputs.val == tuple(CITY_VAL)
    # unlabelled images' annotations are never read, so never converted
    converted = {p.stem for p in (tmp_path / "cache").iterdir()}
    assert converted == set(CITY_TRAIN[:2]) | set(CITY_VAL)


def test_cityscapes_needs_leftimg8bit(tmp_path: Path):
    with pytest.raises(DataError, match="leftImg8bit"):
        open_dataset(f"cityscapes:{tmp_path}")


# End to end -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["voc", "cityscapes"])
def test_run_and_eval_on_a_paper_dataset(kind: str, voc_root: Path, cityscapes_root: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STPP_CACHE", str(tmp_path / "cache"))
    if kind == "voc":
        root, val = voc_root, voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
        names = VOC_CLASSES
    else:
        root, val = cityscapes_root, cityscapes_root / "val.txt"
        names = CITYSCAPES_CLASSES
    out = tmp_path / "run"
    run_stpp("run", "--data", f"{kind}:{root}", "--labeled", root / "labeled.txt",
             "--unlabeled", root / "unlabeled.txt", "--val", val, "--method", "st", "--preset", "test", "--out", out, "--device", "cpu",
             "--set", "optim.epochs=3", "--set", "optim.batch_size=2", "--set", "pseudo.tta=false")
    config = json.loads((out / "config.json").read_text())
    assert tuple(config["data"]["class_names"]) == names
    assert json.loads((out / "inputs.json").read_text())["data"] == f"{kind}:{root.resolve()}"
    pseudo = {p.stem for p in (out / "pseudo" / "teacher").glob("*.png")}
    unlabeled = load_folder_run_data(f"{kind}:{root}", root / "labeled.txt", root / "unlabeled.txt").unlabeled
    assert pseudo == {s.id for s in unlabeled}
    printed = json.loads(run_stpp("eval", out, "--data", f"{kind}:{root}", "--split", val, "--stage", "st").stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed["miou"] == metrics["stages"]["st"]["miou"]
    assert set(printed["per_class"]) == set(names)
