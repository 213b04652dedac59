"""``fsl-app compare RUN_DIR... [--json]``: groups of comparable runs, paired differences and a recommendation.

Argument parsing imports nothing heavy; the command reads the run folders (no model is loaded). Folders that are not
finished runs are reported and left out; the exit status is 1 only when nothing can be compared.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXIT_NOTHING_TO_COMPARE = 1


def add_compare_command(commands) -> None:
    """Register ``fsl-app compare RUN_DIR... [--json] [--seed N]``."""
    parser = commands.add_parser("compare", help="compare runs image by image and recommend one when the data "
                                                 "says so")
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run folders written by `fsl-app train`")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (default: %(default)s)")
    parser.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    from ..comparison import compare_runs

    runs, unreadable = read_runs(args.run_dirs)
    comparison = compare_runs(runs, seed=args.seed)
    comparison.excluded[:0] = unreadable
    if args.json:
        print(json.dumps(comparison.to_dict(), ensure_ascii=False))
    else:
        print_comparison(comparison)
    return 0 if comparison.comparable else EXIT_NOTHING_TO_COMPARE


def read_runs(run_dirs: list[str]) -> tuple[list[dict], list[dict]]:
    """(run dicts, [{"run", "run_dir", "reason"}] for the folders that are not runs)."""
    from ..runs import read_run

    runs, unreadable = [], []
    for run_dir in run_dirs:
        path = Path(run_dir)
        try:
            if not path.is_dir():
                raise FileNotFoundError(f"{run_dir} is not a folder. Pass run folders made by `fsl-app train`.")
            runs.append(read_run(path))
        except (FileNotFoundError, ValueError) as error:  # json.JSONDecodeError is a ValueError
            unreadable.append({"run": path.name, "run_dir": str(path), "reason": str(error)})
    return runs, unreadable


def print_comparison(comparison) -> None:
    for number, group in enumerate(comparison.groups, 1):
        print(f"group {number}: {group.description}")
        _print_runs(group.rows())
        for pair in group.pairs:
            print(f"  {pair.strategy_a} ({pair.run_a}) - {pair.strategy_b} ({pair.run_b}): "
                  f"{100 * pair.difference:+.1f} points [{100 * pair.ci_low:+.1f}, {100 * pair.ci_high:+.1f}] "
                  f"McNemar p={pair.p_value:.2g}, {len(pair.only_a_right)}/{len(pair.only_b_right)} images only "
                  f"one got right: {'measurable' if pair.measurable else 'no measurable difference'}")
        if group.headline:
            print(f"  {group.headline}")
        print(f"  recommendation: {group.recommendation.text}")
        print()
    for item in comparison.excluded:
        print(f"left out {item['run_dir'] or item['run']}: {item['reason']}", file=sys.stderr)
    print(comparison.message)


def _print_runs(rows: list[dict]) -> None:
    width = max(len(row["run"]) for row in rows)
    print(f"  {'run':<{width}}  {'strategy':<10} {'accuracy':>8} {'tested':>6} {'fit s':>8}")
    for row in rows:
        seconds = "" if row["fit_seconds"] is None else f"{row['fit_seconds']:.1f}"
        print(f"  {row['run']:<{width}}  {row['strategy']:<10} {100 * row['accuracy']:>7.1f}% {row['n_test']:>6} "
              f"{seconds:>8}")
