"""Domain shift: the MMD two-sample test, the furthest-image ranking and the centring / CORAL alignment."""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
import torch

from fsl_app.dataset import DataError
from fsl_app.shift import (AlignmentModule, DomainStatistics, _ledoit_wolf, detect_shift, fit_alignment,
                           rank_furthest)


def gaussian(rows: int, dims: int, seed: int, *, shift: float = 0.0, scales: torch.Tensor | None = None):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(rows, dims, generator=generator, dtype=torch.float64)
    return (sample * (scales if scales is not None else 1.0) + shift).float()


@pytest.fixture(scope="module")
def digit_pixels() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1797 real 8 x 8 digits as 64-d vectors (levels 0..16), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.from_numpy(digits.data).float(), digits.target


def test_same_distribution_is_rarely_flagged():
    reports = [detect_shift(gaussian(60, 32, 2 * seed), gaussian(90, 32, 2 * seed + 1), seed=seed,
                            permutations=200) for seed in range(20)]
    assert sum(r.shifted for r in reports) <= 3  # a level-0.05 test: about 1 in 20 by chance
    assert np.median([r.p_value for r in reports]) > 0.2
    assert all(r.verdict.startswith("no measurable shift") for r in reports if not r.shifted)


def test_mean_shift_is_flagged_with_an_effect_size():
    same = detect_shift(gaussian(100, 32, 0), gaussian(100, 32, 1), permutations=200)
    shifted = detect_shift(gaussian(100, 32, 0), gaussian(100, 32, 1, shift=0.5), permutations=200)
    assert shifted.shifted and shifted.p_value == pytest.approx(1 / 201)
    assert shifted.verdict.startswith("shift detected (p=0.00498")
    assert shifted.mmd > 0.1 > same.mmd


def test_real_digits_random_halves_pass_and_inverted_digits_are_flagged(digit_pixels):
    pixels, _ = digit_pixels
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    reference, target = pixels[order[:300]], pixels[order[300:900]]
    assert not detect_shift(reference, target, permutations=200).shifted
    inverted = detect_shift(reference, 16 - target, permutations=200)
    assert inverted.shifted and inverted.p_value < 0.01


def test_furthest_ranking_finds_planted_outliers():
    target = gaussian(1000, 16, 1)
    planted = [3, 250, 511, 777, 998]
    target[planted] += 8.0
    report = detect_shift(gaussian(200, 16, 0), target, permutations=50, n_furthest=5)
    assert sorted(report.furthest) == planted
    assert min(report.furthest_scores) > 2.0  # far beyond the reference's own neighbour distances
    indices, scores = rank_furthest(gaussian(200, 16, 0), target[:100], count=3)
    assert indices[0] == 3 and scores == sorted(scores, reverse=True)


def test_a_100k_target_stays_bounded_in_memory_and_time():
    target = gaussian(100_000, 64, 1)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    report = detect_shift(gaussian(200, 64, 0), target, permutations=100, max_points=300)
    seconds = time.perf_counter() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert report.n_target == 100_000 and report.n_target_tested == 300
    assert len(report.furthest) == 10 and max(report.furthest) < 100_000
    assert grown_mib < 400  # a dense 100k x 100k matrix would need 40 GB
    assert seconds < 15


def test_report_serializes_to_json():
    report = detect_shift(gaussian(20, 8, 0), gaussian(30, 8, 1), permutations=20)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) >= {"shifted", "verdict", "p_value", "mmd", "furthest", "furthest_scores", "n_target"}


def test_coral_makes_the_target_covariance_match_the_source():
    source = gaussian(800, 8, 0, scales=torch.linspace(0.2, 3.0, 8, dtype=torch.float64)) @ \
        torch.tensor(np.random.default_rng(0).normal(size=(8, 8))).float() + 2.0
    target = gaussian(600, 8, 1, scales=torch.linspace(4.0, 0.5, 8, dtype=torch.float64)) - 1.0
    aligned = fit_alignment(source, target, method="coral", shrinkage=0.0).apply(target).double()
    source_cov = torch.cov(source.double().T, correction=0)
    assert torch.allclose(torch.cov(aligned.T, correction=0), source_cov, atol=1e-3 * float(source_cov.abs().max()))
    assert torch.allclose(aligned.mean(0), source.double().mean(0), atol=1e-4)


def test_coral_fit_on_far_fewer_images_than_dimensions_matches_the_spread_of_new_target_images():
    scales = torch.linspace(0.1, 2.0, 512, dtype=torch.float64)
    source, target = gaussian(20, 512, 0, scales=scales), gaussian(20, 512, 1, scales=3 * scales) + 0.5
    new_source, new_target = gaussian(2000, 512, 2, scales=scales), gaussian(2000, 512, 3, scales=3 * scales) + 0.5
    alignment = fit_alignment(source, target, method="coral")
    assert 0 < alignment.shrinkage_target <= 1 and torch.isfinite(alignment.matrix).all()
    spread = lambda x: float(x.double().var(dim=0).sum())  # noqa: E731
    assert spread(new_target) / spread(new_source) > 5
    assert spread(alignment.apply(new_target)) / spread(new_source) == pytest.approx(1.0, rel=0.3)
    assert spread(alignment.apply(target)) < spread(source)  # the pool itself comes out squeezed (see shift.py)
    singular = torch.linalg.svdvals(alignment.matrix.double())
    assert float(singular.max() / singular.min()) < 100  # shrinkage keeps the map well conditioned


