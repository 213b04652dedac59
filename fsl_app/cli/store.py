"""``fsl-app project ...`` and ``fsl-app suggest ...``: the project store from the command line.

Register with :func:`add_store_commands` on the main parser's subparsers; every command sets ``handler`` (and
``func``), called as ``args.handler(args)`` and returning the exit code. User mistakes print
``error: <message>`` on stderr and return 1; no traceback. This module holds the parsers only: the handlers are in
:mod:`fsl_app.cli.store_actions`, imported when one of these commands runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Callable

from .check_labels import add_check_labels_action
from .label_first import add_first_arguments

Handler = Callable[[argparse.Namespace], int]


def add_store_commands(subparsers) -> None:
    """Add ``project create|list|import|export|stats|rename|delete|fsck|check-labels`` and ``suggest`` to ``subparsers``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", default=None,
                        help="workspace folder (default: $FSL_APP_HOME, else the user data folder)")
    project = subparsers.add_parser("project", help="create, import into, inspect and export projects")
    actions = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    _add_project_actions(actions, common)
    suggest = subparsers.add_parser("suggest", parents=[common],
                                    help="rank a project's unlabeled images by model uncertainty")
    suggest.add_argument("project", help="project name")
    suggest.add_argument("--run", default=None, help="run folder of a trained strategy (required without --first)")
    suggest.add_argument("--top", type=int, default=20, help="how many suggestions to show (default 20)")
    suggest.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_first_arguments(suggest)
    suggest.set_defaults(**_handler("_suggest"))


def _add_project_actions(actions, common: argparse.ArgumentParser) -> None:
    create = actions.add_parser("create", parents=[common], help="create an empty project")
    create.add_argument("name")
    create.set_defaults(**_handler("_create"))

    listing = actions.add_parser("list", parents=[common], help="list projects")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(**_handler("_list"))

    importing = actions.add_parser("import", parents=[common],
                                   help="import images, folders (sub-folder = class) or zips; exit 1 if any file "
                                        "was rejected")
    importing.add_argument("project")
    importing.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders or .zip files")
    importing.add_argument("--label", help="label every imported image with this class")
    importing.add_argument("--flat", action="store_true", help="folders/zips: ignore sub-folders, import unlabeled")
    importing.set_defaults(**_handler("_import"))

    export = actions.add_parser("export", parents=[common], help="export labeled images as an ImageFolder zip")
    export.add_argument("project")
    export.add_argument("out", help="destination .zip file")
    export.set_defaults(**_handler("_export"))

    stats = actions.add_parser("stats", parents=[common], help="counts per class, duplicates, warnings")
    stats.add_argument("project")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--shift", action="store_true",
                       help="also test whether the unlabeled pool (or --against DIR) looks like the labeled images "
                            "(extracts features: slower)")
    stats.add_argument("--backbone", default=None,
                       help="with --shift: timm backbone for the features (default: the latest run's, else the "
                            "default backbone)")
    stats.add_argument("--weights", default="auto", help="with --shift --backbone: auto|random|PATH")
    stats.add_argument("--against", metavar="DIR", default=None,
                       help="with --shift: compare the labeled images with this folder of images instead of the pool")
    stats.set_defaults(**_handler("_stats"))

    rename = actions.add_parser("rename", parents=[common], help="rename a project")
    rename.add_argument("old_name")
    rename.add_argument("new_name")
    rename.set_defaults(**_handler("_rename"))

    delete = actions.add_parser("delete", parents=[common], help="move a project to the workspace trash")
    delete.add_argument("name")
    delete.add_argument("--confirm", required=True, metavar="NAME", help="repeat the project name to confirm")
    delete.set_defaults(**_handler("_delete"))

    fsck = actions.add_parser("fsck", parents=[common], help="check a project and clean up after a crash")
    fsck.add_argument("project")
    fsck.add_argument("--verify-hashes", action="store_true", help="also re-hash every image file (slow)")
    fsck.set_defaults(**_handler("_fsck"))
    add_check_labels_action(actions, common)


def _handler(name: str) -> dict[str, Handler]:
    """``set_defaults`` keywords: the handler ``name`` of :mod:`.store_actions` (imported when it runs), wrapped,
    as ``func`` and as ``handler`` (the name fsl_app.cli uses)."""
    def handler(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(".store_actions", __package__), name)(args)

    handler.__name__ = name
    wrapped = _user_errors(handler)
    return {"func": wrapped, "handler": wrapped}


def _user_errors(handler: Handler) -> Handler:
    """Turn expected errors into one clear line on stderr and exit code 1."""
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        import sqlite3

        from ..dataset import DataError
        from ..images import ImageError
        from ..store.errors import StoreError

        try:
            return handler(args)
        except (StoreError, DataError, ImageError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except sqlite3.DatabaseError as error:
            print(f"error: the project database cannot be read ({error}). Run `fsl-app project fsck`, or restore "
                  "the project folder from a backup.", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"error: {error.filename or ''} {error.strerror or error}. Check the path and permissions.".strip(),
                  file=sys.stderr)
            return 1
    return wrapped


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m fsl_app.cli.store``) with only the store commands."""
    parser = argparse.ArgumentParser(prog="fsl-app", description="fsl_app project store")
    add_store_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
