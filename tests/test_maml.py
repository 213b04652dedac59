"""MAML / ANIL: they learn on real features, meta-training moves the meta-parameters, the one-image-per-class
fallback adapts without meta-training, episodes respect n_way, cancel stops it, and the saved model round-trips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fsl_app.dataset import ImageSet
from fsl_app.strategies import create_strategy, interrupt_check, load_strategy
from fsl_app.strategies import _meta_learning as meta
from fsl_app.strategies.maml import MAML, ImageMAML, _last_group_names


@pytest.fixture(scope="module")
def digit_task():
    """5-way 5-shot on scikit-learn's 8x8 digits (pixels as features), 30 queries per class."""
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    support, query = [], []
    for digit in range(5):
        members = rng.permutation(np.flatnonzero(y == digit))
        support += members[:5].tolist()
        query += members[5:35].tolist()
    x = torch.tensor(x, dtype=torch.float32)
    return x[support], [f"d{v}" for v in y[support]], x[query], np.array([f"d{v}" for v in y[query]])


def accuracy(strategy, features, labels) -> float:
    return float(np.mean(np.array(strategy.predict(features)) == labels))


@pytest.mark.parametrize("variant", ["anil", "fomaml"])
def test_meta_trained_maml_learns_digits_and_reports_episodes(variant, digit_task):
    support, labels, query, truth = digit_task
    strategy = create_strategy("maml", variant=variant, meta_episodes=30, outer_lr=0.01)
    steps = []
    strategy._on_step = steps.append  # what fit() installs for the Train page's live curves
    strategy.fit_features(support, labels)
    assert strategy.meta_trained_
    assert accuracy(strategy, query, truth) > 0.7  # chance is 0.2
    assert [s.step for s in steps] == list(range(1, 31))
    assert all(0 <= s.train_acc <= 1 and 0 <= s.val_acc <= 1 and s.loss > 0 for s in steps)


def test_meta_training_moves_the_gain_and_shift_that_the_head_folds_in(digit_task):
    support, labels, query, _ = digit_task
    plain = create_strategy("maml", meta_episodes=0).fit_features(support, labels)
    trained = create_strategy("maml", meta_episodes=20, outer_lr=0.05).fit_features(support, labels)
    assert not plain.meta_trained_ and trained.meta_trained_
    assert not torch.allclose(plain.predict_proba(query), trained.predict_proba(query), atol=1e-3)


def test_one_image_per_class_adapts_without_meta_training_and_says_so(digit_task, caplog, tmp_path, tiny_backbone):
    support, labels, query, truth = digit_task
    firsts = [labels.index(name) for name in sorted(set(labels))]
    steps = []
    strategy = create_strategy("maml")
    strategy._on_step = steps.append
    with caplog.at_level(logging.WARNING):
        strategy.fit_features(support[firsts], [labels[i] for i in firsts], backbone=tiny_backbone)
    assert not strategy.meta_trained_ and steps == []
    assert "without meta-training" in caplog.text and "second image" in caplog.text
    assert accuracy(strategy, query, truth) > 0.4  # 1-shot Proto-MAML head on pixels, chance 0.2
    strategy.save(tmp_path)
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert loaded.meta_trained_ is False
    assert torch.allclose(loaded.predict_proba(query), strategy.predict_proba(query), atol=1e-6)


def test_episodes_use_every_class_when_there_are_fewer_than_n_way():
    y = np.repeat(np.arange(3), 4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shots, queries = meta.sample_split_episode(y, 10, rng)
        assert set(y[shots]) == set(y[queries]) == {0, 1, 2}
        assert not set(shots) & set(queries)
    singles = np.array([0, 1, 1, 2, 2, 2])  # class 0 has one image: it cannot give a shot and a query
    shots, queries = meta.sample_split_episode(singles, 5, rng)
    assert set(singles[shots]) == {1, 2} and list(meta.meta_trainable_classes(singles)) == [1, 2]


def test_cancel_stops_meta_training_and_leaves_it_unfitted(digit_task):
    support, labels, _, _ = digit_task
    strategy = create_strategy("maml", meta_episodes=50)
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt

    with interrupt_check(check), pytest.raises(KeyboardInterrupt):
        strategy.fit_features(support, labels)
    assert not hasattr(strategy, "classes_")


def test_last_block_maml_adapts_only_the_last_layer_groups(digits_set, tiny_backbone, tmp_path):
    strategy = create_strategy("maml", adapt="last_block", variant="fomaml", meta_episodes=1, inner_steps=1,
                               outer_lr=0.01)
    assert isinstance(strategy, ImageMAML) and not isinstance(strategy, MAML)
    strategy.fit(digits_set, backbone=tiny_backbone)
    adapted = set(_last_group_names(tiny_backbone.model))
    before, after = tiny_backbone.model.state_dict(), strategy.backbone_.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= adapted
    strategy.save(tmp_path)
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert type(loaded) is ImageMAML and loaded.meta_trained_
    assert torch.allclose(loaded.predict_proba(digits_set), strategy.predict_proba(digits_set), atol=1e-6)


def test_set_params_cannot_turn_a_feature_maml_into_an_image_one():
    with pytest.raises(ValueError, match="create a new one"):
        create_strategy("maml").set_params(adapt="last_block").fit_features(torch.randn(4, 8), list("aabb"))


def test_one_image_per_class_on_images_falls_back_too(digits_set, tiny_backbone):
    firsts = ImageSet(digits_set.records[i] for i, label in enumerate(digits_set.labels)
                      if label not in digits_set.labels[:i])
    strategy = create_strategy("maml", adapt="last_block", meta_episodes=3, inner_steps=1).fit(  # no episode runs
        firsts, backbone=tiny_backbone)
    assert not strategy.meta_trained_
    assert strategy.predict_proba(digits_set).shape == (len(digits_set), 3)
