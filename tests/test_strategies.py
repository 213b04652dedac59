"""The Strategy contract, checked for every registered strategy and a few settings of each (sklearn test_common.py
style): fit/predict_proba/embed/to_module/save/load/clone behave the same way for all of them.

The tiny random backbone makes accuracy meaningless, so the contract tests check shapes, probabilities, equality
between code paths and error messages; tests/test_accuracy.py checks accuracy with the real default backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from conftest import make_digits_folder
from fsl_app.dataset import DataError, ImageRecord, ImageSet
from fsl_app.features import images_to_batch
from fsl_app.strategies import (FeatureStrategy, NotFittedError, ParamSpec, StepLog, Strategy, create_strategy,
                                get_strategy_class, list_strategies, load_strategy, register_strategy)

# Settings per strategy; a strategy not listed here is tested with its defaults, so a new one is covered at once.
SETTINGS_BY_STRATEGY = {
    "linear": [{"classifier": c, "normalize": n} for c in ("logreg", "svm", "rbf") for n in ("cl2n", "l2", "none")],
    "protonet": [{"distance": "euclidean"}, {"distance": "cosine"}, {"distance": "cosine", "normalize": "none"},
                 {"finetune_episodes": 2}],
    "finetune": [{"mode": mode, "epochs": 2} for mode in ("head", "last_n", "full")],
    "bdcspn": [{}, {"laplacian": 0.0, "outliers": "off"}],
    "alpha_tim": [{}, {"alpha": 1.0, "iterations": 5}],
    "selftrain": [{}, {"rounds": 2, "outliers": "off"}],
    "maml": [{"meta_episodes": 3}, {"variant": "fomaml", "meta_episodes": 3},
             {"adapt": "last_block", "meta_episodes": 2, "inner_steps": 2},
             {"adapt": "last_block", "variant": "fomaml", "meta_episodes": 2, "inner_steps": 2}],
    "matchingnet": [{}, {"normalize": "l2"}, {"fce_steps": 2, "fce_episodes": 3}, {"finetune_episodes": 2},
                    {"finetune_episodes": 2, "fce_steps": 1, "fce_episodes": 2}],
}
# the cheapest parameters that still train, for tests that need one fit per strategy
FAST_PARAMS = {"finetune": {"mode": "head", "epochs": 1}, "protonet": {}, "linear": {}, "alpha_tim": {"iterations": 10},
               "maml": {"meta_episodes": 3}}

SETTINGS = [(name, params) for name in list_strategies() for params in SETTINGS_BY_STRATEGY.get(name, [{}])]


def setting_id(setting) -> str:
    name, params = setting
    return "-".join([name] + [f"{k}={v}" for k, v in params.items()])


def trains_iteratively(strategy: Strategy) -> int:
    """Number of StepLogs ``fit`` must report: epochs for fine-tuning, episodes for episodic ProtoNet, MAML's
    meta-training and Matching Networks' fine-tuning and full-context training."""
    params = strategy.get_params()
    fce = params.get("fce_episodes", 0) if params.get("fce_steps", 0) else 0
    return int(params.get("epochs", 0) or params.get("meta_episodes", 0)
               or params.get("finetune_episodes", 0) + fce)


@dataclass
class Fitted:
    strategy: Strategy
    returned: object
    steps: list = field(default_factory=list)
    query_proba: torch.Tensor | None = None  # predict_proba(query_set), computed once: fine-tuned models are slow


@pytest.fixture(scope="module")
def query_set(tmp_path_factory) -> ImageSet:
    """Unseen digits of the same 3 classes (one each: fine-tuned models run on images, so keep it small)."""
    return ImageSet.from_folder(make_digits_folder(tmp_path_factory.mktemp("query"), per_class=1, offset=6))


@pytest.fixture(scope="module")
def support_set(digits_set) -> ImageSet:
    """3 classes x 4 images (a subset of ``digits_set``, so frozen features are already cached)."""
    return digits_set.subset([i for i, label in enumerate(digits_set.labels)
                              if digits_set.labels[:i].count(label) < 4])


