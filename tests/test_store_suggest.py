"""Model-assisted labeling with a tiny fake strategy: ranking, validation, accepting a suggestion."""

import math

import numpy as np
import pytest
import torch

from fsl_app.store import StoreError, suggest_for_project, suggest_labels

try:
    from tests.conftest_store import digit_files, home, project  # noqa: F401
except ModuleNotFoundError:
    from conftest_store import digit_files, home, project  # noqa: F401


class FakeStrategy:
    """Returns fixed probabilities, one row per image, in order."""

    def __init__(self, rows, classes=("cat", "dog", "fox")):
        self.classes_ = list(classes)
        self.rows = torch.tensor(rows, dtype=torch.float32)
        self.calls = 0

    def predict_proba(self, images):
        self.calls += 1
        return self.rows[: len(images)]


def test_ranked_most_uncertain_first(project):
    project.import_files(digit_files(4))
    images, ids = project.image_set_with_ids()
    strategy = FakeStrategy([[0.9, 0.05, 0.05],    # sure
                             [0.4, 0.35, 0.25],    # unsure: margin 0.05
                             [0.34, 0.33, 0.33],   # most unsure: margin 0.01
                             [0.6, 0.3, 0.1]])
    suggestions = suggest_labels(strategy, images, ids)
    assert [s.image_id for s in suggestions] == [ids[2], ids[1], ids[3], ids[0]]
    top = suggestions[0]
    assert top.label == "cat" and math.isclose(top.confidence, 0.34, abs_tol=1e-6)
    assert math.isclose(top.margin, 0.01, abs_tol=1e-6)
    assert math.isclose(top.entropy, -sum(p * math.log(p) for p in (0.34, 0.33, 0.33)), rel_tol=1e-5)
    assert suggestions[-1].label == "cat" and suggestions[-1].confidence == pytest.approx(0.9)


def test_equal_margins_break_ties_by_entropy(project):
    project.import_files(digit_files(2))
    images, ids = project.image_set_with_ids()
    strategy = FakeStrategy([[0.5, 0.5, 0.0], [0.4, 0.4, 0.2]])
    assert [s.image_id for s in suggest_labels(strategy, images, ids)] == [ids[1], ids[0]]


def test_top_limits_results(project):
    project.import_files(digit_files(3))
    images, ids = project.image_set_with_ids()
    strategy = FakeStrategy([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.7, 0.3, 0.0]])
    assert len(suggest_labels(strategy, images, ids, top=2)) == 2


def test_numpy_probabilities_and_single_class(project):
    project.import_files(digit_files(1))
    images, ids = project.image_set_with_ids()

    class OneClass:
        classes_ = ["only"]

        def predict_proba(self, images):
            return np.ones((len(images), 1))

    [suggestion] = suggest_labels(OneClass(), images, ids)
    assert (suggestion.label, suggestion.margin, suggestion.entropy) == ("only", 1.0, 0.0)


def test_unfitted_strategy_is_a_clear_error(project):
    project.import_files(digit_files(1))
    images, ids = project.image_set_with_ids()

    class NotFitted:
        def predict_proba(self, images):
            raise AssertionError("must not be called")

    with pytest.raises(StoreError, match="not fitted"):
        suggest_labels(NotFitted(), images, ids)


def test_wrong_shape_is_refused(project):
    project.import_files(digit_files(2))
    images, ids = project.image_set_with_ids()
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        suggest_labels(FakeStrategy([[1.0, 0.0]], classes=["a", "b", "c"]), images, ids)


def test_rows_not_summing_to_one_are_refused(project):
    project.import_files(digit_files(1))
    images, ids = project.image_set_with_ids()
    with pytest.raises(ValueError, match="sum to 1"):
        suggest_labels(FakeStrategy([[3.0, 1.0, 0.0]]), images, ids)


def test_ids_must_match_images(project):
    project.import_files(digit_files(2))
    images, ids = project.image_set_with_ids()
    with pytest.raises(ValueError, match="one id per image"):
        suggest_labels(FakeStrategy([[1, 0, 0]]), images, ids[:1])


def test_empty_input_does_not_call_the_model(project):
    images, ids = project.image_set_with_ids()
    strategy = FakeStrategy([[1, 0, 0]])
    assert suggest_labels(strategy, images, ids) == [] and strategy.calls == 0


def test_suggest_for_project_covers_unlabeled_and_accepting_is_set_labels(project):
    project.import_files(digit_files(2), label="cat")
    unlabeled = project.import_files(digit_files(2, start=2)).added_ids
    strategy = FakeStrategy([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    suggestions = suggest_for_project(project, strategy)
    assert sorted(s.image_id for s in suggestions) == unlabeled
    best = suggestions[0]
    project.set_labels([best.image_id], best.label, create_missing_class=True, actor="suggestion")
    assert project.get_image(best.image_id).label == best.label
    assert project.undo_last_label_change().n_images == 1
