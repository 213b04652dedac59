"""Few-shot strategies. Importing this package registers every implementation (one file each)."""

from . import finetune, linear, protonet  # noqa: F401  (registration side effects)
from ._registry import create_strategy, get_strategy_class, list_strategies, register_strategy
from .base import FeatureStrategy, ImageClassifier, NotFittedError, StepLog, Strategy, interrupt_check

__all__ = ["create_strategy", "get_strategy_class", "list_strategies", "register_strategy", "FeatureStrategy",
           "ImageClassifier", "NotFittedError", "StepLog", "Strategy", "interrupt_check"]
