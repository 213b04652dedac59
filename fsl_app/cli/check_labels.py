"""``fsl-app project check-labels PROJECT``: the labels most likely wrong, most suspicious first.

Register with :func:`add_check_labels_action` on the ``project`` command's sub-parsers. User mistakes print
``error: <message>`` on stderr and return 1, as the other project commands do; the heavy modules (torch, the
strategies) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys

from .. import DEFAULT_BACKBONE
from ._args import UserError, parse_params

DEFAULT_TOP = 20


def add_check_labels_action(actions, common: argparse.ArgumentParser) -> None:
    """Add ``check-labels`` to the ``project`` sub-parsers ``actions``; ``common`` carries ``--home``."""
    check = actions.add_parser(
        "check-labels", parents=[common],
        help="rank labeled images by how likely their label is wrong (out-of-fold predictions, confident learning)")
    check.add_argument("project", help="project name")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="RUN_DIR", help="refit the strategy, hyperparameters and backbone of this run")
    source.add_argument("--strategy", default=None, help="strategy to refit (default: linear)")
    check.add_argument("--backbone", default=DEFAULT_BACKBONE, help="with --strategy (default: %(default)s)")
    check.add_argument("--weights", default="auto", help="with --strategy: auto | package | random | PATH")
    check.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                       help="with --strategy: a hyperparameter, repeatable")
    check.add_argument("--protocol", default="auto", choices=["auto", "loo", "kfold"],
                       help="how each image is held out (default: leave-one-out for few images, else 5-fold)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--top", type=int, default=DEFAULT_TOP, help="rows to show (default %(default)s; 0: all)")
    check.add_argument("--all", action="store_true",
                       help="list every checked image, not only the review queue (flagged labels and labels the "
                            "held-out model prefers another class for)")
    check.add_argument("--json", action="store_true", help="print a JSON list, most suspicious first")
    check.set_defaults(func=cmd_check_labels, handler=cmd_check_labels)


def cmd_check_labels(args: argparse.Namespace) -> int:
    """Run the check; 0 when it ran (whether or not labels were flagged), 1 on a user error."""
    from ..backbones import BackboneError
    from ..dataset import DataError
    from ..images import ImageError
    from ..store import StoreError

    try:
        check = _run_check(args)
    except (StoreError, DataError, ImageError, BackboneError, UserError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as error:
        print(f"error: the project database cannot be read ({error}). Run `fsl-app project fsck`, or restore the "
              "project folder from a backup.", file=sys.stderr)
        return 1
    rows = check.issues if args.all else check.review_queue
    rows = rows[:args.top] if args.top > 0 else rows
    if args.json:
        print(json.dumps([issue.to_dict() for issue in rows], ensure_ascii=False, indent=2))
    else:
        _print_table(check, rows)
    return 0


def _run_check(args: argparse.Namespace):
    from ..label_check import check_labels, strategy_from_run
    from ..store import open_project

    if args.top < 0:
        raise ValueError(f"--top must be 0 (all) or more, got {args.top}.")
    if args.run:
        if args.param:
            raise ValueError("--param goes with --strategy; a --run brings its own hyperparameters.")
        strategy, backbone = strategy_from_run(args.run)
        options = {"strategy": strategy, "backbone": backbone}
    else:
        options = {"strategy": args.strategy or "linear", "params": parse_params(args.param),
                   "backbone": args.backbone, "weights": args.weights}
    with open_project(args.project, args.home) as project:
        return check_labels(project, protocol=args.protocol, seed=args.seed, **options)


def _print_table(check, rows) -> None:
    more = len(check.review_queue) - len(check.flagged)
    print(f"{len(check.flagged)} of {len(check.issues)} labels look wrong and {more} more are worth a look "
          f"({check.strategy}, {check.protocol} on {check.backbone})")
    if check.unchecked:
        print(f"not checked (the only image of their class): {', '.join(check.unchecked)}")
    if not rows:
        return
    print(f"{'image':>7}  {'file':<28} {'label':<16} {'suggested':<16} {'score':>5}  flagged")
    for issue in rows:
        image = "" if issue.image_id is None else issue.image_id
        print(f"{image:>7}  {issue.file_name[:28]:<28} {issue.label[:16]:<16} {issue.suggested_label[:16]:<16} "
              f"{issue.score:>5.2f}  {'yes' if issue.flagged else ''}")