@pytest.fixture(scope="module", params=SETTINGS, ids=[setting_id(s) for s in SETTINGS])
def fitted(request, support_set, query_set, tiny_backbone) -> Fitted:
    name, params = request.param
    strategy = create_strategy(name, **params)
    steps: list = []
    returned = strategy.fit(support_set, backbone=tiny_backbone, on_step=steps.append)
    return Fitted(strategy, returned, steps, strategy.predict_proba(query_set))


def image_batch(images: ImageSet, backbone) -> torch.Tensor:
    return images_to_batch([images.load(i) for i in range(len(images))], backbone.data_config)


# --- the contract, per setting ----------------------------------------------------------------------------------

def test_every_registered_strategy_is_covered():
    assert {name for name, _ in SETTINGS} == set(list_strategies())
    assert {"linear", "protonet", "finetune", "bdcspn", "alpha_tim", "selftrain"} <= set(list_strategies())


def test_fit_returns_self_and_sets_classes(fitted, support_set):
    assert fitted.returned is fitted.strategy
    assert fitted.strategy.classes_ == support_set.classes == ["digit_0", "digit_1", "digit_2"]


def test_predict_proba_rows_are_probabilities(fitted, query_set):
    proba = fitted.query_proba
    assert proba.shape == (len(query_set), 3)
    assert torch.isfinite(proba).all() and (proba >= 0).all()
    assert torch.allclose(proba.sum(dim=1), torch.ones(len(query_set)), atol=1e-5)


def test_predict_proba_on_features_or_batch_equals_on_images(fitted, query_set, tiny_backbone):
    """The tensor input path: backbone features for feature strategies, a preprocessed batch for the others."""
    if isinstance(fitted.strategy, FeatureStrategy):  # features of its own (possibly episodically tuned) backbone
        from fsl_app.features import get_extractor

        tensor = get_extractor(fitted.strategy.backbone_, engine="torch").extract(query_set)
    else:
        tensor = image_batch(query_set, tiny_backbone)
    assert torch.allclose(fitted.strategy.predict_proba(tensor), fitted.query_proba, atol=1e-5)


def test_predict_gives_the_argmax_class_names(fitted, query_set):
    names = fitted.strategy.predict(query_set)
    assert names == [fitted.strategy.classes_[i] for i in fitted.query_proba.argmax(dim=1).tolist()]


def test_to_module_softmax_equals_predict_proba(fitted, query_set, tiny_backbone):
    module = fitted.strategy.to_module()
    assert isinstance(module, torch.nn.Module) and not module.training
    batch = image_batch(query_set, tiny_backbone)
    with torch.inference_mode():
        logits = module(batch)
    assert logits.shape == (len(query_set), 3)
    assert torch.allclose(torch.softmax(logits.float(), dim=1), fitted.query_proba, atol=1e-4)
    # the module is a copy: changing it leaves the fitted strategy alone
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    with torch.inference_mode():
        fresh = torch.softmax(fitted.strategy.to_module()(batch[:1]), dim=1)
    assert torch.allclose(fresh, fitted.query_proba[:1], atol=1e-4)


def test_save_load_round_trip_gives_identical_probabilities(fitted, query_set, tiny_backbone, tmp_path):
    fitted.strategy.save(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "model.json").is_file()
    loaded = load_strategy(tmp_path, tiny_backbone)
    assert type(loaded) is type(fitted.strategy)
    assert loaded.get_params() == fitted.strategy.get_params()
    assert loaded.classes_ == fitted.strategy.classes_
    assert torch.allclose(loaded.predict_proba(query_set), fitted.query_proba, atol=1e-6)


def test_get_params_round_trip_through_clone(fitted):
    strategy = fitted.strategy
    clone = strategy.clone()
    assert type(clone) is type(strategy) and clone is not strategy
    assert clone.get_params() == strategy.get_params()
    assert set(strategy.get_params()) == set(type(strategy).param_names())
    with pytest.raises(NotFittedError):
        clone.predict_proba(torch.zeros(1, 4))
    rebuilt = create_strategy(strategy.name, **strategy.get_params())
    assert rebuilt.get_params() == strategy.get_params()


def test_embed_gives_one_row_per_image(fitted, query_set, tiny_backbone):
    embedding = fitted.strategy.embed(query_set)
    assert embedding.ndim == 2 and embedding.shape[0] == len(query_set)
    assert torch.isfinite(embedding).all()


