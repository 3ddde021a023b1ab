"""Folder datasets, class files, split files, run-input validation and the torch datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import CLASSES, PALETTE
from torch.utils.data import DataLoader

from stpp.core.config import AugmentConfig
from stpp.core.masks import read_mask
from stpp.data.datasets import (
    ClassInfo,
    DataError,
    EvalDataset,
    FolderDataset,
    RunInputs,
    TrainDataset,
    TrainItem,
    check_run_inputs,
    collate_single,
    default_palette,
    load_classes,
    read_split,
)
from stpp.data.transforms import StrongAugment, WeakAugment


@pytest.fixture
def dataset_copy(synthetic_dataset: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic dataset."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "data"))


def check(root: Path, **changes):
    """check_run_inputs on the dataset's own split files, with some arguments replaced."""
    args = {"labeled": root / "labeled.txt", "unlabeled": root / "unlabeled.txt", "val": root / "val.txt",
            "num_classes": len(CLASSES)}
    args.update(changes)
    return check_run_inputs(FolderDataset.open(root), **args)


def test_open_indexes_ids_paths_and_classes(synthetic_dataset):
    dataset = FolderDataset.open(synthetic_dataset)
    expected = sorted(read_split(synthetic_dataset / "labeled.txt") + read_split(synthetic_dataset / "unlabeled.txt")
                      + read_split(synthetic_dataset / "val.txt"))
    assert dataset.ids == expected and len(dataset) == 32
    assert dataset.image_path("val_003") == synthetic_dataset / "images" / "val_003.png"
    assert dataset.mask_path("val_003") == synthetic_dataset / "masks" / "val_003.png"
    assert dataset.classes == ClassInfo(names=tuple(CLASSES), palette=tuple(tuple(c) for c in PALETTE),
                                        ignore_index=255)
    assert dataset.classes.num_classes == 4


def test_unknown_id_is_a_data_error(synthetic_dataset):
    dataset = FolderDataset.open(synthetic_dataset)
    for lookup in (dataset.image_path, dataset.mask_path):
        with pytest.raises(DataError, match="'nope'"):
            lookup("nope")


def test_nested_folders_case_insensitive_extensions_and_missing_masks(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "b").mkdir(parents=True)
    (tmp_path / "masks" / "x").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a" / "one.JPG", format="JPEG")
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "b" / "two.TIFF", format="TIFF")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((6, 8), 6, np.uint8)).save(tmp_path / "masks" / "x" / "one.png")
    dataset = FolderDataset.open(tmp_path)
    assert dataset.ids == ["one", "two"]
    assert dataset.image_path("two").name == "two.TIFF"
    assert dataset.mask_path("one") == tmp_path / "masks" / "x" / "one.png"
    assert dataset.mask_path("two") is None
    inferred = dataset.classes
    assert inferred.names == tuple(f"class_{i}" for i in range(7))
    assert len(set(inferred.palette)) == 7 and inferred.ignore_index == 255


def test_duplicate_ids_name_both_files(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "images" / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / folder / "same.png")
    with pytest.raises(DataError, match="duplicate image ID 'same'") as info:
        FolderDataset.open(tmp_path)
    assert str(tmp_path / "images" / "a" / "same.png") in str(info.value)
    assert str(tmp_path / "images" / "b" / "same.png") in str(info.value)


def test_open_rejects_a_folder_without_images(tmp_path):
    with pytest.raises(DataError, match="no images/ folder"):
        FolderDataset.open(tmp_path)


def test_classes_inferred_from_masks_without_classes_json(dataset_copy):
    (dataset_copy / "classes.json").unlink()
    largest = max(int(read_mask(p)[read_mask(p) != 255].max()) for p in (dataset_copy / "masks").glob("*.png"))
    classes = FolderDataset.open(dataset_copy).classes
    assert classes.num_classes == largest + 1
    assert classes.names[0] == "class_0"
    assert classes.palette == default_palette(largest + 1)


