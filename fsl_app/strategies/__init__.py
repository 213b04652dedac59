"""Few-shot strategies. Importing this package registers every implementation (one file each)."""

from . import aligned, bdcspn, finetune, linear, maml, matchingnet, protonet, selftrain, tim  # noqa: F401  (registration side effects)
from ._params import ParamSpec
from ._registry import create_strategy, get_strategy_class, list_strategies, load_strategy, register_strategy
from .base import FeatureStrategy, ImageClassifier, NotFittedError, StepLog, Strategy, interrupt_check

__all__ = ["create_strategy", "get_strategy_class", "list_strategies", "load_strategy", "register_strategy",
           "FeatureStrategy", "ImageClassifier", "NotFittedError", "ParamSpec", "StepLog", "Strategy",
           "interrupt_check"]