def test_on_step_reports_every_epoch(fitted):
    expected = trains_iteratively(fitted.strategy)
    assert all(isinstance(step, StepLog) for step in fitted.steps)
    if not expected:
        return
    assert [step.epoch for step in fitted.steps] == list(range(1, expected + 1))
    assert [step.step for step in fitted.steps] == sorted(step.step for step in fitted.steps)
    for step in fitted.steps:
        assert math.isfinite(step.loss) and step.loss > 0
        assert 0.0 <= step.train_acc <= 1.0
        assert set(step.to_dict()) == {"step", "epoch", "loss", "train_acc", "val_acc", "lr"}
    if fitted.strategy.name == "finetune":  # 4 images per class are too few to hold any out for validation
        assert all(step.val_acc is None for step in fitted.steps)


# --- the contract with an unlabeled pool ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool_set(digits_set, query_set) -> ImageSet:
    """Unlabeled images: the query digits and the support's last two of each class, labels removed."""
    labels = digits_set.labels
    extra = digits_set.subset([i for i, label in enumerate(labels) if labels[:i].count(label) >= 4])
    return ImageSet(ImageRecord(r.path, r.sha256, None) for r in list(query_set.records) + list(extra.records))


@pytest.mark.parametrize("name", list_strategies())
def test_fit_with_an_unlabeled_pool_keeps_the_contract(name, support_set, pool_set, query_set, tiny_backbone, tmp_path):
    """The pool shapes the fit; the fitted model predicts, exports and reloads without it."""
    params = FAST_PARAMS.get(name, {})
    with_pool = create_strategy(name, **params)
    assert with_pool.fit(support_set, backbone=tiny_backbone, unlabeled=pool_set) is with_pool
    proba = with_pool.predict_proba(query_set)
    assert proba.shape == (len(query_set), 3) and torch.allclose(proba.sum(1), torch.ones(len(query_set)), atol=1e-5)
    with torch.inference_mode():
        logits = with_pool.to_module()(image_batch(query_set, tiny_backbone))
    assert torch.allclose(torch.softmax(logits, 1), proba, atol=1e-4)
    with_pool.save(tmp_path)
    assert torch.allclose(load_strategy(tmp_path, tiny_backbone).predict_proba(query_set), proba, atol=1e-6)
    without = create_strategy(name, **params).fit(support_set, backbone=tiny_backbone)
    if not type(with_pool).uses_unlabeled:  # strategies that ignore the pool give the same model
        assert torch.allclose(without.predict_proba(query_set), proba, atol=1e-5)
    else:
        assert with_pool.pool_used_ > 0 and without.pool_used_ == 0


@pytest.mark.parametrize("name", [n for n in list_strategies()
                                  if isinstance(create_strategy(n), FeatureStrategy)])
def test_fit_features_with_and_without_unlabeled(name):
    x, labels = blobs(3, per_class=5, seed=11)
    pool, _ = blobs(3, per_class=20, seed=12)
    plain = create_strategy(name, **FAST_PARAMS.get(name, {})).fit_features(x, labels)
    pooled = create_strategy(name, **FAST_PARAMS.get(name, {})).fit_features(x, labels, unlabeled=pool)
    assert plain.classes_ == pooled.classes_ == ["class_0", "class_1", "class_2"]
    assert pooled.predict_proba(pool).shape == (60, 3)
    if not type(pooled).uses_unlabeled:
        assert torch.equal(plain.predict_proba(pool), pooled.predict_proba(pool))
    with pytest.raises(ValueError, match="backbone="):  # fitted on features alone: it cannot export images
        pooled.to_module()