def test_centering_moves_the_target_mean_onto_the_source_mean():
    source, target = gaussian(30, 16, 0, shift=3.0), gaussian(40, 16, 1, shift=-2.0)
    alignment = fit_alignment(source, target, method="center")
    assert alignment.matrix.numel() == 0
    assert torch.allclose(alignment.apply(target).mean(0), source.mean(0), atol=1e-5)
    assert torch.allclose(alignment.apply(target) - target, (source.mean(0) - target.mean(0)).expand_as(target),
                          atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # export's TorchScript format still traces
@pytest.mark.parametrize("method", ["none", "center", "coral"])
def test_the_module_and_apply_compute_the_documented_affine_map(method):
    source, target = gaussian(30, 16, 0, shift=1.0), gaussian(40, 16, 1)
    alignment = fit_alignment(source, target, method=method)
    module = alignment.to_module()
    assert isinstance(module, AlignmentModule)
    queries = gaussian(7, 16, 2)
    matrix = alignment.matrix.double() if alignment.matrix.numel() else torch.eye(16, dtype=torch.float64)
    expected = ((queries.double() - alignment.target_mean.double()) @ matrix + alignment.source_mean.double()).float()
    with torch.no_grad():
        assert torch.allclose(module(queries), expected, atol=1e-5)
        assert torch.allclose(alignment.apply(queries), expected, atol=1e-5)
        traced = torch.jit.trace(module, queries)
        assert torch.allclose(traced(queries), expected, atol=1e-5)
    assert set(module.state_dict()) == {"target_mean", "matrix", "source_mean"}


def test_the_coral_matrix_is_the_inverse_root_of_the_target_covariance_times_the_root_of_the_source_one():
    source = gaussian(30, 12, 0, scales=torch.linspace(0.5, 2.0, 12, dtype=torch.float64))
    target = gaussian(50, 12, 1, scales=torch.linspace(3.0, 0.2, 12, dtype=torch.float64))

    def shrunk_power(features, power, shrinkage=0.3):
        covariance = torch.cov(features.double().T, correction=0)
        shrunk = (1 - shrinkage) * covariance + shrinkage * covariance.trace() / 12 * torch.eye(12, dtype=torch.float64)
        values, vectors = torch.linalg.eigh(shrunk)
        return vectors @ torch.diag(values.pow(power)) @ vectors.T

    expected = shrunk_power(target, -0.5) @ shrunk_power(source, 0.5)
    alignment = fit_alignment(source, target, method="coral", shrinkage=0.3)
    assert torch.allclose(alignment.matrix.double(), expected, atol=1e-5)


def test_precomputed_domain_statistics_give_the_same_alignment():
    source, target = gaussian(25, 64, 0), gaussian(300, 64, 1, shift=0.3)
    statistics = DomainStatistics.of(target)
    direct = fit_alignment(source, target, method="coral")
    reused = fit_alignment(source, statistics, method="coral")
    assert torch.allclose(direct.matrix, reused.matrix, atol=1e-5)
    again = fit_alignment(source, statistics, method="coral")  # the whitening kept on the statistics is reused
    assert len(statistics._dense) == 1 and torch.allclose(again.matrix, direct.matrix, atol=1e-5)


def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf_shrinkage

    features = gaussian(30, 100, 0, scales=torch.linspace(0.1, 3.0, 100, dtype=torch.float64)).double()
    assert _ledoit_wolf(features - features.mean(0)) == pytest.approx(ledoit_wolf_shrinkage(features.numpy()))


@pytest.mark.parametrize("pool_size", [0, 1])
def test_a_pool_of_zero_or_one_image_gives_the_identity_with_a_message(pool_size):
    source = gaussian(20, 8, 0)
    alignment = fit_alignment(source, gaussian(pool_size, 8, 1), method="coral")
    assert alignment.method == "none" and "at least 2" in alignment.message
    assert torch.equal(alignment.apply(source), source)
    assert json.loads(json.dumps(alignment.to_dict()))["message"] == alignment.message


def test_a_labeled_set_of_one_image_gives_the_identity_with_a_message():
    alignment = fit_alignment(gaussian(1, 8, 0), gaussian(20, 8, 1), method="center")
    assert alignment.method == "none" and "Label more images" in alignment.message


def test_detection_needs_two_images_per_side():
    with pytest.raises(DataError, match="at least 2 images"):
        detect_shift(gaussian(20, 8, 0), gaussian(1, 8, 1))


def test_nan_features_are_refused_with_the_fix():
    poisoned = gaussian(20, 8, 1)
    poisoned[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite values in 1 image"):
        detect_shift(gaussian(20, 8, 0), poisoned)
    with pytest.raises(DataError, match="NaN"):
        fit_alignment(gaussian(20, 8, 0), poisoned, method="center")
    with pytest.raises(DataError, match="NaN"):
        fit_alignment(gaussian(20, 8, 0), gaussian(20, 8, 1)).apply(poisoned)


def test_other_bad_inputs_name_the_fix():
    with pytest.raises(DataError, match="same backbone"):
        detect_shift(gaussian(20, 8, 0), gaussian(20, 9, 1))
    with pytest.raises(DataError, match="same backbone"):
        fit_alignment(gaussian(20, 8, 0), gaussian(20, 9, 1))
    with pytest.raises(DataError, match="2-D"):
        detect_shift(torch.zeros(8), gaussian(20, 8, 1))
    with pytest.raises(ValueError, match="method must be one of"):
        fit_alignment(gaussian(20, 8, 0), gaussian(20, 8, 1), method="whiten")
    with pytest.raises(ValueError, match="shrinkage"):
        fit_alignment(gaussian(20, 8, 0), gaussian(20, 8, 1), shrinkage=1.5)


def test_constant_features_do_not_divide_by_zero():
    constant = torch.ones(10, 8)
    report = detect_shift(constant, constant.clone(), permutations=20)
    assert not report.shifted and report.mmd == 0.0
    alignment = fit_alignment(constant, gaussian(10, 8, 0), method="coral")
    assert alignment.method == "center" and "no spread" in alignment.message
