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
