"""Evaluation protocols and metrics (fsl_app.evaluation): honest splits, consistent metrics, seeded episodes."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch

from fsl_app import evaluation
from fsl_app.dataset import DataError, ImageRecord, ImageSet
from fsl_app.evaluation import (EvaluationReport, binomial_ci95, choose_protocol, classification_metrics, evaluate,
                                evaluate_episodes, mean_ci95, sample_episode, split_indices)
from conftest import make_digits_folder
from fsl_app.strategies import FeatureStrategy, Strategy, create_strategy

LABEL_VECTORS = {
    "balanced": np.repeat([0, 1, 2], 6),
    "imbalanced": np.repeat([0, 1, 2, 3], [2, 9, 3, 14]),
    "interleaved": np.array([2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 0, 1]),
    "two_small": np.repeat([0, 1], [2, 3]),
}


def assert_every_class_keeps_a_training_image(y, train):
    assert set(np.unique(y[train])) == set(np.unique(y)), (np.bincount(y), np.bincount(y[train], minlength=y.max() + 1))


# --- splits -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", sorted(LABEL_VECTORS))
def test_leave_one_out_tests_each_image_once(labels):
    y = LABEL_VECTORS[labels]
    splits = list(split_indices("loo", y))
    assert sorted(int(test[0]) for _, test in splits) == list(range(len(y)))
    for train, test in splits:
        assert len(test) == 1 and test[0] not in train and len(train) == len(y) - 1
        assert_every_class_keeps_a_training_image(y, train)


def test_leave_one_out_skips_classes_with_a_single_image():
    y = np.array([0, 0, 1, 2, 2, 2])  # class 1 has one image: leaving it out would leave nothing to learn it from
    tested = [int(test[0]) for _, test in split_indices("loo", y)]
    assert 2 not in tested and len(tested) == 5


@pytest.mark.parametrize("labels", ["balanced", "imbalanced", "interleaved"])
def test_kfold_is_a_stratified_partition(labels):
    y = LABEL_VECTORS[labels]
    splits = list(split_indices("kfold", y, folds=5, seed=0))
    k = min(5, np.bincount(y).min())
    assert len(splits) == k
    tests = np.concatenate([test for _, test in splits])
    assert sorted(tests.tolist()) == list(range(len(y)))  # every image tested exactly once
    for train, test in splits:
        assert not set(train) & set(test)
        assert_every_class_keeps_a_training_image(y, train)
        assert set(np.unique(y[test])) == set(np.unique(y))  # stratified: every class in every fold


def test_kfold_needs_two_images_per_class():
    with pytest.raises(DataError, match="at least 2 images in every class"):
        list(split_indices("kfold", np.array([0, 0, 0, 1])))


@pytest.mark.parametrize("test_size", [0.2, 0.25, 0.5, 0.8])
@pytest.mark.parametrize("labels", sorted(LABEL_VECTORS))
def test_holdout_is_disjoint_stratified_and_keeps_every_class_in_training(labels, test_size):
    y = LABEL_VECTORS[labels]
    (train, test), = split_indices("holdout", y, test_size=test_size, seed=1)
    assert not set(train) & set(test) and len(train) + len(test) == len(y)
    assert len(test) >= len(np.unique(y))  # at least one test image per class
    assert_every_class_keeps_a_training_image(y, train)


def test_holdout_with_a_large_test_size_keeps_a_small_class_in_training():
    y = np.repeat([0, 1], [8, 2])  # 80% test rounds the 2-image class out of training without care
    for seed in range(10):
        (train, test), = split_indices("holdout", y, test_size=0.8, seed=seed)
        assert_every_class_keeps_a_training_image(y, train)
        assert 1 in y[test]


def test_holdout_keeps_single_image_classes_in_training():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    (train, test), = split_indices("holdout", y, seed=0)
    assert 8 in train and 8 not in test


def test_holdout_needs_a_class_with_two_images():
    with pytest.raises(DataError, match="at least 2 images"):
        list(split_indices("holdout", np.array([0, 1, 2])))


@pytest.mark.parametrize("protocol", ["kfold", "holdout"])
def test_splits_are_reproducible_per_seed(protocol):
    y = LABEL_VECTORS["balanced"]

    def tests(seed):
        return [test.tolist() for _, test in split_indices(protocol, y, seed=seed)]

    assert tests(3) == tests(3)
    assert tests(3) != tests(4)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol must be one of"):
        list(split_indices("bootstrap", np.array([0, 0, 1, 1])))


def test_choose_protocol():
    small, medium, large = np.repeat([0, 1], 5), np.repeat(np.arange(10), 10), np.repeat([0, 1], 200)
    assert choose_protocol(create_strategy("linear"), small) == "loo"
    assert choose_protocol(create_strategy("linear"), medium) == "kfold"
    assert choose_protocol(create_strategy("linear"), large) == "kfold"
    assert choose_protocol(create_strategy("linear"), np.array([0] * 400 + [1])) == "loo"
    assert choose_protocol(create_strategy("protonet"), small) == "loo"
    assert choose_protocol(create_strategy("protonet", finetune_episodes=5), small) == "holdout"
    assert choose_protocol(create_strategy("finetune"), small) == "holdout"


# --- metrics ------------------------------------------------------------------------------------------------------

def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    metrics = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    # F1: a = 2*(1/2*1/2)/(1) = 0.5, b = 2*(2/3*1)/(5/3) = 0.8, c = 0
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics["ci95"] == pytest.approx(1.96 * math.sqrt(0.6 * 0.4 / 5))


def test_confidence_intervals():
    assert binomial_ci95(0.5, 100) == pytest.approx(0.098)
    assert binomial_ci95(1.0, 10) == 0.0
    assert math.isnan(binomial_ci95(0.5, 0))
    values = np.array([0.6, 0.8, 1.0, 0.8])
    assert mean_ci95(values) == pytest.approx(1.96 * values.std(ddof=1) / 2)
    assert mean_ci95(np.array([0.7])) == 0.0


@pytest.fixture(scope="module")
def loo_report(digits_set, tiny_backbone) -> EvaluationReport:
    return evaluate(create_strategy("protonet"), digits_set, tiny_backbone)


def test_evaluate_auto_uses_leave_one_out_for_frozen_features(loo_report, digits_set):
    assert loo_report.protocol == "loo"
    assert loo_report.n_test == len(digits_set) and sorted(loo_report.test_indices) == list(range(len(digits_set)))
    assert loo_report.classes == digits_set.classes


def test_evaluate_metrics_are_consistent(loo_report, digits_set):
    report = loo_report
    y_true, y_pred = np.array(report.y_true), np.array(report.y_pred)
    assert report.accuracy == pytest.approx(float((y_true == y_pred).mean()))
    assert y_true.tolist() == digits_set.label_indices()[report.test_indices].tolist()
    confusion = np.array(report.confusion)
    assert confusion.sum() == report.n_test
    assert confusion.sum(1).tolist() == np.bincount(y_true, minlength=3).tolist()
    assert np.trace(confusion) == int((y_true == y_pred).sum())
    for index, name in enumerate(report.classes):
        assert report.per_class_accuracy[name] == pytest.approx(confusion[index, index] / confusion[index].sum())
    assert report.balanced_accuracy == pytest.approx(np.mean(list(report.per_class_accuracy.values())))
    probabilities = np.array(report.probabilities)
    assert probabilities.shape == (report.n_test, 3)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert probabilities.argmax(1).tolist() == report.y_pred
    assert report.ci95 == pytest.approx(binomial_ci95(report.accuracy, report.n_test))
    assert set(report.summary()) == {"protocol", "accuracy", "ci95", "ci_low", "ci_high", "balanced_accuracy",
                                     "macro_f1", "per_class_accuracy", "untested_classes", "tested_classes_only",
                                     "n_test"}


def test_evaluate_kfold_reports_split_accuracies(digits_set, tiny_backbone):
    progress = []
    report = evaluate(create_strategy("linear"), digits_set, tiny_backbone, protocol="kfold", folds=3,
                      progress=lambda done, total: progress.append((done, total)))
    assert report.protocol == "kfold" and len(report.split_accuracies) == 3 and report.n_test == len(digits_set)
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert report.ci95 == pytest.approx(mean_ci95(np.array(report.split_accuracies)))
    assert report.accuracy == pytest.approx(np.mean(np.array(report.y_true) == np.array(report.y_pred)))


def test_evaluate_ignores_unlabeled_images(digits_set, tiny_backbone):
    extra = ImageSet([ImageRecord(digits_set[0].path, digits_set[0].sha256, None)] + list(digits_set.records))
    with_extra = evaluate(create_strategy("protonet"), extra, tiny_backbone, protocol="kfold", folds=2)
    plain = evaluate(create_strategy("protonet"), digits_set, tiny_backbone, protocol="kfold", folds=2)
    assert with_extra.n_test == plain.n_test == len(digits_set)
    assert with_extra.y_pred == plain.y_pred and with_extra.test_indices == plain.test_indices


def test_evaluate_with_only_single_image_classes_is_a_data_error(digits_set, tiny_backbone):
    singles = digits_set.subset([0, 6, 12])  # one image of each class: nothing can be held out
    with pytest.raises(DataError, match="no class has 2 images"):
        evaluate(create_strategy("linear"), singles, tiny_backbone, protocol="loo")


def test_evaluate_with_one_class_is_a_data_error(digits_set, tiny_backbone):
    with pytest.raises(DataError, match="at least 2 classes"):
        evaluate(create_strategy("linear"), digits_set.subset(range(6)), tiny_backbone)


# --- episodes -----------------------------------------------------------------------------------------------------

def test_sample_episode_shape():
    y = np.repeat(np.arange(5), 7)
    support, query = sample_episode(y, n_way=3, k_shot=2, n_query=4, rng=np.random.default_rng(0))
    assert len(support) == 6 and len(query) == 12 and not set(support) & set(query)
    classes = np.unique(y[support])
    assert len(classes) == 3 and set(np.unique(y[query])) == set(classes)
    assert all((y[support] == c).sum() == 2 and (y[query] == c).sum() == 4 for c in classes)


@pytest.fixture
def recorded_episodes(monkeypatch):
    episodes = []
    original = evaluation.sample_episode

    def recording(*args, **kwargs):
        support, query = original(*args, **kwargs)
        episodes.append((support.tolist(), query.tolist()))
        return support, query

    monkeypatch.setattr(evaluation, "sample_episode", recording)
    return episodes


def test_episodes_are_reproducible_with_a_seed_and_differ_with_another(digits_set, tiny_backbone, recorded_episodes):
    def run(seed):
        recorded_episodes.clear()
        report = evaluate_episodes(create_strategy("protonet"), digits_set, tiny_backbone, n_way=2, k_shot=1,
                                   n_query=2, episodes=6, seed=seed)
        return report, list(recorded_episodes)

    first, first_episodes = run(seed=11)
    again, again_episodes = run(seed=11)
    other, other_episodes = run(seed=12)
    assert first_episodes == again_episodes and first.accuracies == again.accuracies
    assert other_episodes != first_episodes
    assert len(first.accuracies) == 6 and first.episodes == 6
    assert first.mean_accuracy == pytest.approx(100 * np.mean(first.accuracies))
    assert first.ci95 == pytest.approx(mean_ci95(np.array(first.accuracies) * 100))
    assert set(first.to_dict()) >= {"n_way", "k_shot", "n_query", "episodes", "mean_accuracy", "ci95"}


def test_episodes_need_enough_images_per_class(digits_set, tiny_backbone, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("features extracted before the settings were checked")

    monkeypatch.setattr(evaluation, "get_extractor", no_extraction)  # fail fast: no minutes of extraction first
    with pytest.raises(DataError) as error:
        evaluate_episodes(create_strategy("protonet"), digits_set, tiny_backbone, n_way=3, k_shot=5, n_query=15,
                          episodes=2)
    message = str(error.value)
    assert "3-way 5-shot" in message and "at least 20 images" in message and "Lower --n-way" in message


def test_episodes_need_enough_classes(digits_set, tiny_backbone):
    with pytest.raises(DataError, match="needs 4 classes"):
        evaluate_episodes(create_strategy("protonet"), digits_set, tiny_backbone, n_way=4, k_shot=1, n_query=1,
                          episodes=2)


# --- pools: what each fit may see ---------------------------------------------------------------------------------

class SpyOnFeatures(FeatureStrategy):
    """Records what each fit and prediction receives; decides by nearest class mean."""

    name = "spy_on_features"
    uses_unlabeled = True
    calls: ClassVar[list[dict]] = []

    def __init__(self, *, seed: int = 0):
        self.seed = seed

    def fit_features(self, features, labels, *, backbone=None, unlabeled=None):
        SpyOnFeatures.calls.append({"features": features.clone(), "labels": list(labels),
                                    "unlabeled": None if unlabeled is None else unlabeled.clone()})
        return super().fit_features(features, labels, backbone=backbone, unlabeled=unlabeled)

    def _fit_head(self, features, y, unlabeled):
        from fsl_app.strategies._heads import FeatureNormalizer, LinearHead

        means = torch.stack([features[torch.as_tensor(y == c)].mean(0) for c in range(int(y.max()) + 1)])
        return LinearHead(FeatureNormalizer.fit(features, "none"), 2 * means, -(means ** 2).sum(1))

    def predict_proba(self, images_or_features):
        SpyOnFeatures.calls[-1]["test"] = images_or_features.clone()
        return super().predict_proba(images_or_features)


class SpyOnImages(Strategy):
    """An image strategy that records the records each fit and prediction receives; predicts uniformly."""

    name = "spy_on_images"
    uses_unlabeled = True
    calls: ClassVar[list[dict]] = []

    def __init__(self, *, seed: int = 0):
        self.seed = seed

    def fit(self, support, *, backbone, unlabeled=None, on_step=None):
        SpyOnImages.calls.append({"support": list(support.records),
                                  "unlabeled": [] if unlabeled is None else list(unlabeled.records)})
        self.classes_ = support.classes
        return self

    def predict_proba(self, images_or_features):
        SpyOnImages.calls[-1]["test"] = list(images_or_features.records)
        return torch.full((len(images_or_features), len(self.classes_)), 1 / len(self.classes_))

    def embed(self, images):
        raise NotImplementedError

    def to_module(self):
        raise NotImplementedError

    def _state_tensors(self):
        raise NotImplementedError

    def _restore(self, meta, tensors, backbone):
        raise NotImplementedError


@pytest.fixture(scope="module")
def with_pool(digits_set, tmp_path_factory) -> ImageSet:
    """The 18 labeled digits plus 4 unlabeled ones (other images of the same classes)."""
    extra = ImageSet.from_folder(make_digits_folder(tmp_path_factory.mktemp("pool"), per_class=2, offset=20))
    pool = [ImageRecord(r.path, r.sha256, None) for r in extra.records[:4]]
    return ImageSet(list(digits_set.records) + pool)


def rows_of(matrix: torch.Tensor, rows: torch.Tensor) -> set[int]:
    """Indices of ``matrix`` rows that also appear in ``rows``."""
    return {i for i, row in enumerate(matrix) if any(torch.equal(row, other) for other in rows)}


@pytest.mark.parametrize("protocol", ["loo", "kfold", "holdout"])
def test_feature_fits_get_the_pool_and_never_a_test_image_or_label(protocol, with_pool, tiny_backbone):
    from fsl_app.features import get_extractor

    SpyOnFeatures.calls.clear()
    report = evaluate(SpyOnFeatures(), with_pool, tiny_backbone, protocol=protocol, folds=3)
    labeled = with_pool.labeled()
    features = get_extractor(tiny_backbone).extract(labeled)
    pool_features = get_extractor(tiny_backbone).extract(with_pool.unlabeled())
    assert len(SpyOnFeatures.calls) == len(report.split_accuracies)
    tested = set()
    for call in SpyOnFeatures.calls:
        test_rows = rows_of(features, call["test"])
        train_rows = rows_of(features, call["features"])
        assert test_rows and not test_rows & train_rows
        assert call["labels"] == [labeled[i].label for i in sorted(train_rows)]
        assert torch.equal(call["unlabeled"], pool_features)  # the project's pool, and nothing else
        assert not rows_of(features, call["unlabeled"])
        tested |= test_rows
    assert tested == set(report.test_indices)


@pytest.mark.parametrize("protocol", ["loo", "kfold", "holdout"])
def test_image_fits_get_the_pool_without_labels_and_never_a_test_image(protocol, with_pool, tiny_backbone):
    SpyOnImages.calls.clear()
    evaluate(SpyOnImages(), with_pool, tiny_backbone, protocol=protocol, folds=3)
    pool_shas = {r.sha256 for r in with_pool.unlabeled().records}
    for call in SpyOnImages.calls:
        support = {r.sha256 for r in call["support"]}
        tests = {r.sha256 for r in call["test"]}
        assert not support & tests and not tests & {r.sha256 for r in call["unlabeled"]}
        assert {r.sha256 for r in call["unlabeled"]} == pool_shas
        assert all(r.label is None for r in call["unlabeled"] + call["test"])
        assert all(r.label is not None for r in call["support"])


def test_an_explicit_pool_replaces_the_images_own(with_pool, digits_set, tiny_backbone):
    SpyOnImages.calls.clear()
    evaluate(SpyOnImages(), digits_set, tiny_backbone, protocol="holdout", unlabeled=with_pool.unlabeled())
    assert len(SpyOnImages.calls[0]["unlabeled"]) == 4


def test_transductive_episodes_pass_the_queries_and_the_extra_pool_without_labels(digits_set, tiny_backbone):
    SpyOnImages.calls.clear()
    evaluate_episodes(SpyOnImages(), digits_set, tiny_backbone, n_way=2, k_shot=1, n_query=2, episodes=3,
                      transductive=True, pool=2)
    labels = {r.sha256: r.label for r in digits_set.records}
    for call in SpyOnImages.calls:
        support = {r.sha256 for r in call["support"]}
        queries = [r.sha256 for r in call["test"]]
        unlabeled = [r.sha256 for r in call["unlabeled"]]
        assert unlabeled[:4] == queries and len(unlabeled) == 6  # the queries first, then 2 extra pool images
        assert not support & set(unlabeled)
        assert {labels[sha] for sha in unlabeled} <= {r.label for r in call["support"]}  # episode classes only
        assert all(r.label is None for r in call["unlabeled"] + call["test"])


def test_episodes_and_their_pools_do_not_depend_on_the_pool_settings(digits_set, tiny_backbone, recorded_episodes):
    def run(**pool_settings):
        recorded_episodes.clear()
        SpyOnImages.calls.clear()
        evaluate_episodes(SpyOnImages(), digits_set, tiny_backbone, n_way=2, k_shot=1, n_query=2, episodes=4,
                          seed=3, **pool_settings)
        return list(recorded_episodes), [[r.sha256 for r in c["unlabeled"]] for c in SpyOnImages.calls]

    plain, no_pool = run()
    with_pool, pools = run(pool=3, transductive=True)
    again, pools_again = run(pool=3, transductive=True)
    assert plain == with_pool == again and pools == pools_again
    assert all(p == [] for p in no_pool) and all(len(p) == 7 for p in pools)


def test_pool_outliers_come_from_classes_outside_the_episode():
    y = np.repeat(np.arange(6), 30)
    rng = np.random.default_rng(0)
    exclude = np.array([0, 1, 30, 31])
    pool = evaluation.sample_pool(y, np.array([0, 1]), exclude, 40, rng, outliers=0.25)
    assert len(pool) == 40 and len(set(pool)) == 40 and not set(pool) & set(exclude)
    assert (y[pool] >= 2).sum() == 10
    assert abs((y[pool] == 0).sum() - (y[pool] == 1).sum()) <= 1  # even without imbalance


def test_pool_imbalance_draws_dirichlet_shares_and_respects_what_is_left():
    y = np.repeat(np.arange(5), 40)
    spreads = [np.bincount(y[evaluation.sample_pool(y, np.arange(5), np.array([], dtype=int), 100,
                                                    np.random.default_rng(seed), imbalance=0.5)], minlength=5)
               for seed in range(20)]
    assert all(counts.sum() == 100 and counts.max() <= 40 for counts in spreads)
    assert np.mean([counts.max() - counts.min() for counts in spreads]) > 20  # far from even
    with pytest.raises(DataError, match="Lower --pool or --queries"):
        evaluation.sample_pool(y, np.arange(2), np.array([], dtype=int), 81, np.random.default_rng(0))


@pytest.mark.parametrize("settings, message", [
    ({"pool": 2, "pool_outliers": 1.5}, "fraction of the pool"),
    ({"pool_outliers": 0.3}, "add --pool N"),
    ({"pool": 2, "pool_imbalance": 0.0}, "must be > 0"),
    ({"pool": -1}, "0 or more"),
])
def test_bad_pool_settings_are_clear_errors(settings, message, digits_set, tiny_backbone):
    with pytest.raises(ValueError, match=message):
        evaluate_episodes(SpyOnImages(), digits_set, tiny_backbone, n_way=2, k_shot=1, n_query=1, episodes=1,
                          **settings)


def test_a_pool_the_data_cannot_supply_fails_before_extraction(digits_set, tiny_backbone, monkeypatch):
    monkeypatch.setattr(evaluation, "get_extractor", lambda *a, **k: pytest.fail("extracted before checking"))
    with pytest.raises(DataError, match="Lower --pool or --queries"):
        evaluate_episodes(create_strategy("protonet"), digits_set, tiny_backbone, n_way=2, k_shot=1, n_query=2,
                          episodes=1, pool=10)
    with pytest.raises(DataError, match="outlier pool images"):
        evaluate_episodes(create_strategy("protonet"), digits_set, tiny_backbone, n_way=2, k_shot=1, n_query=2,
                          episodes=1, pool=10, pool_outliers=0.9)


def test_query_images_come_from_the_second_set(digits_set, tiny_backbone, tmp_path):
    other = ImageSet.from_folder(make_digits_folder(tmp_path / "shifted", per_class=5, offset=30))
    SpyOnImages.calls.clear()
    evaluate_episodes(SpyOnImages(), digits_set, tiny_backbone, n_way=2, k_shot=2, n_query=2, episodes=2,
                      transductive=True, pool=1, query_images=other)
    source, target = set(digits_set.shas), set(other.shas)
    for call in SpyOnImages.calls:
        assert {r.sha256 for r in call["support"]} <= source
        assert {r.sha256 for r in call["test"]} | {r.sha256 for r in call["unlabeled"]} <= target
    mismatched = ImageSet(r for r in other.records if r.label != "digit_2")
    with pytest.raises(DataError, match="same class folders"):
        evaluate_episodes(SpyOnImages(), digits_set, tiny_backbone, n_way=2, k_shot=1, n_query=1, episodes=1,
                          query_images=mismatched)


def test_transductive_episodes_run_a_pool_strategy_on_features(digits_set, tiny_backbone):
    report = evaluate_episodes(create_strategy("bdcspn"), digits_set, tiny_backbone, n_way=3, k_shot=1, n_query=3,
                               episodes=3, transductive=True, pool=3, pool_imbalance=2.0)
    assert len(report.accuracies) == 3 and 0 <= report.mean_accuracy <= 100