@pytest.mark.parametrize("name", list_strategies())
def test_strategies_describe_themselves(name):
    cls = get_strategy_class(name)
    assert cls.summary and "\n" not in cls.summary and len(cls.summary) <= 120
    assert isinstance(cls.uses_unlabeled, bool)
    assert cls.uses_unlabeled or "ignores the pool" in cls.summary  # what the Train page shows beside the picker
    specs = cls.param_specs()
    assert [spec.name for spec in specs] == [n for n in cls.param_names() if n != "seed"]
    for spec in specs:
        assert isinstance(spec, ParamSpec) and spec.kind in ("choice", "bool", "int", "float", "augment", "text")
        assert spec.help, f"{name}.{spec.name} has no help text: add it to param_help"
        assert spec.default == cls.param_defaults()[spec.name]
        if spec.kind in ("choice", "augment"):
            assert spec.choices and (spec.kind == "augment" or spec.default in spec.choices)
        if spec.low is not None:
            assert spec.default >= spec.low
        if spec.high is not None:
            assert spec.default <= spec.high


def test_param_specs_carry_the_declared_choices_help_and_ranges():
    from fsl_app.augment import PRESETS

    specs = {spec.name: spec for spec in get_strategy_class("linear").param_specs()}
    assert specs["classifier"] == ParamSpec("classifier", "logreg", "choice", ("logreg", "svm", "rbf"),
                                            "logreg: logistic regression; svm: linear SVM; rbf: SVM with a Gaussian "
                                            "kernel", None, None)
    assert specs["calibrate"].kind == "bool" and specs["C"].kind == "float" and specs["C"].low > 0
    finetune = {spec.name: spec for spec in get_strategy_class("finetune").param_specs()}
    assert finetune["augment"].kind == "augment" and finetune["augment"].choices == tuple(PRESETS)
    assert finetune["epochs"].kind == "int" and "seed" not in finetune


@pytest.mark.parametrize("name, params, fragment", [
    ("selftrain", {"target_precision": 1.5}, "target_precision must lie in"),
    ("bdcspn", {"outliers": "maybe"}, "one of ('gate', 'off')"),
    ("alpha_tim", {"alpha": 0.5}, "alpha must lie in"),
])
def test_values_outside_the_declared_range_fail_at_fit(name, params, fragment):
    x, labels = blobs(2, per_class=4)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        create_strategy(name, **params).fit_features(x, labels)


def test_episodic_protonet_is_a_strategy_on_images_with_the_protonet_name(support_set, tiny_backbone, tmp_path):
    frozen, tuned = create_strategy("protonet"), create_strategy("protonet", finetune_episodes=2)
    assert isinstance(frozen, FeatureStrategy) and not isinstance(tuned, FeatureStrategy)
    assert tuned.name == "protonet" and tuned.get_params() == {**frozen.get_params(), "finetune_episodes": 2}
    assert type(tuned.clone()) is type(tuned)
    with pytest.raises(ValueError, match="create a new one"):  # set_params cannot change the type
        create_strategy("protonet").set_params(finetune_episodes=3).fit_features(torch.randn(4, 8), list("aabb"))
    tuned.fit(support_set, backbone=tiny_backbone)
    assert [role for role, _, _ in tuned.map_points()] == ["prototype"] * 3
    tuned.save(tmp_path)
    assert type(load_strategy(tmp_path, tiny_backbone)) is type(tuned)


def test_protonet_map_points_are_the_class_means_in_the_embedding_space(support_set, tiny_backbone):
    strategy = create_strategy("protonet").fit(support_set, backbone=tiny_backbone)
    embedded = strategy.embed(support_set)
    points = strategy.map_points()
    assert [(role, label) for role, label, _ in points] == [("prototype", c) for c in strategy.classes_]
    for role, label, vector in points:
        rows = [i for i, name in enumerate(support_set.labels) if name == label]
        assert torch.allclose(vector, embedded[rows].mean(0), atol=1e-5)
    assert create_strategy("linear").fit(support_set, backbone=tiny_backbone).map_points() == []


