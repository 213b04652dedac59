"""The strategies that learn from the unlabeled pool (bdcspn, alpha_tim, selftrain): they gain from a pool of the
labeled classes, fall back to their inductive fit when the pool is empty, tiny or foreign, refuse bad features
clearly, and stay bounded on a pool of 100,000 images."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from fsl_app.dataset import DataError
from fsl_app.strategies import FeatureStrategy, create_strategy, list_strategies
from fsl_app.strategies import _pool

POOL_STRATEGIES = ["bdcspn", "alpha_tim", "selftrain"]
FEATURE_STRATEGIES = [name for name in list_strategies() if isinstance(create_strategy(name), FeatureStrategy)]


def test_the_pool_strategies_are_registered_and_say_they_use_the_pool():
    for name in POOL_STRATEGIES:
        assert type(create_strategy(name)).uses_unlabeled
    assert not any(type(create_strategy(name)).uses_unlabeled for name in ("linear", "protonet", "finetune"))


def clusters(seed: int, *, n_classes: int = 4, shots: int = 1, pool_per_class: int = 40, dim: int = 32,
             foreign_pool: bool = False):
    """A few-shot task on Gaussian clusters of non-negative-ish features (like pooled CNN activations).

    Returns labeled features (n, dim), labels, pool (m, dim), queries (q, dim) and their class indices. A foreign
    pool comes from clusters on the far side of the feature space, unlike any labeled class.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (n_classes, dim)) + 3.0
    foreign = -centers[:3] + rng.normal(0, 0.5, (3, dim))

    def draw(means, count):
        return torch.from_numpy(np.concatenate([m + rng.normal(0, 1.0, (count, dim)) for m in means]).astype(np.float32))

    labels = [f"c{i}" for i in range(n_classes) for _ in range(shots)]
    pool = draw(foreign if foreign_pool else centers, pool_per_class)
    return draw(centers, shots), labels, pool, draw(centers, 50), np.repeat(np.arange(n_classes), 50)


def accuracy(model, queries: torch.Tensor, y: np.ndarray) -> float:
    return float((model.predict_proba(queries).argmax(1).numpy() == y).mean())


@pytest.mark.parametrize("name", POOL_STRATEGIES)
def test_a_pool_of_the_labeled_classes_improves_one_shot_accuracy(name):
    gains = []
    for seed in range(8):
        x, labels, pool, queries, y = clusters(seed)
        inductive = create_strategy(name).fit_features(x, labels)
        transductive = create_strategy(name).fit_features(x, labels, unlabeled=pool)
        assert transductive.pool_used_ > len(pool) // 2
        gains.append(accuracy(transductive, queries, y) - accuracy(inductive, queries, y))
    assert np.mean(gains) >= 0.03 and min(gains) >= 0.0, gains


@pytest.mark.parametrize("name", POOL_STRATEGIES)
@pytest.mark.parametrize("pool_size", [0, 1])
def test_an_empty_or_single_image_pool_gives_the_inductive_fit(name, pool_size):
    x, labels, pool, queries, _ = clusters(0)
    inductive = create_strategy(name).fit_features(x, labels)
    fitted = create_strategy(name).fit_features(x, labels, unlabeled=pool[:pool_size])
    assert fitted.pool_used_ == 0
    assert torch.allclose(fitted.predict_proba(queries), inductive.predict_proba(queries), atol=1e-6)


@pytest.mark.parametrize("name", POOL_STRATEGIES)
def test_a_foreign_pool_is_left_out_with_a_warning(name, caplog):
    x, labels, pool, queries, y = clusters(1, foreign_pool=True)
    inductive = create_strategy(name).fit_features(x, labels)
    with caplog.at_level(logging.WARNING):
        fitted = create_strategy(name).fit_features(x, labels, unlabeled=pool)
    assert fitted.pool_used_ == 0 and "fitted without the pool" in caplog.text
    assert torch.allclose(fitted.predict_proba(queries), inductive.predict_proba(queries), atol=1e-6)
    ungated = create_strategy(name, outliers="off").fit_features(x, labels, unlabeled=pool)
    assert ungated.pool_used_ == len(pool)


def test_the_outlier_gate_keeps_images_near_a_class_and_drops_the_others():
    x, labels, pool, _, _ = clusters(2)
    _, _, foreign, _, _ = clusters(2, foreign_pool=True)
    y = np.array([int(label[1:]) for label in labels])
    normalizer = _pool.FeatureNormalizer.fit(torch.cat([x, pool, foreign]), "cl2n")
    keep = _pool.inlier_mask(normalizer(x), y, normalizer(torch.cat([pool, foreign])))
    assert keep[:len(pool)].float().mean() > 0.8 and keep[len(pool):].float().mean() < 0.2


@pytest.mark.parametrize("name", POOL_STRATEGIES)
def test_a_pool_a_hundred_times_the_labeled_set_is_subsampled(name):
    x, labels, pool, queries, y = clusters(3, shots=3, pool_per_class=300)  # 12 labeled, 1,200 unlabeled
    fitted = create_strategy(name, max_pool=200).fit_features(x, labels, unlabeled=pool)
    assert 0 < fitted.pool_used_ <= 200
    assert accuracy(fitted, queries, y) >= accuracy(create_strategy(name).fit_features(x, labels), queries, y)


