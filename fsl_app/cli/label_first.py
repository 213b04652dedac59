"""``fsl-app suggest PROJECT --first [--budget N]``: the unlabeled images to label first (no run needed).

:func:`add_first_arguments` adds the options to the ``suggest`` parser; :func:`cmd_first` runs when ``--first`` is
given. Heavy modules (torch, the backbones) are imported only when it runs, so ``fsl-app --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_BUDGET = 10  # fsl_app.label_first.DEFAULT_BUDGET (not imported here: it pulls in torch)
METHODS = ("auto", "typical", "margin")


def add_first_arguments(suggest: argparse.ArgumentParser) -> None:
    first = suggest.add_argument_group("what to label first (--first)")
    first.add_argument("--first", action="store_true",
                       help="suggest which unlabeled images to label first (no run needed): typical and diverse "
                            "ones (TypiClust) up to 10 labeled per class, then where a model (--run, or a linear "
                            "probe on the labeled images) is least sure")
    first.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                       help="with --first: how many images to suggest (default %(default)s)")
    first.add_argument("--method", choices=METHODS, default="auto",
                       help="with --first: auto (typical up to 10 labeled per class, then margin), typical, margin "
                            "(the model's least sure images, spread out, class-balanced; uses --run if given)")
    first.add_argument("--backbone", default=None,
                       help="with --first: backbone for the features (default: the run's, else the latest run's, "
                            "else the default backbone)")
    first.add_argument("--weights", default="auto", help="with --first --backbone: auto | package | random | PATH")
    first.add_argument("--seed", type=int, default=0, help="with --first: seed of k-means and the pool subsample")


def check_first_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of options (a sentence), or None."""
    if not args.first and args.run is None:
        return ("pass --run RUN_DIR (rank the unlabeled images by a trained model's uncertainty) or --first (what to "
                "label first, no run needed).")
    if not args.first and (args.budget != DEFAULT_BUDGET or args.method != "auto" or args.backbone):
        return "--budget, --method and --backbone go with --first."
    if args.first and args.budget < 1:
        return f"--budget must be at least 1, got {args.budget}."
    return None


def cmd_first(args: argparse.Namespace) -> int:
    """Print the picks (a table, or JSON with ``--json``); user errors: one line on stderr and exit code 1."""
    from ..backbones import BackboneError
    from ..dataset import DataError
    from ..images import ImageError
    from ..label_first import suggest_first
    from ..store import StoreError, open_project

    try:
        with open_project(args.project, args.home) as project:
            result = suggest_first(project, budget=args.budget, method=args.method, run_dir=args.run,
                                   backbone=args.backbone, weights=args.weights, seed=args.seed)
    except (StoreError, DataError, ImageError, BackboneError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return 0
    source = f", from {result.model}" if result.model else ""
    print(f"label these {len(result.picks)} first ({result.method}{source}; {result.backbone} features; "
          f"{result.considered} of {result.pool_size} unlabeled images considered)")
    if result.note:
        print(result.note)
    print(f"{'image':>7}  {'file':<28} {'guess':<14} why")
    for pick in result.picks:
        print(f"{pick.image_id:>7}  {pick.file_name[:28]:<28} {(pick.suggested_label or '-')[:14]:<14} {pick.reason}")
    return 0
