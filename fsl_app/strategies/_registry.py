"""Strategy registry: ``@register_strategy`` on a class makes it available by name everywhere (CLI, UI, tests),
and :func:`load_strategy` rebuilds a saved one by the name its model.json records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ..backbones import Backbone
from .base import Strategy

_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    name = cls.name
    if name in _STRATEGIES and _STRATEGIES[name] is not cls:
        raise ValueError(f"strategy {name!r} is registered twice ({_STRATEGIES[name].__module__}, {cls.__module__}).")
    _STRATEGIES[name] = cls
    return cls


def list_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def get_strategy_class(name: str) -> type[Strategy]:
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}. Pick one of: {', '.join(list_strategies())}.") from None


def create_strategy(name: str, **params: Any) -> Strategy:
    """Instantiate a registered strategy; unknown hyperparameters give an error that lists the valid ones."""
    cls = get_strategy_class(name)
    valid = cls.param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"strategy {name!r} has no parameter(s) {unknown}. Valid: {', '.join(valid)}.")
    return cls(**params)


def load_strategy(directory: str | Path, backbone: Backbone) -> Strategy:
    """The fitted strategy saved by ``Strategy.save`` in ``directory``, on ``backbone`` (the one it was fitted on)."""
    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text(encoding="utf-8"))
    strategy = create_strategy(meta["strategy"], **meta["params"])
    return strategy._load_state(meta, load_file(str(directory / "model.safetensors")), backbone)
