"""How a strategy describes one hyperparameter to the fronts (CLI help, Train page pickers, contract tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("choice", "bool", "int", "float", "augment", "text")


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: ``kind`` is one of :data:`KINDS`; ``choices`` for choice and augment; ``low``/``high``
    bound int and float values (inclusive, None: unbounded)."""

    name: str
    default: Any
    kind: str
    choices: tuple = ()
    help: str = ""
    low: float | None = None
    high: float | None = None

    def check(self, value: Any, owner: str) -> None:
        """Raise ValueError naming the valid values when ``value`` is outside the declared choices or range."""
        if self.kind == "choice" and value not in self.choices:
            raise ValueError(f"{owner}: {self.name} must be one of {self.choices}, got {value!r}")
        if self.kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                bounds = f"[{'-inf' if self.low is None else self.low}, {'inf' if self.high is None else self.high}]"
                raise ValueError(f"{owner}: {self.name} must lie in {bounds}, got {value!r}")


def infer_kind(name: str, default: Any, choices: tuple) -> str:
    """The widget kind of a parameter from its declaration: declared choices, else the type of its default."""
    if name == "augment":
        return "augment"
    if choices:
        return "choice"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "text"
