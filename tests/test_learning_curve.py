"""How many more images do I need (fsl_app.learning_curve): the power-law fit, the measured curve on real digits, the
forecast from images and from a run, what `fsl-app train --json` reports, and clear messages for too little data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsl_app import learning_curve
from fsl_app.cli import main as cli_main
from fsl_app.strategies import create_strategy

from conftest import make_digits_folder


def test_fit_recovers_a_known_power_law():
    shots = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    curve = learning_curve.fit_power_law(shots, 1 - 0.5 * shots ** -0.6)
    assert curve["a"] == 1.0 and curve["b"] == pytest.approx(0.5, abs=0.02)
    assert curve["c"] == pytest.approx(0.6, abs=0.05)


def test_a_falling_curve_is_fitted_flat_not_upside_down():
    curve = learning_curve.fit_power_law(np.array([1.0, 2.0, 3.0]), np.array([0.9, 0.8, 0.7]))
    assert curve["b"] >= 0.0
    assert learning_curve.power_law(np.array([10.0]), **curve)[0] <= 1.0


def test_shot_levels_keep_the_small_shots_and_the_largest():
    assert learning_curve.shot_levels(4) == [1, 2, 3]
    many = learning_curve.shot_levels(40)
    assert many[:3] == [1, 2, 3] and many[-1] == 39 and len(many) <= learning_curve.MAX_LEVELS + 3


@pytest.mark.parametrize("counts, found", [({"a": 9}, "found 1 class,"),
                                           ({"a": 1, "b": 1}, "the smallest with 1 image)"),
                                           ({"a": 3, "b": 8}, "the smallest with 3 images")])
def test_too_little_data_says_what_is_needed(counts, found):
    message = learning_curve.forecast_problem(counts)
    assert "Forecasting needs at least 2 classes with at least 4 labeled images each" in message and found in message
    labels = [name for name, count in counts.items() for _ in range(count)]
    forecast = learning_curve.learning_curve(create_strategy("protonet"), torch.zeros(len(labels), 4), labels)
    assert not forecast.available and forecast.message == message


def test_digits_forecast_rises_within_its_range_and_near_the_truth():
    """sklearn digits pixels as features: forecast 10-shot accuracy of protonet from 5 per class, check against
    training on 10 per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32)
    y = np.array([str(t) for t in digits.target])
    rng = np.random.default_rng(0)
    order = {name: rng.permutation(np.flatnonzero(y == name)) for name in sorted(set(y))}
    project = np.concatenate([members[:5] for members in order.values()])
    forecast = learning_curve.learning_curve(create_strategy("protonet"), x[project], y[project].tolist(), more=(5,))
    assert forecast.available and forecast.shots_now == 5 and [p.shots for p in forecast.points] == [1, 2, 3, 4]
    [ten] = forecast.predictions
    assert ten.shots == 10 and ten.low <= ten.accuracy <= ten.high and ten.accuracy > forecast.now.accuracy
    train = np.concatenate([members[:10] for members in order.values()])
    test = np.setdiff1d(np.arange(len(y)), train)
    truth = np.mean(np.array(create_strategy("protonet").fit_features(x[train], y[train].tolist())
                             .predict(x[test])) == y[test])
    assert abs(ten.accuracy - truth) < 0.1, (ten, truth)
    assert "with 5 more per class (10): about" in forecast.message


def test_strategies_that_train_the_backbone_are_forecast_with_the_linear_probe(digits_set, tiny_backbone):
    forecast = learning_curve.forecast_images(digits_set, create_strategy("finetune"), tiny_backbone)
    assert forecast.available and forecast.strategy == "linear" and "trains the backbone" in forecast.note
    assert json.loads(json.dumps(forecast.to_dict()))["predictions"][0]["more_per_class"] == 5


def test_train_json_carries_the_forecast_and_says_when_it_cannot(tmp_path, capsys):
    data = make_digits_folder(tmp_path / "data", classes=(0, 1), per_class=5)
    base = ["train", "--strategy", "protonet", "--backbone", "test_efficientnet", "--weights", "random", "--json"]
    assert cli_main([base[0], str(data), *base[1:], "--out", str(tmp_path / "run")]) == 0
    forecast = json.loads(capsys.readouterr().out)["forecast"]
    assert forecast["available"] and forecast["shots_now"] == 5 and len(forecast["points"]) == 4
    assert {"accuracy", "low", "high", "shots", "more_per_class"} <= set(forecast["predictions"][0])
    small = make_digits_folder(tmp_path / "small", classes=(0, 1), per_class=2)
    assert cli_main([base[0], str(small), *base[1:], "--out", str(tmp_path / "run2")]) == 0
    forecast = json.loads(capsys.readouterr().out)["forecast"]
    assert not forecast["available"] and "needs at least 2 classes with at least 4" in forecast["message"]
