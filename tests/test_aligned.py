"""The ``aligned`` strategy: under a domain shift (support from digits, queries and pool from inverted digits) it
beats the plain linear probe; without a pool it is the linear probe; CORAL's head saves and reloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fsl_app.dataset import ImageSet
from fsl_app.evaluation import evaluate_episodes
from fsl_app.features import images_to_batch
from fsl_app.strategies import create_strategy, load_strategy
from fsl_app.strategies.aligned import AlignedHead

CLASSES = range(5)
PER_CLASS = 30


def write_digits(root, *, inverted: bool) -> ImageSet:
    """5 classes x 30 real 64 px digits (scikit-learn's set), optionally inverted (white background)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in CLASSES:
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True)
        for index in np.flatnonzero(digits.target == label)[:PER_CLASS]:
            image = Image.fromarray((digits.images[index] / 16 * 255).astype(np.uint8)).resize((64, 64))
            (ImageOps.invert(image) if inverted else image).convert("RGB").save(folder / f"{index:04d}.png")
    return ImageSet.from_folder(root)


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> tuple[ImageSet, ImageSet]:
    root = tmp_path_factory.mktemp("aligned")
    return write_digits(root / "plain", inverted=False), write_digits(root / "inverted", inverted=True)


def shifted_accuracies(name: str, domains, backbone, **params) -> np.ndarray:
    plain, inverted = domains
    report = evaluate_episodes(create_strategy(name, **params), plain, backbone, n_way=5, k_shot=5, n_query=10,
                               episodes=40, seed=3, transductive=True, query_images=inverted)
    return np.array(report.accuracies)


def test_centring_on_the_pool_beats_the_linear_probe_under_shift(domains, tiny_backbone):
    linear = shifted_accuracies("linear", domains, tiny_backbone)
    aligned = shifted_accuracies("aligned", domains, tiny_backbone)
    gain = aligned - linear  # paired: the same episodes
    assert gain.mean() > 3 * gain.std(ddof=1) / np.sqrt(len(gain)), (linear.mean(), aligned.mean())
    assert (gain > 0).sum() > (gain < 0).sum()


@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_without_a_pool_it_is_the_linear_probe(classifier, domains, tiny_backbone, caplog):
    plain, inverted = domains
    linear = create_strategy("linear", classifier=classifier).fit(plain, backbone=tiny_backbone)
    with caplog.at_level("INFO", logger="fsl_app.strategies.aligned"):
        aligned = create_strategy("aligned", classifier=classifier).fit(plain, backbone=tiny_backbone)
    assert aligned.pool_used_ == 0 and "plain linear probe" in caplog.text
    assert torch.allclose(aligned.predict_proba(inverted), linear.predict_proba(inverted), atol=1e-6)
    one_image = inverted.subset([0])
    lone = create_strategy("aligned", classifier=classifier).fit(plain, backbone=tiny_backbone, unlabeled=one_image)
    assert lone.pool_used_ == 0 and torch.allclose(lone.predict_proba(inverted), linear.predict_proba(inverted),
                                                   atol=1e-6)


def test_center_moves_only_the_normalizer_centre_to_the_pool_mean(domains, tiny_backbone):
    plain, inverted = domains
    aligned = create_strategy("aligned").fit(plain, backbone=tiny_backbone, unlabeled=inverted)
    linear = create_strategy("linear").fit(plain, backbone=tiny_backbone)
    pool_mean = aligned._features(inverted).mean(0)
    assert not isinstance(aligned.head_, AlignedHead) and aligned.pool_used_ == len(inverted)
    assert torch.allclose(aligned.head_.normalizer.center, pool_mean, atol=1e-5)
    assert torch.equal(aligned.head_.linear.weight, linear.head_.linear.weight)
    assert aligned.alignment_["method"] == "center"


def test_coral_round_trips_through_save_load_and_export(domains, tiny_backbone, tmp_path):
    plain, inverted = domains
    coral = create_strategy("aligned", method="coral").fit(plain, backbone=tiny_backbone, unlabeled=inverted)
    assert isinstance(coral.head_, AlignedHead) and coral.alignment_["method"] == "coral"
    queries = inverted.subset(list(range(0, len(inverted), 7)))
    proba = coral.predict_proba(queries)
    coral.save(tmp_path)
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert torch.allclose(loaded.predict_proba(queries), proba, atol=1e-6)
    assert loaded.alignment_ == coral.alignment_ and loaded.pool_used_ == coral.pool_used_
    assert torch.allclose(loaded.embed(queries), coral.embed(queries), atol=1e-6)
    batch = images_to_batch([queries.load(i) for i in range(len(queries))], tiny_backbone.data_config)
    with torch.inference_mode():
        logits = loaded.to_module()(batch)
    assert torch.allclose(torch.softmax(logits, 1), proba, atol=1e-4)
