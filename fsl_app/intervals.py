"""Confidence intervals for accuracies that hold for a handful of test images, and the one way to show them.

The normal approximation (accuracy ± 1.96·sqrt(p(1-p)/n)) has zero width at 0 % and 100 %: six correct answers out
of six would read "100 % ± 0". The Wilson score interval stays inside [0, 1], is asymmetric near the edges and keeps
close to its nominal coverage for small n (Brown, Cai & DasGupta 2001, "Interval Estimation for a Binomial
Proportion"). For k-fold and episodes, the interval of the mean over splits is widened to at least the Wilson
interval of the pooled count, so identical split scores never collapse it either.

Torch-free: the fronts and the model card import it directly.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Mapping, Sequence

Interval = tuple[float, float]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval ``(low, high)`` (fractions) for ``successes`` correct out of ``n``; (0, 1) for n = 0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"successes must be between 0 and n, got successes={successes}, n={n}.")
    if n == 0:
        return 0.0, 1.0
    z = _normal_quantile(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(split_accuracies: Sequence[float], successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Interval of the mean accuracy over splits (folds, episodes): the hull of the t-interval of the split means
    and the Wilson interval of the pooled ``successes`` out of ``n``.

    The t-interval alone has zero width when every split scores the same; the Wilson interval alone ignores how much
    the splits disagree.
    """
    pooled = wilson_interval(successes, n, confidence)
    values = [float(value) for value in split_accuracies]
    if len(values) < 2:
        return pooled
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))
    half = _t_quantile(confidence, len(values) - 1) * spread / math.sqrt(len(values))
    return max(0.0, min(pooled[0], mean - half)), min(1.0, max(pooled[1], mean + half))


def accuracy_interval(accuracy: float, n: int, split_accuracies: Sequence[float] = (),
                      confidence: float = 0.95) -> Interval:
    """The interval to report for ``accuracy`` measured on ``n`` test images: Wilson for one pooled count (one
    hold-out split, leave-one-out), :func:`mean_interval` when several split scores are given."""
    if not n or accuracy != accuracy:  # nothing tested (NaN accuracy)
        return 0.0, 1.0
    successes = min(n, max(0, round(accuracy * n)))
    if len(split_accuracies) > 1:
        return mean_interval(split_accuracies, successes, n, confidence)
    return wilson_interval(successes, n, confidence)


def format_accuracy(metrics: Mapping[str, Any] | Any) -> str:
    """``"100.0 % (86.2-100.0, n=24)"``: accuracy and its 95 % interval in percent, from a metrics mapping (a run's
    metrics.json, ``EvaluationReport.summary()``, the CLI's JSON) or a report object.

    Metrics written before ``ci_low``/``ci_high`` existed get the Wilson interval from ``accuracy`` and ``n_test``.
    """
    value, interval = accuracy_parts(metrics)
    return f"{value} ({interval})" if interval else value


def accuracy_parts(metrics: Mapping[str, Any] | Any) -> tuple[str, str]:
    """``("100.0 %", "86.2-100.0, n=24")``: :func:`format_accuracy` in two parts, for a metric and its caption;
    the interval part is empty when there is none."""
    get = metrics.get if isinstance(metrics, Mapping) else lambda key: getattr(metrics, key, None)
    accuracy, n = get("accuracy"), get("n_test")
    if accuracy is None and get("mean_accuracy") is not None:  # an episode report from before ``accuracy``
        accuracy = get("mean_accuracy") / 100
    if accuracy is None or accuracy != accuracy or n == 0:
        return "n/a (nothing tested)", ""
    low, high = get("ci_low"), get("ci_high")
    if low is None or high is None:
        low, high = accuracy_interval(accuracy, int(n)) if n else (None, None)
    interval = f"{100 * low:.1f}-{100 * high:.1f}, n={n}" if low is not None else ""
    return f"{100 * accuracy:.1f} %", interval


def _normal_quantile(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _t_quantile(confidence: float, degrees_of_freedom: int) -> float:
    """Student's t quantile (scipy, installed with scikit-learn); the normal quantile where scipy is missing."""
    try:
        from scipy.stats import t
    except ImportError:
        return _normal_quantile(confidence)
    return float(t.ppf(0.5 + confidence / 2, degrees_of_freedom))
