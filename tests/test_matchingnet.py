"""Matching Networks: attention over the support learns on real features, 1-shot is cosine nearest neighbour,
untrained full-context embeddings are plain attention, the one-image-per-class fallback, the bundle script's
attention equals the head, and the episodic form round-trips."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fsl_app.export import bundle_writer
from fsl_app.strategies import FeatureStrategy, create_strategy, load_strategy
from fsl_app.strategies._heads import AttentionHead, head_from_config
from fsl_app.strategies.matchingnet import EpisodicMatchingNet


@pytest.fixture(scope="module")
def digit_task():
    """5-way 5-shot on scikit-learn's 8x8 digits (pixels as features), 30 queries per class."""
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(1)
    support, query = [], []
    for digit in range(5, 10):
        members = rng.permutation(np.flatnonzero(y == digit))
        support += members[:5].tolist()
        query += members[5:35].tolist()
    x = torch.tensor(x, dtype=torch.float32)
    return x[support], [f"d{v}" for v in y[support]], x[query], np.array([f"d{v}" for v in y[query]])


def accuracy(strategy, features, labels) -> float:
    return float(np.mean(np.array(strategy.predict(features)) == labels))


def test_attention_learns_digits_and_its_probabilities_are_the_attention_mass(digit_task):
    support, labels, query, truth = digit_task
    strategy = create_strategy("matchingnet").fit_features(support, labels)
    assert isinstance(strategy, FeatureStrategy)
    assert accuracy(strategy, query, truth) > 0.8  # chance is 0.2
    head = strategy.head_
    unit = torch.nn.functional.normalize
    attention = torch.softmax(head.scale * unit(head.normalizer(query)) @ unit(head.support).T, dim=1)
    assert torch.allclose(strategy.predict_proba(query), attention @ head.coef, atol=1e-5)
    assert 1.0 <= head.scale <= 320


def test_one_shot_attention_is_cosine_nearest_neighbour(digit_task):
    support, labels, query, _ = digit_task
    firsts = [labels.index(name) for name in sorted(set(labels))]
    strategy = create_strategy("matchingnet").fit_features(support[firsts], [labels[i] for i in firsts])
    assert strategy.head_.scale == 10.0  # no class keeps an image when one is left out
    normalizer = strategy.head_.normalizer
    nearest = (normalizer(query) @ normalizer(support[firsts]).T).argmax(1)
    assert strategy.predict_proba(query).argmax(1).tolist() == nearest.tolist()


def test_untrained_full_context_embeddings_are_plain_attention(digit_task):
    support, labels, query, _ = digit_task
    plain = create_strategy("matchingnet").fit_features(support, labels)
    untrained = create_strategy("matchingnet", fce_steps=3, fce_episodes=0).fit_features(support, labels)
    assert not untrained.fce_trained_
    assert torch.allclose(untrained.predict_proba(query), plain.predict_proba(query), atol=1e-5)


def test_trained_full_context_embeddings_learn_and_report_episodes(digit_task, tiny_backbone, tmp_path):
    support, labels, query, truth = digit_task
    strategy = create_strategy("matchingnet", fce_steps=2, fce_episodes=15, fce_lr=0.01)
    steps = []
    strategy._on_step = steps.append  # what fit() installs for the Train page's live curves
    strategy.fit_features(support, labels, backbone=tiny_backbone)
    assert strategy.fce_trained_ and [s.step for s in steps] == list(range(1, 16))
    assert accuracy(strategy, query, truth) > 0.7
    plain = create_strategy("matchingnet").fit_features(support, labels)
    assert not torch.allclose(strategy.predict_proba(query), plain.predict_proba(query), atol=1e-4)
    strategy.save(tmp_path)
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert torch.allclose(loaded.predict_proba(query), strategy.predict_proba(query), atol=1e-6)


def test_one_image_per_class_uses_plain_attention_and_says_so(digit_task, caplog):
    support, labels, query, _ = digit_task
    firsts = [labels.index(name) for name in sorted(set(labels))]
    one_shot = support[firsts], [labels[i] for i in firsts]
    with caplog.at_level(logging.WARNING):
        fce = create_strategy("matchingnet", fce_steps=2, fce_episodes=5).fit_features(*one_shot)
    assert not fce.fce_trained_ and "plain cosine attention" in caplog.text
    plain = create_strategy("matchingnet").fit_features(*one_shot)
    assert torch.allclose(fce.predict_proba(query), plain.predict_proba(query), atol=1e-5)


def test_bundle_script_attention_equals_the_head(digit_task):
    """predict.py (shipped in bundles, no fsl_app) rebuilds the attention head, LSTM cell included."""
    support, labels, query, _ = digit_task
    strategy = create_strategy("matchingnet", fce_steps=2, fce_episodes=5, fce_lr=0.01).fit_features(support, labels)
    head = strategy.head_
    spec = importlib.util.spec_from_file_location("bundle_predict", bundle_writer.__file__.replace(
        "bundle_writer.py", "bundle_scripts/predict.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    state = {f"head.{k}": v for k, v in head.state_dict().items()}
    with torch.no_grad():
        assert torch.allclose(script.head(query, head.config(), state), head(query), atol=1e-5)
        rebuilt = head_from_config(head.config(), head.state_dict())
        assert isinstance(rebuilt, AttentionHead) and torch.allclose(rebuilt(query), head(query), atol=1e-6)


def test_episodic_matchingnet_round_trips_and_falls_back_on_one_image_per_class(digits_set, tiny_backbone, tmp_path,
                                                                                 caplog):
    strategy = create_strategy("matchingnet", finetune_episodes=2)
    assert isinstance(strategy, EpisodicMatchingNet) and strategy.name == "matchingnet"
    steps = []
    strategy.fit(digits_set, backbone=tiny_backbone, on_step=steps.append)
    assert [s.step for s in steps] == [1, 2]
    strategy.save(tmp_path)
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert type(loaded) is EpisodicMatchingNet
    assert torch.allclose(loaded.predict_proba(digits_set), strategy.predict_proba(digits_set), atol=1e-6)
    firsts = digits_set.subset([i for i, label in enumerate(digits_set.labels) if label not in digits_set.labels[:i]])
    with caplog.at_level(logging.WARNING):
        single = create_strategy("matchingnet", finetune_episodes=2).fit(firsts, backbone=tiny_backbone)
    assert "not fine-tuned" in caplog.text
    assert single.predict_proba(digits_set).shape == (len(digits_set), 3)
