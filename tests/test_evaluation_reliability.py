"""Metrics that say what they did not measure: classes never tested (one image in leave-one-out), intervals that
hold at 0 % and 100 %, and the warning before training."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import make_digits_folder
from fsl_app.dataset import ImageSet, training_warnings
from fsl_app.evaluation import EpisodeReport, EvaluationReport, classification_metrics, evaluate
from fsl_app.intervals import mean_interval, wilson_interval
from fsl_app.strategies import create_strategy


@pytest.fixture(scope="module")
def one_image_class(tmp_path_factory) -> ImageSet:
    """3 digit classes of 6 images and a 4th class ('digit_3') with a single image."""
    root = make_digits_folder(tmp_path_factory.mktemp("single"))
    make_digits_folder(root, classes=(3,), per_class=1)
    return ImageSet.from_folder(root)


def test_metrics_name_the_untested_class_and_average_over_the_tested_ones():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])  # class 2 ('c') is predicted once but never tested
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw scikit-learn warning
        metrics = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert metrics["untested_classes"] == ["c"] and metrics["tested_classes_only"] is True
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 1.0}
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    # F1 over the tested classes a (2*1*0.5/1.5) and b (1.0); the untested class does not pull it to 0
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)


def test_metrics_of_fully_tested_classes_say_so():
    metrics = classification_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])
    assert metrics["untested_classes"] == [] and metrics["tested_classes_only"] is False


def test_leave_one_out_reports_a_single_image_class_as_untested(one_image_class, tiny_backbone, recwarn):
    report = evaluate(create_strategy("protonet"), one_image_class, tiny_backbone, protocol="loo")
    assert report.untested_classes == ["digit_3"] and report.tested_classes_only
    assert "digit_3" not in report.per_class_accuracy
    assert report.balanced_accuracy == pytest.approx(np.mean(list(report.per_class_accuracy.values())))
    summary = report.summary()
    assert summary["untested_classes"] == ["digit_3"] and summary["tested_classes_only"] is True
    assert not [w for w in recwarn if "sklearn" in str(w.filename) or "y_pred contains" in str(w.message)]


def test_training_warnings_name_classes_with_one_image(one_image_class, digits_set):
    warnings_ = training_warnings(one_image_class)
    assert len(warnings_) == 1 and "'digit_3'" in warnings_[0] and "never be tested" in warnings_[0]
    assert training_warnings(digits_set) == []


def test_cli_train_warns_before_training_and_prints_the_untested_class(one_image_class, tmp_path, capsys):
    from fsl_app.cli import main

    folder = one_image_class[0].path.parents[1]
    code = main(["train", str(folder), "--strategy", "protonet", "--backbone", "test_efficientnet", "--weights",
                 "random", "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0
    first_line = captured.err.splitlines()[0]
    assert first_line.startswith("warning:") and "'digit_3'" in first_line and "single image" in first_line
    assert "never tested" in captured.err and "(n=18" not in captured.out and ", n=18)" in captured.out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["untested_classes"] == ["digit_3"]
    assert 0 <= metrics["ci_low"] <= metrics["accuracy"] <= metrics["ci_high"] <= 1


# -- intervals in the reports -------------------------------------------------------------------------------------

def _report(**overrides) -> EvaluationReport:
    values = dict(protocol="loo", classes=["a", "b"], accuracy=1.0, ci95=0.0, balanced_accuracy=1.0, macro_f1=1.0,
                  per_class_accuracy={"a": 1.0, "b": 1.0}, confusion=[[12, 0], [0, 12]], n_test=24)
    return EvaluationReport(**{**values, **overrides})


def test_a_perfect_leave_one_out_run_reports_a_real_interval():
    report = _report()
    assert (report.ci_low, report.ci_high) == pytest.approx(wilson_interval(24, 24))
    assert report.ci_low < 0.87 and report.ci_high == 1.0
    assert report.summary()["ci_low"] == report.ci_low and report.ci95 == 0.0  # ci95 kept as it was


def test_kfold_interval_covers_the_folds_and_the_pooled_count():
    report = _report(protocol="kfold", accuracy=0.7, n_test=100, split_accuracies=[0.5, 1.0, 0.6, 0.9, 0.7])
    assert (report.ci_low, report.ci_high) == pytest.approx(mean_interval([0.5, 1.0, 0.6, 0.9, 0.7], 70, 100))
    perfect = _report(protocol="kfold", n_test=50, split_accuracies=[1.0] * 5)
    assert perfect.ci_low == pytest.approx(wilson_interval(50, 50)[0]) and perfect.ci_low < perfect.ci_high


def test_reports_round_trip_through_their_dicts():
    report = _report(protocol="holdout", accuracy=5 / 6, n_test=6)
    assert EvaluationReport(**report.to_dict()) == report
    episodes = EpisodeReport(n_way=2, k_shot=1, n_query=3, episodes=4, mean_accuracy=100.0, ci95=0.0,
                             accuracies=[1.0] * 4)
    assert EpisodeReport(**episodes.to_dict()) == episodes


def test_episode_report_has_an_interval_in_fractions():
    report = EpisodeReport(n_way=2, k_shot=1, n_query=3, episodes=4, mean_accuracy=100.0, ci95=0.0,
                           accuracies=[1.0] * 4)
    assert report.accuracy == 1.0 and report.n_test == 24
    assert (report.ci_low, report.ci_high) == pytest.approx(wilson_interval(24, 24))