def write_json(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_classes_accepts_extra_keys_and_defaults_the_palette(tmp_path):
    info = load_classes(write_json(tmp_path / "classes.json", json.dumps({"name": "x", "classes": ["a", "b", "c"]})))
    assert info.names == ("a", "b", "c") and info.ignore_index == 255
    assert len(info.palette) == 3 and len(set(info.palette)) == 3


def test_load_classes_reports_malformed_json_with_its_line(tmp_path):
    path = write_json(tmp_path / "classes.json", '{\n  "classes": ["a", "b"],\n  "palette": [[0, 0, 0],]\n}')
    with pytest.raises(DataError, match="line 3") as info:
        load_classes(path)
    assert str(path) in str(info.value) and "malformed JSON" in str(info.value)


@pytest.mark.parametrize("content, problem", [
    ({"classes": []}, "non-empty list"),
    ({"palette": [[0, 0, 0]]}, "non-empty list"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0]]}, "1 colours but there are 2 classes"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0], [1, 2, 300]]}, r"colour 1 \(b\)"),
    ({"classes": ["a", "b"], "palette": [[0, 0, 0], "red"]}, r"colour 1 \(b\)"),
    ({"classes": ["a", "a"]}, "duplicate class names: a"),
    ({"classes": ["a"], "ignore_index": -1}, "ignore_index"),
])
def test_load_classes_rejects_bad_content(tmp_path, content, problem):
    path = write_json(tmp_path / "classes.json", json.dumps(content))
    with pytest.raises(DataError, match=problem) as info:
        load_classes(path)
    assert str(path) in str(info.value)


def test_read_split_skips_blank_lines_and_keeps_order(tmp_path):
    path = write_json(tmp_path / "s.txt", "b\n\n  a  \r\n\nc")
    assert read_split(path) == ["b", "a", "c"]


def test_read_split_reports_duplicates_with_line_numbers(tmp_path):
    path = write_json(tmp_path / "s.txt", "a\nb\n\na\n")
    with pytest.raises(DataError, match=r"'a' is listed twice \(lines 1 and 4\)") as info:
        read_split(path)
    assert str(path) in str(info.value)


def test_read_split_reports_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="split file not found") as info:
        read_split(tmp_path / "missing.txt")
    assert "missing.txt" in str(info.value)


def test_check_run_inputs_accepts_the_synthetic_dataset(synthetic_dataset):
    inputs = check(synthetic_dataset)
    assert isinstance(inputs, RunInputs)
    assert len(inputs.labeled) == 8 and len(inputs.unlabeled) == 16 and len(inputs.val) == 8
    assert check(synthetic_dataset, labeled=["labeled_000"], unlabeled=[], val=None).labeled == ("labeled_000",)


def test_empty_labeled_list(dataset_copy):
    (dataset_copy / "labeled.txt").write_text("\n\n")
    with pytest.raises(DataError, match="is empty") as info:
        check(dataset_copy)
    assert "labeled.txt" in str(info.value)


def test_evaluation_data_alone_is_checked_without_a_labeled_split(dataset_copy):
    assert check(dataset_copy, labeled=[], unlabeled=[], require_labeled=False).val[0] == "val_000"
    (dataset_copy / "masks" / "val_004.png").unlink()
    with pytest.raises(DataError, match="'val_004'.*no mask"):
        check(dataset_copy, labeled=[], unlabeled=[], require_labeled=False)


def test_id_in_labeled_and_unlabeled(dataset_copy):
    with (dataset_copy / "unlabeled.txt").open("a") as f:
        f.write("labeled_002\n")
    with pytest.raises(DataError, match="IDs in both") as info:
        check(dataset_copy)
    message = str(info.value)
    assert "'labeled_002'" in message and "labeled.txt" in message and "unlabeled.txt" in message


def test_validation_overlapping_training(dataset_copy):
    with (dataset_copy / "val.txt").open("a") as f:
        f.write("unlabeled_005\n")
    with pytest.raises(DataError, match="validation overlaps training") as info:
        check(dataset_copy)
    assert "'unlabeled_005'" in str(info.value) and "val.txt" in str(info.value)