# --- the contract, per strategy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_strategies())
def test_predicting_before_fit_raises_not_fitted(name, query_set, tmp_path):
    strategy = create_strategy(name)
    calls = {"predict_proba": lambda: strategy.predict_proba(query_set),
             "predict": lambda: strategy.predict(query_set),
             "embed": lambda: strategy.embed(query_set),
             "to_module": strategy.to_module,
             "save": lambda: strategy.save(tmp_path)}
    for method, call in calls.items():
        with pytest.raises(NotFittedError) as error:
            call()
        message = str(error.value)
        assert type(strategy).__name__ in message and "fit(" in message, (method, message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", list_strategies())
def test_fit_on_one_class_raises_data_error(name, digits_set, tiny_backbone):
    one_class = ImageSet(r for r in digits_set.records if r.label == "digit_0")
    strategy = create_strategy(name, **FAST_PARAMS.get(name, {}))
    with pytest.raises(DataError, match="at least 2 classes"):
        strategy.fit(one_class, backbone=tiny_backbone)
    assert not hasattr(strategy, "classes_")


def test_fit_features_on_one_class_raises_data_error():
    for name in list_strategies():
        strategy = create_strategy(name)
        if isinstance(strategy, FeatureStrategy):
            with pytest.raises(DataError, match="at least 2 classes"):
                strategy.fit_features(torch.randn(4, 8), ["a"] * 4)


@pytest.mark.parametrize("name", list_strategies())
def test_default_params_round_trip(name):
    strategy = create_strategy(name)
    assert strategy.get_params() == get_strategy_class(name).param_defaults()
    assert repr(strategy).startswith(type(strategy).__name__ + "(")
    assert strategy.clone().get_params() == strategy.get_params()


@pytest.mark.parametrize("name", list_strategies())
def test_unknown_param_lists_the_valid_ones(name):
    with pytest.raises(ValueError) as error:
        create_strategy(name, definitely_not_a_param=1)
    message = str(error.value)
    assert "definitely_not_a_param" in message
    for valid in get_strategy_class(name).param_names():
        assert valid in message


def test_set_params_refuses_unknown_names():
    strategy = create_strategy("linear")
    assert strategy.set_params(C=0.5) is strategy and strategy.C == 0.5
    with pytest.raises(ValueError, match="valid"):
        strategy.set_params(gamma=2)


def test_unknown_strategy_lists_the_registered_ones():
    with pytest.raises(ValueError) as error:
        create_strategy("reptile")
    assert "unknown strategy 'reptile'" in str(error.value)
    assert all(name in str(error.value) for name in list_strategies())


def test_registering_another_class_under_a_taken_name_is_refused():
    class Impostor(FeatureStrategy):
        name = "linear"

        def _fit_head(self, features, y):
            raise NotImplementedError

    with pytest.raises(ValueError, match="registered twice"):
        register_strategy(Impostor)
    assert get_strategy_class("linear").__name__ != "Impostor"


@pytest.mark.parametrize("name, params, valid", [
    ("linear", {"classifier": "xgboost"}, "logreg"),
    ("linear", {"normalize": "zscore"}, "cl2n"),
    ("protonet", {"distance": "manhattan"}, "euclidean"),
    ("protonet", {"normalize": "zscore"}, "cl2n"),
    ("finetune", {"mode": "partial"}, "last_n"),
])
def test_invalid_param_values_fail_at_fit_naming_the_choices(name, params, valid, digits_set, tiny_backbone):
    with pytest.raises(ValueError, match=valid):
        create_strategy(name, **params).fit(digits_set, backbone=tiny_backbone)


@pytest.mark.parametrize("name", list_strategies())
def test_unlabeled_images_in_the_support_are_ignored(name, digits_set, tiny_backbone):
    small = digits_set.subset([0, 1, 2, 6, 7, 8])  # 2 classes x 3
    with_unlabeled = ImageSet(list(small.records) + [ImageRecord(r.path, r.sha256, None)
                                                     for r in digits_set.subset([12, 13]).records])
    strategy = create_strategy(name, **FAST_PARAMS.get(name, {})).fit(with_unlabeled, backbone=tiny_backbone)
    assert strategy.classes_ == ["digit_0", "digit_1"]
    assert strategy.predict_proba(small).shape == (6, 2)


def test_binary_problems_work_for_every_strategy(support_set, tiny_backbone, query_set):
    support = ImageSet(r for r in support_set.records if r.label != "digit_2")
    for name in list_strategies():
        strategy = create_strategy(name, **FAST_PARAMS.get(name, {})).fit(support, backbone=tiny_backbone)
        proba = strategy.predict_proba(query_set)
        assert proba.shape == (len(query_set), 2)
        with torch.inference_mode():
            logits = strategy.to_module()(image_batch(query_set, tiny_backbone))
        assert torch.allclose(torch.softmax(logits, 1), proba, atol=1e-4)


def test_unicode_class_names_survive_save_and_load(digits_set, tiny_backbone, tmp_path):
    renamed = ImageSet(ImageRecord(r.path, r.sha256, {"digit_0": "café ☕", "digit_1": "猫"}.get(r.label))
                       for r in digits_set.records if r.label != "digit_2")
    strategy = create_strategy("protonet").fit(renamed, backbone=tiny_backbone)
    strategy.save(tmp_path)
    assert "café ☕" in (tmp_path / "model.json").read_bytes().decode("utf-8")
    assert load_strategy(tmp_path, tiny_backbone).classes_ == ["café ☕", "猫"]


# --- the heads are exactly what they claim to be ---------------------------------------------------------------------

def blobs(n_classes: int, per_class: int = 10, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (n_classes, dim))
    x = np.concatenate([c + rng.normal(0, 0.8, (per_class, dim)) for c in centers]).astype(np.float32)
    labels = [f"class_{i}" for i in range(n_classes) for _ in range(per_class)]
    return torch.from_numpy(x), labels


def normalized(x: torch.Tensor, mode: str) -> np.ndarray:
    if mode in ("cl2n",):
        x = x - x.mean(0)
    if mode in ("cl2n", "l2"):
        x = x / x.norm(dim=1, keepdim=True)
    return x.double().numpy()


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("classifier", ["logreg", "svm", "rbf"])
def test_linear_head_reproduces_scikit_learn(classifier, n_classes):
    """The folded head (linear or RBF layer) decides exactly like the scikit-learn estimator it was fitted from."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import SVC, LinearSVC

    x, labels = blobs(n_classes, seed=n_classes)
    query, _ = blobs(n_classes, per_class=6, seed=100 + n_classes)
    strategy = create_strategy("linear", classifier=classifier, normalize="cl2n")
    strategy.fit_features(x, labels)
    train, test = normalized(x, "cl2n"), (query - x.mean(0))
    test = (test / test.norm(dim=1, keepdim=True)).double().numpy()
    y = np.array([strategy.classes_.index(label) for label in labels])
    estimator = {"logreg": LogisticRegression(C=10.0, max_iter=2000, random_state=0),
                 "svm": LinearSVC(C=10.0, max_iter=20000, random_state=0),
                 "rbf": OneVsRestClassifier(SVC(kernel="rbf", C=10.0, gamma="scale"))}[classifier].fit(train, y)
    proba = strategy.predict_proba(query)
    predicted = proba.argmax(1).numpy()
    decision = estimator.decision_function(test)
    if n_classes == 2:
        assert np.array_equal(predicted, (decision > 0).astype(int))
    else:
        assert np.array_equal(predicted, decision.argmax(1))
    assert np.array_equal(predicted, estimator.predict(test))
    if classifier == "logreg":  # already calibrated: the probabilities are scikit-learn's
        assert np.allclose(proba.numpy(), estimator.predict_proba(test), atol=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protonet_is_the_nearest_class_mean(distance):
    x, labels = blobs(3, per_class=8, seed=3)
    query, _ = blobs(3, per_class=8, seed=4)
    strategy = create_strategy("protonet", distance=distance, normalize="none").fit_features(x, labels)
    prototypes = torch.stack([x[[i for i, label in enumerate(labels) if label == name]].mean(0)
                              for name in strategy.classes_])
    if distance == "euclidean":
        expected = torch.cdist(query, prototypes).argmin(1)
    else:
        expected = torch.nn.functional.cosine_similarity(query[:, None], prototypes[None], dim=2).argmax(1)
    assert torch.equal(strategy.predict_proba(query).argmax(1), expected)


def test_svm_probabilities_are_calibrated_not_raw_margins():
    x, labels = blobs(3, seed=7)
    calibrated = create_strategy("linear", classifier="svm").fit_features(x, labels)
    raw = create_strategy("linear", classifier="svm", calibrate=False).fit_features(x, labels)
    assert torch.equal(calibrated.predict_proba(x).argmax(1), raw.predict_proba(x).argmax(1))
    assert not torch.allclose(calibrated.predict_proba(x), raw.predict_proba(x), atol=1e-3)


# --- fine-tuning modes train what they say -------------------------------------------------------------------------

def changed_parameters(strategy, backbone) -> set[str]:
    before = backbone.model.state_dict()
    after = strategy.model_.state_dict()
    return {key for key, value in before.items() if key in after and not torch.equal(after[key], value)}


def test_finetune_modes_train_the_right_layers(digits_set, tiny_backbone):
    support = digits_set.subset([0, 1, 2, 6, 7, 8])
    head = create_strategy("finetune", mode="head", epochs=1, val_fraction=0).fit(support, backbone=tiny_backbone)
    assert changed_parameters(head, tiny_backbone) == set()  # only the new classifier (not in the backbone) moved
    last = create_strategy("finetune", mode="last_n", last_n=1, epochs=1, val_fraction=0).fit(
        support, backbone=tiny_backbone)
    changed = changed_parameters(last, tiny_backbone)
    assert "conv_head.weight" in changed  # the last layer group of the backbone trains ...
    assert not any(key.startswith(("conv_stem", "bn1", "blocks.0", "blocks.1")) for key in changed)  # ... not early
    assert not any("running_" in key for key in changed)  # BatchNorm statistics stay frozen


@pytest.mark.parametrize("n_classes", [2, 3])
def test_probe_weights_classify_raw_features_like_the_fitted_probe(n_classes):
    from sklearn.linear_model import LogisticRegression

    from fsl_app.strategies.finetune import probe_weights

    x, labels = blobs(n_classes, seed=3)
    y = np.array([int(label.split("_")[1]) for label in labels])
    weight, bias = probe_weights(x.double(), y, n_classes, seed=0)
    assert weight.shape == (n_classes, x.shape[1]) and bias.shape == (n_classes,)
    centred = x.double() - x.double().mean(0)
    probe = LogisticRegression(C=10.0, max_iter=2000).fit((centred / centred.norm(dim=1).mean()).numpy(), y)
    assert np.array_equal((x @ weight.T + bias).argmax(1).numpy(), probe.predict(centred.numpy()))


def test_finetune_head_starts_as_a_linear_probe_of_the_frozen_features(digits_set, tiny_backbone):
    support = digits_set.subset([0, 1, 2, 6, 7, 8, 12, 13, 14])
    probe_only = create_strategy("finetune", mode="head", epochs=0).fit(support, backbone=tiny_backbone)
    random_head = create_strategy("finetune", mode="head", epochs=0, head_init="random").fit(
        support, backbone=tiny_backbone)
    labels = support.label_indices(probe_only.classes_)
    assert np.array_equal(probe_only.predict_proba(support).argmax(1).numpy(), labels)
    assert not torch.equal(probe_only.model_.get_classifier().weight, random_head.model_.get_classifier().weight)


def test_interrupt_check_stops_fine_tuning_between_batches(digits_set, tiny_backbone):
    from fsl_app.strategies import interrupt_check

    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    steps = []
    strategy = create_strategy("finetune", mode="head", epochs=2, batch_size=4)  # 18 images: 5 batches an epoch
    with pytest.raises(Stop), interrupt_check(check):
        strategy.fit(digits_set, backbone=tiny_backbone, on_step=steps.append)
    assert steps == [] and len(calls) == 3  # stopped inside the first epoch
    strategy.fit(digits_set.subset(range(12)), backbone=tiny_backbone)  # outside the block nothing is checked


def test_validation_split_only_when_every_class_can_spare_images():
    from fsl_app.strategies._training import MIN_IMAGES_FOR_VALIDATION, stratified_validation_split

    five_shot = np.repeat(np.arange(4), 5)
    train, val = stratified_validation_split(five_shot, 0.2, seed=0)
    assert len(val) == 0 and np.array_equal(train, np.arange(20))
    enough = np.repeat(np.arange(3), MIN_IMAGES_FOR_VALIDATION)
    train, val = stratified_validation_split(enough, 0.2, seed=0)
    assert np.array_equal(np.bincount(enough[val]), [2, 2, 2]) and len(train) + len(val) == len(enough)
    assert not set(train) & set(val)
    assert len(stratified_validation_split(enough, 0.0, seed=0)[1]) == 0