@pytest.mark.parametrize("name", POOL_STRATEGIES)
def test_a_pool_of_100k_images_fits_without_a_quadratic_matrix(name, monkeypatch):
    rng = torch.Generator().manual_seed(0)
    x, labels = torch.randn(20, 64, generator=rng) + 2, [f"c{i % 4}" for i in range(20)]
    pool = torch.randn(100_000, 64, generator=rng) + 2
    largest = []
    original = _pool.squared_distances

    def recording(a, b):
        largest.append(len(a) * len(b))
        return original(a, b)

    monkeypatch.setattr(f"fsl_app.strategies.{'tim' if name == 'alpha_tim' else name}.squared_distances", recording,
                        raising=False)
    started = time.perf_counter()
    fitted = create_strategy(name, outliers="off").fit_features(x, labels, unlabeled=pool)
    assert time.perf_counter() - started < 30
    assert fitted.pool_used_ == fitted.max_pool == 2000
    assert max(largest, default=0) <= 2000 * 2000  # at most the subsample against itself, never 100k x 100k


@pytest.mark.parametrize("name", FEATURE_STRATEGIES)
def test_nan_features_are_a_clear_data_error(name):
    x, labels, pool, _, _ = clusters(4)
    broken = x.clone()
    broken[2, 5] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite values in 1 of 4 rows"):
        create_strategy(name).fit_features(broken, labels)
    if type(create_strategy(name)).uses_unlabeled:
        pool[7, 0] = float("inf")
        with pytest.raises(DataError, match="pool's features hold NaN or infinite"):
            create_strategy(name).fit_features(x, labels, unlabeled=pool)


@pytest.mark.parametrize("name", POOL_STRATEGIES)
def test_bad_pools_and_one_class_are_clear_errors(name):
    x, labels, pool, _, _ = clusters(5)
    with pytest.raises(DataError, match=r"must be a \(n, 32\) tensor"):
        create_strategy(name).fit_features(x, labels, unlabeled=pool[:, :16])
    with pytest.raises(DataError, match="at least 2 classes"):
        create_strategy(name).fit_features(x, ["c0"] * len(x), unlabeled=pool)


def test_self_training_follows_an_imbalanced_pool_instead_of_evening_it():
    x, labels, _, _, _ = clusters(6, shots=5)
    rng = np.random.default_rng(6)
    _, _, pool, _, _ = clusters(6, shots=5, pool_per_class=60)
    counts = [60, 30, 8, 2]  # an uneven pool, as real pools are
    uneven = torch.cat([pool[60 * c: 60 * c + n] for c, n in enumerate(counts)])
    fitted = create_strategy("selftrain").fit_features(x, labels, unlabeled=uneven[rng.permutation(len(uneven))])
    pseudo = fitted.predict_proba(uneven).argmax(1).bincount(minlength=4).tolist()
    assert fitted.pseudo_labels_ > 0.8 * len(uneven)
    assert np.abs(np.array(pseudo) - counts).sum() <= 4, pseudo  # the rare classes are not inflated


def test_self_training_threshold_comes_from_out_of_fold_predictions():
    strategy = create_strategy("selftrain", target_precision=0.99)
    x, labels, _, _, _ = clusters(7, shots=6)
    y = np.array([int(label[1:]) for label in labels])
    separable = strategy._threshold(x.double().numpy(), y)
    assert separable is not None and 0 < separable < 1
    assert strategy._threshold(x[::6].double().numpy(), y[::6]) is None  # one image per class: no folds


def test_pool_statistics_survive_save_and_load(digits_set, tiny_backbone, tmp_path):
    from fsl_app.dataset import ImageRecord, ImageSet
    from fsl_app.strategies import load_strategy

    labeled = digits_set.subset([0, 1, 2, 6, 7, 8, 12, 13, 14])
    pool = ImageSet(ImageRecord(r.path, r.sha256, None) for r in digits_set.subset([3, 4, 5, 9, 10, 11, 15, 16, 17]))
    fitted = create_strategy("selftrain", outliers="off").fit(labeled, backbone=tiny_backbone, unlabeled=pool)
    fitted.save(tmp_path)
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert (loaded.pool_used_, loaded.pseudo_labels_) == (fitted.pool_used_, fitted.pseudo_labels_) != (0, 0)


@pytest.mark.parametrize("name", POOL_STRATEGIES)
def test_only_max_pool_images_of_a_large_pool_are_extracted(name, tmp_path):
    from fsl_app.dataset import ImageRecord, ImageSet

    pool = ImageSet(ImageRecord(tmp_path / f"{i}.png", f"{i:064x}", None) for i in range(50))
    chosen = create_strategy(name, max_pool=7, seed=3).pool_to_extract(pool)
    assert len(chosen) == 7 and len({r.sha256 for r in chosen.records}) == 7
    assert [r.sha256 for r in chosen.records] == \
        [r.sha256 for r in create_strategy(name, max_pool=7, seed=3).pool_to_extract(pool).records]
    assert len(create_strategy(name, max_pool=70).pool_to_extract(pool)) == 50
