"""Adding a strategy is one file: a throwaway strategy written to a temporary module is picked up by the registry,
``create_strategy``, ``param_specs``, the contract (fit, predict, export, save, load) and the CLI, with no other edit."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch

from fsl_app.cli import EXIT_USAGE, main
from fsl_app.strategies import (ParamSpec, _registry, create_strategy, get_strategy_class, list_strategies,
                                load_strategy)

SOURCE = '''
"""Class means on raw features, shrunk towards their overall mean: a throwaway strategy for the registration test."""

import numpy as np
import torch
from torch import nn

from fsl_app.strategies import FeatureStrategy, register_strategy
from fsl_app.strategies._heads import FeatureNormalizer, LinearHead


@register_strategy
class ShrunkMeans(FeatureStrategy):
    name = "throwaway_shrunk_means"
    summary = "class means pulled towards the overall mean (ignores the pool)"
    param_help = {"shrink": "share of the way from each class mean to the overall mean",
                  "metric": "euclidean only, for now"}
    param_choices = {"metric": ("euclidean",)}
    param_ranges = {"shrink": (0.0, 1.0)}

    def __init__(self, *, shrink: float = 0.25, metric: str = "euclidean", seed: int = 0):
        self.shrink = shrink
        self.metric = metric
        self.seed = seed

    def _fit_head(self, features: torch.Tensor, y: np.ndarray, unlabeled) -> nn.Module:
        normalizer = FeatureNormalizer.fit(features, "l2")
        x = normalizer(features)
        means = torch.stack([x[y == c].mean(0) for c in range(int(y.max()) + 1)])
        means = (1 - self.shrink) * means + self.shrink * x.mean(0)
        return LinearHead(normalizer, 2 * means, -(means ** 2).sum(1))
'''
NAME = "throwaway_shrunk_means"
TINY = ["--backbone", "test_efficientnet", "--weights", "random"]


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """Import the one-file strategy from a temp folder; the registry is restored afterwards."""
    monkeypatch.setattr(_registry, "_STRATEGIES", dict(_registry._STRATEGIES))
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "throwaway_strategy.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("throwaway_strategy")
    yield module
    sys.modules.pop("throwaway_strategy", None)


def test_the_registry_and_param_specs_pick_up_a_one_file_strategy(throwaway):
    assert NAME in list_strategies()
    assert get_strategy_class(NAME) is throwaway.ShrunkMeans
    strategy = create_strategy(NAME, shrink=0.5)
    assert strategy.get_params() == {"shrink": 0.5, "metric": "euclidean", "seed": 0}
    assert get_strategy_class(NAME).param_specs() == [
        ParamSpec("shrink", 0.25, "float", (), "share of the way from each class mean to the overall mean", 0.0, 1.0),
        ParamSpec("metric", "euclidean", "choice", ("euclidean",), "euclidean only, for now")]
    with pytest.raises(ValueError, match="shrink must lie in"):
        create_strategy(NAME, shrink=2.0).fit_features(torch.randn(4, 8), ["a", "a", "b", "b"])


def test_the_throwaway_strategy_keeps_the_contract(throwaway, digits_set, tiny_backbone, tmp_path):
    strategy = create_strategy(NAME).fit(digits_set, backbone=tiny_backbone, unlabeled=digits_set.subset([0, 1]))
    proba = strategy.predict_proba(digits_set)
    assert proba.shape == (len(digits_set), 3) and torch.allclose(proba.sum(1), torch.ones(len(digits_set)))
    strategy.save(tmp_path)
    assert torch.allclose(load_strategy(tmp_path, tiny_backbone).predict_proba(digits_set), proba, atol=1e-6)


def test_the_cli_trains_and_validates_the_throwaway_strategy(throwaway, digits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(digits_dir), "--strategy", NAME, *TINY, "--param", "shrink=0.5", "--out", str(out),
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["n_images"] == 18
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["strategy"] == NAME and config["params"]["shrink"] == 0.5

    code = main(["train", str(digits_dir), "--strategy", "no_such_strategy", *TINY, "--out", str(tmp_path / "x")])
    assert code == EXIT_USAGE and NAME in capsys.readouterr().err  # the error lists the new strategy
    code = main(["train", str(digits_dir), "--strategy", NAME, *TINY, "--param", "radius=1", "--out",
                 str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "radius" in err and "shrink" in err


def test_the_jobs_panel_keeps_a_whole_evaluate_every_strategy_batch_in_view():
    from fsl_app.strategies import list_strategies
    from fsl_app.views._jobs_panel import FINISHED_SHOWN

    assert FINISHED_SHOWN >= len(list_strategies())
