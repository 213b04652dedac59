"""The "none of these" threshold on the top probability: parsing ``--threshold`` and choosing it automatically."""

from __future__ import annotations

import math

from .formats import THRESHOLD_KEEP


def choose_threshold(predictions: list[dict], keep: float = THRESHOLD_KEEP) -> float:
    """The highest max-probability threshold that accepts at least ``keep`` of the correct held-out predictions.

    ``predictions`` is a run's ``predictions.json`` (one dict per held-out image with ``true``, ``predicted`` and
    ``probabilities``). The result is floored to 4 decimals so every accepted image stays accepted.
    """
    confidences = sorted(max(item["probabilities"].values()) for item in predictions
                         if item["true"] == item["predicted"])
    if not confidences:
        raise ValueError("--threshold auto needs correct held-out predictions and the run has none. Pass "
                         "--threshold FLOAT (e.g. 0.5) or --threshold none.")
    must_accept = math.ceil(keep * len(confidences) - 1e-9)
    return math.floor(confidences[len(confidences) - must_accept] * 1e4) / 1e4


def parse_threshold(value: str | float | None) -> str | float | None:
    """``"auto"``, None (``"none"``) or a probability in [0, 1]; raise ValueError with the accepted forms."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"--threshold {value!r} must be auto, none or a probability between 0 and 1 (e.g. 0.6).")
    return number


def threshold_rule(threshold: float | None, automatic: bool, predictions: list[dict]) -> str:
    """One sentence for the metadata and the model card: how the threshold was chosen and what it does."""
    if threshold is None:
        return "none: the top class is always reported"
    if not automatic:
        return "fixed by the user: images whose top probability is below it are reported as 'unknown'"
    correct = sum(item["true"] == item["predicted"] for item in predictions)
    return (f"auto: the highest threshold that accepts at least {THRESHOLD_KEEP:.0%} of the {correct} correctly "
            "classified held-out images; images whose top probability is below it are reported as 'unknown'")


def parse_ood_limit(value: str | float | None) -> float | None:
    """``--ood``: ``"auto"`` (1.0: the 95th percentile of the run's out-of-fold reconstruction errors), None
    (``"none"``: the score is reported, never used to reject) or a positive limit on the OOD score."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return 1.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0.0 or math.isinf(number):
        raise ValueError(f"--ood {value!r} must be auto, none or a positive limit on the OOD score (e.g. 1.5; 1.0 is "
                         "the 95th percentile of the run's own images).")
    return number


def ood_rule(limit: float | None, quantile: float | None) -> str:
    """One sentence for the metadata and the model card: what the autoencoder's OOD score does."""
    share = f"{quantile:.0%}" if isinstance(quantile, (int, float)) else "95%"
    scale = (f"its reconstruction error divided by the {share} quantile of the errors of the run's labeled images "
             "(measured out of fold), so 1.0 is as unfamiliar as the least familiar of the run's own images")
    if limit is None:
        return f"reported only: {scale}; never used to reject (export with --ood auto to use it)"
    return f"images whose OOD score (={scale}) is above {limit:g} are reported as 'unknown'"


def is_unknown(probability: float, ood_score: float | None, threshold: float | None, ood_limit: float | None) -> bool:
    """The export rule: 'unknown' when the top probability is below ``threshold`` or the OOD score above
    ``ood_limit`` (each rule only when set)."""
    if threshold is not None and probability < threshold:
        return True
    return ood_limit is not None and ood_score is not None and ood_score > ood_limit
