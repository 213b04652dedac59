"""The unlabeled pool on the command line: ``evaluate``'s pool options (``--transductive``, ``--pool``,
``--pool-imbalance``, ``--pool-outliers``, ``--query-data``), their checks and their description, and the pool that
``train`` takes from DATA_DIR's unlabeled images (``--no-pool`` leaves it out).

Checks that need no data run before any model library is imported; what the data cannot supply (too few images for
the pool, class folders that differ) is refused by :func:`fsl_app.evaluation.evaluate_episodes` before extraction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_pool_arguments(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("--transductive", action="store_true",
                          help="give each episode's queries (without labels) to the fit as unlabeled images")
    evaluate.add_argument("--pool", type=_count, default=0, metavar="N",
                          help="N extra unlabeled images per episode, not scored, from the episode's classes")
    evaluate.add_argument("--pool-imbalance", type=_positive, default=None, metavar="ALPHA",
                          help="Dirichlet alpha of the pool's class shares (2: mildly uneven, 0.5: very uneven)")
    evaluate.add_argument("--pool-outliers", type=_fraction, default=0.0, metavar="FRACTION",
                          help="share of the pool drawn from classes outside the episode, in [0, 1]")
    evaluate.add_argument("--query-data", default=None, metavar="DIR",
                          help="ImageFolder with the same class names that supplies the queries and the pool")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, e.g. 100") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text} (2: mildly uneven, 0.5: very uneven)")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"is a fraction of the pool in [0, 1], got {text} (e.g. 0.3)")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value:
        raise argparse.ArgumentTypeError("must be a number, got nan")
    return value


def check_pool_arguments(args) -> None:
    """The pool's shape needs a pool: refuse --pool-imbalance / --pool-outliers without --pool before any work."""
    shaped = [flag for flag, value in (("--pool-imbalance", args.pool_imbalance is not None),
                                       ("--pool-outliers", args.pool_outliers > 0)) if value]
    if shaped and not args.pool:
        verb = "shapes" if len(shaped) == 1 else "shape"
        raise ValueError(f"{' and '.join(shaped)} {verb} the extra pool, which is empty: add --pool N "
                         "(e.g. --pool 100).")


def load_query_images(query_data: str | None):
    """The ImageFolder of --query-data (same class names as DATA_DIR, checked by the evaluation), or None."""
    if query_data is None:
        return None
    from ..dataset import ImageSet

    if not Path(query_data).is_dir():
        raise ValueError(f"--query-data {query_data}: no such folder. Pass an ImageFolder tree (one sub-folder per "
                         "class) with the same class names as DATA_DIR.")
    images = ImageSet.from_folder(query_data)
    if not images.classes:
        raise ValueError(f"--query-data {query_data} has no class sub-folders, only loose images. Put its images "
                         "in one sub-folder per class, named as in DATA_DIR.")
    return images


def episode_setting_text(args) -> str:
    """', transductive, pool 100 (Dirichlet 2, 30 % outliers), queries from DIR' for the settings in use."""
    parts = ["transductive"] if args.transductive else []
    if args.pool:
        shape = ([f"Dirichlet {args.pool_imbalance:g}"] if args.pool_imbalance is not None else []) + \
                ([f"{100 * args.pool_outliers:g} % outliers"] if args.pool_outliers else [])
        parts.append(f"pool {args.pool}" + (f" ({', '.join(shape)})" if shape else ""))
    if args.query_data:
        parts.append(f"queries from {args.query_data}")
    return "".join(f", {part}" for part in parts)


def note_ignored_pool(args, strategy) -> None:
    """Say on stderr that --transductive / --pool change nothing for a strategy that ignores unlabeled images."""
    if (args.transductive or args.pool) and not strategy.uses_unlabeled:
        print(f"note: {strategy.name} ignores unlabeled images, so --transductive and --pool change nothing for it "
              f"(an inductive baseline); {_pool_aware_names()} learn from them.", file=sys.stderr)


def training_pool(images, strategy, *, no_pool: bool):
    """The unlabeled images of DATA_DIR when ``strategy`` learns from them and ``--no-pool`` is not given; says on
    stderr when unlabeled images go unused, or when a pool-aware strategy finds none."""
    unlabeled = images.unlabeled()
    if not strategy.uses_unlabeled:
        if len(unlabeled):
            print(f"note: {strategy.name} ignores the {len(unlabeled)} unlabeled images; {_pool_aware_names()} "
                  "learn from them.", file=sys.stderr)
        return None
    if no_pool:
        return None
    if not len(unlabeled):
        print(f"note: no unlabeled images, so {strategy.name} trains on the labeled ones alone. Put unlabeled images "
              "loose at the top of DATA_DIR (or import them unlabeled into the project) to use a pool.",
              file=sys.stderr)
    return unlabeled


def pool_text(metrics: dict) -> str:
    """', unlabeled pool: 31 of 40 · 12 pseudo-labels' for a run that used a pool, else ''."""
    if not metrics.get("pool_size"):
        return ""
    from ..run_tables import pool_text as describe_pool

    return f", unlabeled pool: {describe_pool(metrics)}"


def _pool_aware_names() -> str:
    from ..strategies import get_strategy_class, list_strategies

    return ", ".join(name for name in list_strategies() if get_strategy_class(name).uses_unlabeled)
