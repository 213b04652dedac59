"""The "none of these" autoencoder (fsl_app.ood): it trains, ranks unseen classes above seen ones on real data, works
on one class, round-trips through safetensors + JSON, rides along with every run and every export format, and old
runs without it keep working."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from conftest import make_digits_folder
from fsl_app import ood
from fsl_app.dataset import ImageSet
from fsl_app.export import export_run, load_predictor
from fsl_app.ood import (OOD_CONFIG, OOD_WEIGHTS, FeatureAutoencoder, fit_autoencoder, load_autoencoder,
                         save_autoencoder)
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy


@pytest.fixture(scope="module")
def digit_pixels() -> tuple[torch.Tensor, np.ndarray]:
    """Real features: scikit-learn's digits as 64-dim pixel vectors (n, 64), and their labels."""
    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) + 0.5, digits.target


def split(labels: np.ndarray, seen, train_per_class: int, test_per_class: int = 40):
    train, test_in, test_out = [], [], []
    rng = np.random.default_rng(0)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if label in seen:
            train += list(members[:train_per_class])
            test_in += list(members[train_per_class:train_per_class + test_per_class])
        else:
            test_out += list(members[:test_per_class])
    return np.array(train), np.array(test_in), np.array(test_out)


def auroc(model: FeatureAutoencoder, seen: torch.Tensor, unseen: torch.Tensor) -> float:
    with torch.no_grad():
        scores = torch.cat([model(seen), model(unseen)]).numpy()
    return roc_auc_score(np.r_[np.zeros(len(seen)), np.ones(len(unseen))], scores)


def test_scores_unseen_classes_higher_than_seen_ones(digit_pixels):
    features, labels = digit_pixels
    train, test_in, test_out = split(labels, seen=(0, 1, 2, 3, 4), train_per_class=20)
    model = fit_autoencoder(features[train], steps=200)
    assert auroc(model, features[test_in], features[test_out]) > 0.75
    with torch.no_grad():  # calibrated: 1.0 is the 95th percentile of out-of-fold errors of the seen classes
        rejected = (model(features[test_in]) > 1).float().mean().item()
    assert rejected < 0.3


def test_one_class_works(digit_pixels):
    features, labels = digit_pixels
    train, test_in, test_out = split(labels, seen=(0,), train_per_class=20)
    model = fit_autoencoder(features[train], steps=200)
    assert auroc(model, features[test_in], features[test_out]) > 0.85


def test_too_few_images_is_a_clear_error(digit_pixels):
    with pytest.raises(ValueError, match="at least 4 images"):
        fit_autoencoder(digit_pixels[0][:3])


def test_round_trip_is_safetensors_and_json(digit_pixels, tmp_path):
    features = digit_pixels[0]
    model = fit_autoencoder(features[:30], steps=50, seed=3)
    save_autoencoder(model, tmp_path)
    assert json.loads((tmp_path / OOD_CONFIG).read_text())["kind"] == "autoencoder"
    assert (tmp_path / OOD_WEIGHTS).read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle
    loaded = load_autoencoder(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(features[30:60]), model(features[30:60]))
    assert load_autoencoder(tmp_path / "missing") is None
    again = fit_autoencoder(features[:30], steps=50, seed=3)  # seeded: the same fit twice
    assert torch.equal(again.limit, model.limit)


# --- runs and exports -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(digits_set, tiny_backbone, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ood_run") / "run"
    train_run(digits_set, create_strategy("linear"), tiny_backbone, folder, protocol="holdout")
    return folder


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> list[str]:
    """Two unseen digits of each run class, and two digits of classes the run never saw."""
    root = make_digits_folder(tmp_path_factory.mktemp("ood_queries"), classes=(0, 1, 2, 7, 8), per_class=2, offset=6)
    return [str(record.path) for record in ImageSet.from_folder(root).records]


def test_a_run_trains_and_saves_its_autoencoder(run_dir):
    assert (run_dir / OOD_WEIGHTS).is_file() and (run_dir / OOD_CONFIG).is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["ood_seconds"] > 0


def test_every_format_gives_the_same_ood_score(run_dir, queries, tmp_path):
    expected = [row["ood_score"] for row in load_predictor(run_dir).predict_paths(queries)]
    assert all(score > 0 for score in expected)
    exports = {name: export_run(run_dir, name, tmp_path / f"model{suffix}", ood="auto")
               for name, suffix in (("onnx", ".onnx"), ("torchscript", ".pt"), ("bundle", ".zip"))}
    for name, path in exports.items():
        predictor = load_predictor(path)
        assert predictor.ood_limit == 1.0, name
        rows = predictor.predict_paths(queries)
        assert np.allclose([row["ood_score"] for row in rows], expected, rtol=1e-3, atol=1e-4), name
        assert all((row["label"] == "unknown") == (row["ood_score"] > 1.0) for row in rows), name
    with zipfile.ZipFile(exports["bundle"]) as archive:
        archive.extractall(tmp_path / "bundle")
    weights = (tmp_path / "bundle" / "model.safetensors").read_bytes()
    assert "ood.encoder.0.weight" in json.loads(weights[8:8 + int.from_bytes(weights[:8], "little")])
    for script in ("predict_onnx.py",):  # predict.py (torch + timm) is compared in test_export_parity
        printed = subprocess.run([sys.executable, str(tmp_path / "bundle" / script), *queries], capture_output=True,
                                 text=True, timeout=120, check=True).stdout
        rows = json.loads(printed)
        assert np.allclose([row["ood_score"] for row in rows], expected, rtol=1e-3, atol=1e-4), script
        assert all((row["label"] == "unknown") == (row["ood_score"] > 1.0) for row in rows), script
    assert "OOD score" in (tmp_path / "bundle" / "README.md").read_text()


def test_old_runs_without_an_autoencoder_keep_working(run_dir, queries, tmp_path):
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    (old / OOD_WEIGHTS).unlink()
    (old / OOD_CONFIG).unlink()
    rows = load_predictor(old).predict_paths(queries)
    assert all("ood_score" not in row for row in rows)
    onnx_path = export_run(old, "onnx", tmp_path / "old.onnx", threshold="auto")
    predictor = load_predictor(onnx_path)
    assert predictor.info["ood"] is None and predictor.ood_limit is None
    assert all("ood_score" not in row for row in predictor.predict_paths(queries))
    with pytest.raises(ValueError, match="no out-of-distribution autoencoder"):
        export_run(old, "onnx", tmp_path / "old2.onnx", ood="auto")
    with pytest.raises(ValueError, match="--ood"):
        export_run(run_dir, "onnx", tmp_path / "bad.onnx", ood="-1")


def test_adam_steps_match_torch_optim_adam():
    """The autoencoder's written-out Adam (no torch._dynamo import) takes the steps torch.optim.Adam takes."""
    torch.manual_seed(0)
    x, target = torch.randn(16, 5), torch.randn(16, 2)
    ours, reference = torch.nn.Linear(5, 2), torch.nn.Linear(5, 2)
    reference.load_state_dict(ours.state_dict())
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(25):
        optimizer.zero_grad()
        ((reference(x) - target) ** 2).mean().backward()
        optimizer.step()
    ood.adam_steps(list(ours.parameters()), lambda: ((ours(x) - target) ** 2).mean(), 25, lr=1e-2, weight_decay=1e-3)
    for mine, theirs in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-6)
