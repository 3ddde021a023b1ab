"""The final teacher's probability signals (confidence, TTA agreement) on a real small model: the
confidence is the top probability of what the labels are taken from, as the engine's own TTA pass
averages it, and the agreement counts each view's argmax against the views' consensus."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from stpp.core.config import get_preset
from stpp.engine.inference import Predictor, tta_predict
from stpp.models import build_model
from stpp.selftrain.probability_signals import image_signals

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model(get_preset("test").model, NUM_CLASSES))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 40, 56, generator=generator)


def top_mean(probs: torch.Tensor) -> float:
    return float(probs.max(dim=1).values.mean())


def test_the_confidence_of_tta_labels_is_their_averaged_top_probability(predictor: Predictor, image: torch.Tensor):
    cfg = get_preset("test")  # the preset's default: TTA labels over 3 scales and flips
    assert cfg.pseudo.tta and cfg.pseudo.tta_flip and len(cfg.pseudo.tta_scales) == 3
    found = image_signals(predictor, image, cfg)
    with torch.inference_mode():
        averaged = tta_predict(predictor, image, cfg.pseudo.tta_scales, flip=True).probs
    assert found["confidence"] == pytest.approx(top_mean(averaged), abs=1e-5)

    # Each view's argmax against the consensus, the views rebuilt from the engine's TTA pass.
    consensus = averaged.argmax(dim=1)
    agreements = []
    for scale in cfg.pseudo.tta_scales:
        with torch.inference_mode():
            plain = tta_predict(predictor, image, (scale,)).probs
            mirrored = 2 * tta_predict(predictor, image, (scale,), flip=True).probs - plain
        agreements += [float((view.argmax(dim=1) == consensus).float().mean()) for view in (plain, mirrored)]
    assert found["tta_agreement"] == pytest.approx(np.mean(agreements), abs=1e-4)
    assert 0.0 < found["confidence"] <= 1.0 and 0.0 < found["tta_agreement"] < 1.0  # the views differ here


def test_without_tta_labels_the_confidence_is_the_plain_views(predictor: Predictor, image: torch.Tensor):
    cfg = get_preset("test")
    plain_labels = replace(cfg, pseudo=replace(cfg.pseudo, tta=False))
    with torch.inference_mode():
        plain = predictor.logits(image).softmax(dim=1)
    found = image_signals(predictor, image, plain_labels)
    assert found["confidence"] == pytest.approx(top_mean(plain), abs=1e-5)
    # The agreement still measures the TTA views the run would label with.
    assert found["tta_agreement"] == image_signals(predictor, image, cfg)["tta_agreement"]

    one_view = replace(cfg, pseudo=replace(cfg.pseudo, tta=False, tta_scales=(1.0,), tta_flip=False))
    assert image_signals(predictor, image, one_view) == {"confidence": pytest.approx(top_mean(plain), abs=1e-5),
                                                         "tta_agreement": 1.0}
    # Without the plain view among the TTA scales, the plain labels' confidence is still measured.
    no_plain = replace(cfg, pseudo=replace(cfg.pseudo, tta=False, tta_scales=(0.75, 1.5)))
    assert image_signals(predictor, image, no_plain)["confidence"] == pytest.approx(top_mean(plain), abs=1e-5)