def test_missing_image(dataset_copy):
    (dataset_copy / "images" / "labeled_004.png").unlink()
    with pytest.raises(DataError, match="no image in") as info:
        check(dataset_copy)
    assert "'labeled_004'" in str(info.value) and "labeled.txt" in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(dataset_copy, damage):
    path = dataset_copy / "images" / "unlabeled_007.png"
    data = path.read_bytes()
    path.write_bytes(b"this is not a PNG" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable or corrupt image") as info:
        check(dataset_copy)
    assert "'unlabeled_007'" in str(info.value) and str(path) in str(info.value)


def test_missing_mask_for_a_labeled_image(dataset_copy):
    (dataset_copy / "masks" / "val_001.png").unlink()
    with pytest.raises(DataError, match="no mask") as info:
        check(dataset_copy)
    assert "'val_001'" in str(info.value) and "val.txt" in str(info.value)


def test_wrong_size_mask(dataset_copy):
    path = dataset_copy / "masks" / "labeled_003.png"
    Image.fromarray(np.zeros((60, 64), np.uint8)).save(path)
    with pytest.raises(DataError, match="mask is 64x60 but its image labeled_003.png is 64x64") as info:
        check(dataset_copy)
    assert str(path) in str(info.value) and "'labeled_003'" in str(info.value)


def test_mask_values_out_of_range(dataset_copy):
    path = dataset_copy / "masks" / "labeled_006.png"
    mask = read_mask(path)
    mask[:2, :2], mask[-1, -1], mask[0, -1] = 4, 9, 255
    Image.fromarray(mask).save(path)
    with pytest.raises(DataError, match=r"mask values \[4, 9\] are not class indices \(0..3\)") as info:
        check(dataset_copy)
    assert str(path) in str(info.value)


def test_mask_that_is_not_single_channel(dataset_copy):
    path = dataset_copy / "masks" / "val_002.png"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(DataError, match="1-channel 8-bit PNG") as info:
        check(dataset_copy)
    assert str(path) in str(info.value)


def test_mask_size_is_compared_with_the_exif_upright_image(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: read_image turns the 8x6 pixels into a 6x8 image
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "photo.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp_path / "masks" / "photo.png")
    dataset = FolderDataset.open(tmp_path)
    assert check_run_inputs(dataset, ["photo"], [], None, num_classes=2).labeled == ("photo",)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "masks" / "photo.png")
    with pytest.raises(DataError, match="mask is 8x6 but its image photo.jpg is 6x8"):
        check_run_inputs(dataset, ["photo"], [], None, num_classes=2)


def test_all_problems_are_reported_together(dataset_copy):
    (dataset_copy / "images" / "labeled_000.png").unlink()
    (dataset_copy / "masks" / "val_000.png").unlink()
    with pytest.raises(DataError, match="2 problem") as info:
        check(dataset_copy)
    assert "'labeled_000'" in str(info.value) and "'val_000'" in str(info.value)


def test_unlabeled_masks_are_neither_needed_nor_read(dataset_copy):
    (dataset_copy / "masks" / "unlabeled_000.png").unlink()
    (dataset_copy / "masks" / "unlabeled_001.png").write_bytes(b"corrupt")
    assert len(check(dataset_copy).unlabeled) == 16


class CountingStrong:
    """Wraps a StrongAugment and counts its calls."""

    def __init__(self, strong: StrongAugment) -> None:
        self.strong, self.calls = strong, 0

    def __call__(self, image, mask):
        self.calls += 1
        return self.strong(image, mask)


def test_train_dataset_shapes_strong_items_and_dataloader(synthetic_dataset):
    dataset = FolderDataset.open(synthetic_dataset)
    cfg = AugmentConfig(base_size=64, crop_size=48)
    items = [TrainItem(i, dataset.image_path(i), dataset.mask_path(i), strong=i.startswith("unlabeled"))
             for i in ("labeled_000", "labeled_001", "unlabeled_000", "unlabeled_001", "unlabeled_002")]
    strong = CountingStrong(StrongAugment(cfg))
    train = TrainDataset(items, WeakAugment(cfg), strong)
    image, mask = train[0]
    # 8-bit until the training device: train_step normalises there.
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8
    assert mask.shape == (48, 48) and mask.dtype == torch.uint8
    assert strong.calls == 0
    train[2]
    assert strong.calls == 1
    torch.manual_seed(0)
    batches = list(DataLoader(train, batch_size=2, shuffle=True, num_workers=0))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0][0].shape == (2, 3, 48, 48) and batches[0][1].dtype == torch.uint8
    assert set(torch.cat([b[1].flatten() for b in batches]).tolist()) <= {0, 1, 2, 3, 255}
    assert strong.calls == 4
    assert TrainDataset(items, WeakAugment(cfg), None)[2][0].shape == (3, 48, 48)


def test_eval_dataset_items_and_collate(synthetic_dataset):
    dataset = FolderDataset.open(synthetic_dataset)
    ids = ["val_000", "unlabeled_000"]
    evaluation = EvalDataset(ids, [dataset.image_path(i) for i in ids], [dataset.mask_path("val_000"), None])
    item = evaluation[0]
    assert item["id"] == "val_000"
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.long
    assert torch.equal(item["mask"], torch.from_numpy(read_mask(dataset.mask_path("val_000"))).long())
    assert evaluation[1]["mask"].numel() == 0
    batches = list(DataLoader(evaluation, batch_size=1, collate_fn=collate_single))
    assert batches[0]["image"].shape == (1, 3, 64, 64) and batches[0]["mask"].shape == (1, 64, 64)
    assert batches[1]["id"] == "unlabeled_000" and batches[1]["mask"].numel() == 0
    unlabelled = EvalDataset.from_folder(dataset, ["val_001"], with_masks=False)
    assert unlabelled[0]["mask"].numel() == 0
    with pytest.raises(ValueError, match="one image"):
        collate_single([item, item])
