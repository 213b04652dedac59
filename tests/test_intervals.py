"""Confidence intervals that hold for small n and at 0 % and 100 % (fsl_app.intervals), and how they are shown."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from fsl_app.intervals import accuracy_interval, format_accuracy, mean_interval, wilson_interval

REPO_ROOT = Path(__file__).resolve().parents[1]


def normal_interval(successes: int, n: int) -> tuple[float, float]:
    """The textbook normal approximation the studio used to show: zero width at 0 % and 100 %."""
    p = successes / n
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    return max(0.0, p - half), min(1.0, p + half)


def coverage(interval, n: int, p: float) -> float:
    """Exact probability that ``interval(k, n)`` contains ``p`` when k ~ Binomial(n, p)."""
    covered = [interval(k, n)[0] <= p <= interval(k, n)[1] for k in range(n + 1)]
    return float(np.sum(binom.pmf(np.arange(n + 1), n, p) * covered))


def test_wilson_matches_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(24, 24) == pytest.approx((24 / (24 + 1.959964**2), 1.0), abs=1e-6)
    assert wilson_interval(0, 6) == pytest.approx((0.0, 0.3903), abs=1e-4)


def test_wilson_is_asymmetric_at_the_edges_and_never_zero_width():
    for n in range(1, 120):
        for successes in (0, n):
            low, high = wilson_interval(successes, n)
            assert 0.0 <= low < high <= 1.0
    low, high = wilson_interval(6, 6)
    assert high == 1.0 and low < 0.7  # 6 tested images say little


def test_wilson_holds_its_confidence_where_the_normal_approximation_does_not():
    grid = np.linspace(0.8, 0.99, 20)  # the accuracies few-shot runs actually report
    for n in (6, 24, 60):
        wilson = np.mean([coverage(wilson_interval, n, p) for p in grid])
        normal = np.mean([coverage(normal_interval, n, p) for p in grid])
        assert wilson >= 0.93, (n, wilson)
        assert normal < 0.90, (n, normal)


def test_wilson_narrows_with_more_images_and_respects_the_confidence():
    widths = [np.subtract(*wilson_interval(round(0.9 * n), n)[::-1]) for n in (10, 40, 160, 640)]
    assert widths == sorted(widths, reverse=True)
    narrow, wide = wilson_interval(18, 20, confidence=0.8), wilson_interval(18, 20, confidence=0.99)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


@pytest.mark.parametrize(("successes", "n"), [(-1, 5), (6, 5), (1, -1)])
def test_wilson_refuses_impossible_counts(successes, n):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(successes, n)


def test_no_tested_images_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert accuracy_interval(float("nan"), 0) == (0.0, 1.0)


def test_mean_interval_is_never_zero_width_from_few_images():
    """5 folds all at 100 % on 50 images: the spread of the fold means is 0, the pooled count still says ~93 %."""
    low, high = mean_interval([1.0] * 5, successes=50, n=50)
    assert high == 1.0 and low == pytest.approx(wilson_interval(50, 50)[0])
    assert low < 0.95


def test_mean_interval_widens_to_the_spread_of_the_splits():
    splits = [0.5, 1.0, 0.6, 0.9, 0.7]
    low, high = mean_interval(splits, successes=70, n=100)
    pooled_low, pooled_high = wilson_interval(70, 100)
    assert low < pooled_low and high > pooled_high  # the folds disagree more than the pooled count suggests
    t = 2.776  # t quantile, 4 degrees of freedom
    half = t * np.std(splits, ddof=1) / math.sqrt(5)
    assert low == pytest.approx(np.mean(splits) - half, abs=1e-3)


def test_accuracy_interval_uses_the_splits_only_when_there_are_several():
    assert accuracy_interval(0.75, 8) == wilson_interval(6, 8)
    assert accuracy_interval(0.75, 8, [0.75]) == wilson_interval(6, 8)
    assert accuracy_interval(0.7, 100, [0.5, 1.0, 0.6, 0.9, 0.7]) == mean_interval([0.5, 1.0, 0.6, 0.9, 0.7], 70, 100)


def test_format_accuracy_shows_the_asymmetric_interval_and_n():
    low, high = wilson_interval(24, 24)
    assert format_accuracy({"accuracy": 1.0, "ci_low": low, "ci_high": high, "n_test": 24}) == \
        "100.0 % (86.2-100.0, n=24)"
    assert format_accuracy({"accuracy": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n_test": 10}) == \
        "50.0 % (25.0-75.0, n=10)"


def test_format_accuracy_of_an_old_run_without_an_interval_computes_one():
    """metrics.json written before ci_low/ci_high: the interval comes from accuracy and n_test, not ci95 = 0."""
    assert format_accuracy({"accuracy": 1.0, "ci95": 0.0, "n_test": 6}) == "100.0 % (61.0-100.0, n=6)"


def test_format_accuracy_of_episodes_and_of_nothing():
    episodes = {"mean_accuracy": 80.0, "ci95": 1.0, "accuracy": 0.8, "ci_low": 0.79, "ci_high": 0.81,
                "n_test": 4500, "episodes": 60}
    assert format_accuracy(episodes) == "80.0 % (79.0-81.0, n=4500)"
    assert format_accuracy({"accuracy": None}) == "n/a (nothing tested)"
    assert format_accuracy({"accuracy": 0.0, "n_test": 0}) == "n/a (nothing tested)"


def test_intervals_module_does_not_import_torch():
    code = "import sys, fsl_app.intervals; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
