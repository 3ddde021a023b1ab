"""Dataset exports read back by third-party readers (torchvision's VOCSegmentation, pycocotools).

No code writes runs, pseudo masks, scores or reviews into the store yet, so the helpers below
insert those rows (with real mask files) through sqlite-utils, following ``stpp/store/migrations.py``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stpp.core.config import get_preset
from stpp.core.masks import read_mask, write_mask
from stpp.store import create_project, import_folder_dataset, open_store, seed_demo_project, utc_now
from stpp.store.export import ExportError, ExportFilter, export_project
from stpp.store.export_formats import VOC_ROOT, class_folder_names
from ui.tabs.export import manifest_summary

H, W = 180, 240  # the demo images


# --- store helpers: rows the training worker and the review page will write -------------------------

def add_run(store, project, method: str = "st++", config: dict | None = None, config_hash: str | None = None) -> int:
    config = get_preset("test").to_dict() if config is None else config
    with store.transaction() as db:
        run_id = db["runs"].insert({"project_id": project.id, "method": method, "preset": "test",
                                    "config": json.dumps(config), "config_hash": config_hash, "status": "done",
                                    "created": utc_now()}).last_pk
        db["runs"].update(run_id, {"run_dir": f"runs/{run_id}"})
    return run_id


def add_pseudo(store, run_id: int, image: dict, stage: str, mask: np.ndarray, palette) -> int:
    rel = f"runs/{run_id}/pseudo/{stage}/{image['name']}.png"
    write_mask(store.path(rel), mask, palette)
    with store.transaction() as db:
        return db["masks"].insert({"image_id": image["id"], "kind": "pseudo", "run_id": run_id, "stage": stage,
                                   "path": rel, "created": utc_now()}).last_pk


def add_reviewed_mask(store, project, image: dict, mask: np.ndarray) -> int:
    rel = f"masks/{project.id}/reviewed/{image['hash']}-{utc_now().replace(':', '')}.png"
    write_mask(store.path(rel), mask, project.classes.palette)
    with store.transaction() as db:
        return db["masks"].insert({"image_id": image["id"], "kind": "reviewed", "path": rel,
                                   "created": utc_now()}).last_pk


def add_review(store, project, image: dict, decision: str, run_id: int | None = None,
               mask_id: int | None = None) -> int:
    with store.transaction() as db:
        return db["reviews"].insert({"project_id": project.id, "image_id": image["id"], "run_id": run_id,
                                     "decision": decision, "mask_id": mask_id, "time": utc_now(),
                                     "user": "tester"}).last_pk


def add_scores(store, run_id: int, scores: list[tuple[dict, float, bool]]) -> None:
    """Scores for images given in rank order: (image, stability, reliable)."""
    with store.transaction() as db:
        for rank, (image, stability, reliable) in enumerate(scores, 1):
            db["scores"].insert({"run_id": run_id, "image_id": image["id"], "stability": stability,
                                 "reliable": int(reliable), "rank": rank,
                                 "checkpoint_miou": json.dumps([stability / 2, stability])})


def add_checkpoint(store, run_id: int, stage: str, epoch: int) -> str:
    rel = f"runs/{run_id}/checkpoints/{stage}_e{epoch}.pt"
    with store.transaction() as db:
        db["checkpoints"].insert({"run_id": run_id, "stage": stage, "epoch": epoch, "path": rel,
                                  "created": utc_now()})
    return rel


def images(store, project, role: str) -> list[dict]:
    return list(store.db.query("SELECT * FROM images WHERE project_id = ? AND role = ? ORDER BY name",
                               [project.id, role]))


def stored_mask(store, image: dict, kind: str) -> np.ndarray:
    row = store.db.execute("SELECT path FROM masks WHERE image_id = ? AND kind = ?", [image["id"], kind]).fetchone()
    return read_mask(store.path(row[0]))


def make_mask(seed: int, shape=(H, W), num_classes: int = 11) -> np.ndarray:
    """Blocks of random classes with an ignore stripe, distinct per seed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_classes, size=(shape[0] // 20 + 1, shape[1] // 20 + 1), dtype=np.uint8)
    mask = np.kron(blocks, np.ones((20, 20), dtype=np.uint8))[: shape[0], : shape[1]]
    mask[seed % 7: seed % 7 + 5] = 255
    return mask


def unzip(path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(path) as zf:
        zf.extractall(dest)
    return dest


def read_csv(path: Path, name: str) -> list[dict]:
    with zipfile.ZipFile(path) as zf:
        return list(csv.DictReader(io.StringIO(zf.read(name).decode())))


def exported_sources(path: Path) -> dict[str, str]:
    return {row["id"]: row["source"] for row in read_csv(path, "images.csv")}


@pytest.fixture
def store(workspace: Path):
    with open_store(workspace) as opened:
        yield opened


@pytest.fixture
def demo(store, demo_dir: Path):
    return seed_demo_project(store, demo_dir)


# --- tests -----------------------------------------------------------------------------------------

def test_voc_export_loads_with_torchvision_and_yields_the_stored_masks(store, demo, demo_dir, tmp_path):
    from torchvision.datasets import VOCSegmentation

    report = export_project(store, demo, tmp_path / "voc.zip", "voc")
    assert report.exported == 24
    assert report.counts["sources"]["ground_truth"] == 24
    assert report.counts["left_out"] == {"no_label_without_run": 60}
    root = unzip(tmp_path / "voc.zip", tmp_path / "voc")

    for image_set, role in (("train", "labelled"), ("val", "validation")):
        rows = images(store, demo, role)
        dataset = VOCSegmentation(str(root), year="2012", image_set=image_set)
        assert [Path(p).stem for p in dataset.images] == [row["name"] for row in rows]
        assert len(rows) == 12
        for row, (image, target) in zip(rows, dataset):
            np.testing.assert_array_equal(np.array(target), stored_mask(store, row, "ground_truth"))
            assert image.size == (row["width"], row["height"])
            # Upright RGB JPEG inputs keep their original bytes.
            jpeg = root / VOC_ROOT / "JPEGImages" / f"{row['name']}.jpg"
            assert jpeg.read_bytes() == (demo_dir / "images" / f"{row['name']}.jpg").read_bytes()
    assert len(VOCSegmentation(str(root), year="2012", image_set="trainval")) == 24

    unlabelled = {row["name"] for row in images(store, demo, "unlabelled")}
    exported = {p.stem for p in (root / VOC_ROOT / "JPEGImages").iterdir()}
    assert not unlabelled & exported  # reference masks are not labels
    labelmap = (root / VOC_ROOT / "labelmap.txt").read_text().splitlines()
    assert labelmap[0] == "# label:color_rgb:parts:actions"
    assert labelmap[1:] == [f"{n}:{','.join(map(str, c))}::" for n, c in zip(demo.classes.names, demo.classes.palette)]


def test_reference_masks_are_exported_only_when_asked(store, demo, tmp_path):
    default = export_project(store, demo, tmp_path / "a.zip", "masks")
    assert "reference" not in exported_sources(tmp_path / "a.zip").values()
    assert default.counts["sources"]["reference"] == 0

    report = export_project(store, demo, tmp_path / "b.zip", "voc", include_reference=True)
    assert report.counts["sources"] == {"ground_truth": 24, "reference": 60, "accepted": 0, "corrected": 0,
                                        "pseudo": 0}
    assert report.manifest["include_reference"] is True
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        for row in images(store, demo, "unlabelled")[:5]:
            png = Image.open(io.BytesIO(zf.read(f"{VOC_ROOT}/SegmentationClass/{row['name']}.png")))
            np.testing.assert_array_equal(np.array(png), stored_mask(store, row, "reference"))
        train = zf.read(f"{VOC_ROOT}/ImageSets/Segmentation/train.txt").decode().split()
    assert len(train) == 72


# pycocotools' decoder predates numpy 2's copy keyword; the warning is theirs, the pixels are exact.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_coco_export_reproduces_each_class_exactly(store, demo, tmp_path):
    from pycocotools.coco import COCO

    run_id = add_run(store, demo)
    expected = {}
    for i, row in enumerate(images(store, demo, "unlabelled")[:4]):
        mask = make_mask(i)
        add_pseudo(store, run_id, row, "teacher", mask, demo.classes.palette)
        expected[row["name"]] = mask
    for role in ("labelled", "validation"):
        expected.update({row["name"]: stored_mask(store, row, "ground_truth") for row in images(store, demo, role)})

    report = export_project(store, demo, tmp_path / "coco.zip", "coco", run_id=run_id)
    assert report.exported == 28
    root = unzip(tmp_path / "coco.zip", tmp_path / "coco")
    seen = set()
    for split, count in (("train", 16), ("val", 12)):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(demo.classes.names)
        assert len(coco.getImgIds()) == count
        for info in coco.loadImgs(coco.getImgIds()):
            name = Path(info["file_name"]).stem
            assert (root / "images" / info["file_name"]).is_file()
            mask = expected[name]
            covered = np.zeros(mask.shape, dtype=np.int32)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
            assert sorted(a["category_id"] - 1 for a in anns) == sorted(v for v in np.unique(mask) if v != 255)
            for ann in anns:
                pixels = coco.annToMask(ann)
                np.testing.assert_array_equal(pixels, (mask == ann["category_id"] - 1).astype(np.uint8))
                assert ann["area"] == pixels.sum()
                covered += pixels
            np.testing.assert_array_equal(covered, (mask != 255).astype(np.int32))  # ignore: in no annotation
            seen.add(name)
    assert seen == set(expected)


def test_masks_and_overlays_are_named_like_the_images(store, demo, tmp_path):
    export_project(store, demo, tmp_path / "masks.zip", "masks")
    export_project(store, demo, tmp_path / "overlays.zip", "overlays")
    labelled = images(store, demo, "labelled") + images(store, demo, "validation")
    names = {row["name"] for row in labelled}
    folders = class_folder_names(demo.classes)
    with zipfile.ZipFile(tmp_path / "masks.zip") as zf:
        entries = set(zf.namelist())
        assert {n for n in entries if n.startswith("images/")} == {f"images/{n}.jpg" for n in names}
        assert {n for n in entries if n.startswith("masks/")} == {f"masks/{f}/{n}.png" for f in folders for n in names}
        row = labelled[0]
        mask = stored_mask(store, row, "ground_truth")
        for value, folder in enumerate(folders):
            binary = np.array(Image.open(io.BytesIO(zf.read(f"masks/{folder}/{row['name']}.png"))))
            np.testing.assert_array_equal(binary, np.where(mask == value, 255, 0))
    with zipfile.ZipFile(tmp_path / "overlays.zip") as zf:
        overlays = {n for n in zf.namelist() if n.startswith("overlays/")}
        assert overlays == {f"overlays/{n}.jpg" for n in names}
        image = np.asarray(Image.open(store.path(row["path"])).convert("RGB"), dtype=np.float32)
        overlay = np.asarray(Image.open(io.BytesIO(zf.read(f"overlays/{row['name']}.jpg"))), dtype=np.float32)
    colours = np.zeros((256, 3), np.float32)
    colours[:11] = demo.classes.palette
    blend = np.where((mask < 11)[..., None], 0.5 * image + 0.5 * colours[mask], image)
    assert np.abs(overlay - blend).mean() < 6


def test_manifest_and_scores_record_the_provenance(store, demo, tmp_path):
    config = get_preset("test")
    run_id = add_run(store, demo, config=config.to_dict())  # no config_hash column value: computed
    unlabelled = images(store, demo, "unlabelled")
    for i, row in enumerate(unlabelled[:3]):
        add_pseudo(store, run_id, row, "teacher", make_mask(i), demo.classes.palette)
    add_pseudo(store, run_id, unlabelled[2], "stage1", make_mask(9), demo.classes.palette)
    add_scores(store, run_id, [(unlabelled[1], 0.9, True), (unlabelled[0], 0.5, True), (unlabelled[2], 0.25, False)])
    for epoch in (1, 2, 3):
        add_checkpoint(store, run_id, "teacher", epoch)
    stage1_ckpt = add_checkpoint(store, run_id, "stage1", 3)
    flt = ExportFilter(min_stability=0.2)

    report = export_project(store, demo, tmp_path / "out.zip", "voc", run_id=run_id, filter=flt)
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest == report.manifest
    assert manifest["format"] == "voc"
    assert manifest["project"] == {"id": demo.id, "name": "camvid-demo"}
    assert manifest["classes"]["classes"] == list(demo.classes.names)
    assert manifest["classes"]["palette"] == [list(c) for c in demo.classes.palette]
    assert manifest["run"]["id"] == run_id and manifest["run"]["method"] == "st++"
    assert manifest["stage"] is None
    assert manifest["model_checkpoint"] == stage1_ckpt
    assert manifest["label_models"] == {"teacher": f"runs/{run_id}/checkpoints/teacher_e3.pt", "stage1": stage1_ckpt}
    assert manifest["config_hash"] == config.config_hash()
    assert manifest["filter"]["min_stability"] == 0.2 and manifest["filter"]["reliable"] is True
    assert manifest["counts"]["images"] == 27
    assert manifest["counts"]["splits"] == {"train": 15, "val": 12}
    assert manifest["counts"]["sources"]["pseudo"] == 3
    assert manifest["counts"]["pseudo_stages"] == {"teacher": 2, "stage1": 1}
    assert manifest["counts"]["left_out"] == {"no_pseudo_mask": 57}

    scores = read_csv(tmp_path / "out.zip", "scores.csv")
    assert [r["id"] for r in scores] == [unlabelled[i]["name"] for i in (1, 0, 2)]
    assert scores[0] == {"id": unlabelled[1]["name"], "stability": "0.900000", "reliable": "1", "rank": "1",
                         "ckpt1_miou": "0.450000", "ckpt2_miou": "0.900000"}
    assert scores[2]["reliable"] == "0"
    sources = read_csv(tmp_path / "out.zip", "images.csv")
    assert {r["id"]: r["stage"] for r in sources if r["source"] == "pseudo"} == {
        unlabelled[0]["name"]: "teacher", unlabelled[1]["name"]: "teacher", unlabelled[2]["name"]: "stage1"}

    # The Export tab shows this in a few lines above the folded manifest.
    summary = manifest_summary(manifest).split("  \n")
    assert summary[0] == "**27 image(s)** as Pascal VOC · train 15 · val 12 · left out 57"
    assert summary[1] == f"Masks: ground truth {manifest['counts']['sources']['ground_truth']} · pseudo 3"
    assert summary[2] == (f"Run {run_id} (ST++, preset `test`, done) · pseudo masks by stage: teacher 2, stage1 1 · "
                          f"model `{stage1_ckpt}`")
    assert summary[3] == ("Kept: ground truth, accepted, corrected, reliable (not reviewed), unreliable (not reviewed)"
                          " · min stability 0.2")

    no_run = export_project(store, demo, tmp_path / "gt.zip", "coco")
    assert no_run.manifest["run"] is None and no_run.manifest["model_checkpoint"] is None
    assert read_csv(tmp_path / "gt.zip", "scores.csv") == []
    assert len(manifest_summary(no_run.manifest).split("  \n")) == 3


def test_reviews_are_honoured(store, demo, tmp_path):
    palette = demo.classes.palette
    run_id = add_run(store, demo)
    u = images(store, demo, "unlabelled")
    teacher = {i: add_pseudo(store, run_id, u[i], "teacher", make_mask(i), palette) for i in range(7)}
    add_pseudo(store, run_id, u[0], "stage1", make_mask(100), palette)
    add_review(store, demo, u[0], "accepted", run_id, teacher[0])        # the accepted teacher mask, not stage1
    corrected = make_mask(200)
    add_review(store, demo, u[1], "corrected", run_id, add_reviewed_mask(store, demo, u[1], corrected))
    add_review(store, demo, u[2], "rejected", run_id)
    add_review(store, demo, u[3], "accepted", run_id, teacher[3])
    add_review(store, demo, u[3], "rejected", run_id)                    # the latest decision wins
    add_review(store, demo, u[4], "rejected", run_id)
    later = make_mask(300)
    add_review(store, demo, u[4], "corrected", run_id, add_reviewed_mask(store, demo, u[4], later))
    add_review(store, demo, u[5], "accepted", run_id)                    # no mask row: the run's pseudo mask
    add_review(store, demo, u[7], "rejected")                            # rejected wins over its reference mask

    report = export_project(store, demo, tmp_path / "out.zip", "voc", run_id=run_id, include_reference=True)
    sources = exported_sources(tmp_path / "out.zip")
    assert sources[u[0]["name"]] == "accepted"
    assert sources[u[1]["name"]] == "corrected"
    assert sources[u[4]["name"]] == "corrected"
    assert sources[u[5]["name"]] == "accepted"
    assert sources[u[6]["name"]] == "reference"  # asked for: a reference mask beats a pseudo mask
    for i in (2, 3, 7):
        assert u[i]["name"] not in sources
        assert (u[i]["name"], "rejected") in report.left_out
    assert report.counts["sources"]["reference"] == 60 - 7
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        def exported(i):
            return np.array(Image.open(io.BytesIO(zf.read(f"{VOC_ROOT}/SegmentationClass/{u[i]['name']}.png"))))
        names = set(zf.namelist())
        for i, mask in ((0, make_mask(0)), (1, corrected), (4, later), (5, make_mask(5)),
                        (6, stored_mask(store, u[6], "reference"))):
            np.testing.assert_array_equal(exported(i), mask)
        for i in (2, 3, 7):
            assert f"{VOC_ROOT}/JPEGImages/{u[i]['name']}.jpg" not in names


def test_filters_select_groups_of_images(store, demo, tmp_path):
    palette = demo.classes.palette
    run_id = add_run(store, demo)
    u = images(store, demo, "unlabelled")
    for i in range(9):
        add_pseudo(store, run_id, u[i], "teacher", make_mask(i), palette)
    add_scores(store, run_id, [(u[0], 0.9, True), (u[1], 0.8, True), (u[2], 0.7, True),
                               (u[3], 0.4, False), (u[4], 0.3, False), (u[5], 0.2, False)])  # u6: no score
    add_review(store, demo, u[7], "accepted", run_id)
    add_review(store, demo, u[8], "corrected", run_id, add_reviewed_mask(store, demo, u[8], make_mask(50)))
    gt = {row["name"] for role in ("labelled", "validation") for row in images(store, demo, role)}

    def names(**kw):
        path = tmp_path / "f.zip"
        export_project(store, demo, path, "voc", run_id=run_id, filter=ExportFilter(**kw))
        return set(exported_sources(path))

    def pick(*idx):
        return {u[i]["name"] for i in idx}

    assert names() == gt | pick(0, 1, 2, 3, 4, 5, 6, 7, 8)
    assert names(unreliable=False) == gt | pick(0, 1, 2, 7, 8)
    assert names(reliable=False) == gt | pick(3, 4, 5, 7, 8)
    assert names(reliable=False, unreliable=False) == gt | pick(7, 8)
    assert names(min_stability=0.75) == gt | pick(0, 1, 7, 8)
    assert names(ground_truth=False, accepted=False) == pick(0, 1, 2, 3, 4, 5, 6, 8)
    assert names(ground_truth=False, corrected=False, reliable=False, unreliable=False) == pick(7)


def test_stage_chooses_the_labels_as_they_stood_after_it(store, demo, tmp_path):
    palette = demo.classes.palette
    run_id = add_run(store, demo)
    u = images(store, demo, "unlabelled")
    for i in range(3):
        add_pseudo(store, run_id, u[i], "teacher", make_mask(i), palette)
    add_pseudo(store, run_id, u[1], "stage1", make_mask(11), palette)
    teacher_ckpt = add_checkpoint(store, run_id, "teacher", 3)

    def masks(stage):
        path = tmp_path / f"{stage}.zip"
        report = export_project(store, demo, path, "voc", run_id=run_id, stage=stage,
                                filter=ExportFilter(ground_truth=False))
        with zipfile.ZipFile(path) as zf:
            return report, {i: np.array(Image.open(io.BytesIO(
                zf.read(f"{VOC_ROOT}/SegmentationClass/{u[i]['name']}.png")))) for i in range(3)}

    report, latest = masks(None)
    np.testing.assert_array_equal(latest[1], make_mask(11))
    np.testing.assert_array_equal(latest[0], make_mask(0))
    report, first = masks("teacher")
    np.testing.assert_array_equal(first[1], make_mask(1))
    assert report.manifest["stage"] == "teacher" and report.manifest["model_checkpoint"] == teacher_ckpt
    with pytest.raises(ExportError, match="no stage 'stage2'.*teacher, stage1"):
        export_project(store, demo, tmp_path / "x.zip", "voc", run_id=run_id, stage="stage2")


def _exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """JPEG bytes whose pixels are stored rotated, with EXIF orientation 6 to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95,
                                                                       exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_rotated_jpeg_is_exported_upright_with_an_aligned_mask(store, tmp_path):
    upright = np.zeros((24, 40, 3), np.uint8)
    quadrants = [(slice(0, 12), slice(0, 20)), (slice(0, 12), slice(20, 40)),
                 (slice(12, 24), slice(0, 20)), (slice(12, 24), slice(20, 40))]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    mask = np.zeros((24, 40), np.uint8)
    for value, (quadrant, colour) in enumerate(zip(quadrants, colours)):
        upright[quadrant] = colour
        mask[quadrant] = value
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rotated = data / "images" / "rotated.jpg"
    rotated.write_bytes(_exif_rotated_jpeg(upright))
    palette = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0]]
    (data / "masks").mkdir()
    write_mask(data / "masks" / "rotated.png", mask, palette)
    (data / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"], "palette": palette}))
    project = create_project(store, "rot", data / "classes.json")
    assert len(import_folder_dataset(store, project, data, labeled=["rotated"]).added) == 1
    # The same file registered in place: the export itself must turn it upright.
    gt = store.db.execute("SELECT path FROM masks WHERE kind = 'ground_truth'").fetchone()[0]
    with store.transaction() as db:
        image_id = db["images"].insert({"project_id": project.id, "name": "in place", "hash": "0" * 40,
                                        "path": str(rotated), "in_place": 1, "width": 40, "height": 24,
                                        "role": "labelled", "created": utc_now()}).last_pk
        db["masks"].insert({"image_id": image_id, "kind": "ground_truth", "path": gt, "created": utc_now()})

    export_project(store, project, tmp_path / "rot.zip", "voc")
    with zipfile.ZipFile(tmp_path / "rot.zip") as zf:
        for name in ("rotated", "in place"):
            jpeg = Image.open(io.BytesIO(zf.read(f"{VOC_ROOT}/JPEGImages/{name}.jpg")))
            assert jpeg.format == "JPEG" and jpeg.getexif().get(0x0112, 1) == 1
            pixels = np.asarray(jpeg.convert("RGB"), dtype=np.int16)
            target = np.array(Image.open(io.BytesIO(zf.read(f"{VOC_ROOT}/SegmentationClass/{name}.png"))))
            assert pixels.shape[:2] == target.shape == (24, 40)
            np.testing.assert_array_equal(target, mask)
            for value, colour in enumerate(colours):
                assert np.abs(pixels[target == value] - colour).mean() < 12  # image and mask line up


def _listing(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_a_failed_export_leaves_no_partial_zip(store, demo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.zip").write_bytes(b"an earlier export")
    before = _listing(out)

    def stop(done, total):
        if done == 5:
            raise RuntimeError("cancelled")

    for target in ("old.zip", "new.zip"):
        with pytest.raises(RuntimeError, match="cancelled"):
            export_project(store, demo, out / target, "coco", progress=stop)
        assert _listing(out) == before

    row = images(store, demo, "validation")[3]
    path = store.path(store.db.execute("SELECT path FROM masks WHERE image_id = ?", [row["id"]]).fetchone()[0])
    path.unlink()
    with pytest.raises(ExportError, match=f"{row['name']}.*{path.name}"):
        export_project(store, demo, out / "new.zip", "voc")
    assert _listing(out) == before


def test_refuses_bad_arguments(store, demo, tmp_path, demo_dir):
    with pytest.raises(ExportError, match="unknown export format 'yolo'; choose one of: voc, coco, masks, overlays"):
        export_project(store, demo, tmp_path / "x.zip", "yolo")
    other = create_project(store, "other", demo_dir / "classes.json")
    run_id = add_run(store, other)
    with pytest.raises(ExportError, match="another project"):
        export_project(store, demo, tmp_path / "x.zip", "voc", run_id=run_id)
    with pytest.raises(ExportError, match="needs a run"):
        export_project(store, demo, tmp_path / "x.zip", "voc", stage="teacher")
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize("status", ["failed", "cancelled", "running"])
def test_an_unfinished_run_exports_only_when_allowed(store, demo, tmp_path, capsys, status):
    from stpp.cli.main import main

    run_id = add_run(store, demo)
    add_pseudo(store, run_id, images(store, demo, "unlabelled")[0], "teacher", make_mask(0), demo.classes.palette)
    with store.transaction() as db:
        db["runs"].update(run_id, {"status": status})
    target = tmp_path / "out.zip"
    with pytest.raises(ExportError, match=f"run {run_id} is {status}, not finished.*--allow-unfinished"):
        export_project(store, demo, target, "voc", run_id=run_id)
    assert not target.exists()
    argv = ["project", "export", demo.name, "--out", str(target), "--run", str(run_id)]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"run {run_id} is {status}, not finished" in line and not target.exists()
    assert main([*argv, "--allow-unfinished"]) == 0
    with zipfile.ZipFile(target) as zf:
        assert json.loads(zf.read("manifest.json"))["run"]["status"] == status
    assert export_project(store, demo, target, "voc", run_id=run_id, allow_unfinished=True).counts
