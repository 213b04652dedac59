"""The handlers of ``fsl-app project ...`` and ``fsl-app suggest ...`` (parsers: :mod:`fsl_app.cli.store`).

Imported only when one of these commands runs, so building the parser (``fsl-app --help``, ``fsl-app predict``)
does not import the store, numpy or SQLite.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..dataset import DataError
from ..images import ImageError, is_image_name
from ..store.errors import StoreError
from .label_first import check_first_arguments, cmd_first
from ..store.importing import ImportReport, import_paths
from ..store.suggest import suggest_for_project
from ..store.workspace import (create_project, delete_project, list_projects, open_project, rename_project,
                               workspace_home)


def _create(args) -> int:
    with create_project(args.name, args.home) as project:
        print(f"created project {project.name!r} in {project.path}")
    return 0


def _list(args) -> int:
    names = list_projects(args.home)
    if args.json:
        print(json.dumps(names, ensure_ascii=False))
    elif names:
        print("\n".join(names))
    else:
        print(f"no projects in {workspace_home(args.home)}; create one with `fsl-app project create NAME`")
    return 0


def _import(args) -> int:
    with open_project(args.project, args.home) as project:
        reports, loose_files = [], []
        for source in map(Path, args.sources):
            if source.is_dir():
                reports.append(project.import_folder(source, args.label) if args.flat or args.label
                               else project.import_imagefolder(source))
            elif source.suffix.lower() == ".zip" and source.is_file():
                reports.append(project.import_zip(source, args.label, folders_as_classes=not args.flat))
            elif source.is_file() and is_image_name(source.name):
                loose_files.append(source)
            else:
                raise StoreError(f"{source} is not an image, a folder or a .zip file. Check the path.")
        if loose_files:
            reports.append(import_paths(project, loose_files, args.label))
    total = ImportReport.combine(reports)
    print(total.summary())
    for level, line in total.lines():
        print(f"  {line}", file=sys.stdout if level == "info" else sys.stderr)
    return 1 if total.rejected else 0


def _export(args) -> int:
    with open_project(args.project, args.home) as project:
        report = project.export_imagefolder_zip(Path(args.out))
    print(f"exported {report.n_images} labeled images in {len(report.folders)} class folders to {args.out}")
    if report.missing:
        print(f"warning: {len(report.missing)} image file(s) are missing; run `fsl-app project fsck`",
              file=sys.stderr)
    return 0


def _stats(args) -> int:
    if not args.shift and (args.backbone or args.against or args.weights != "auto"):
        raise StoreError("--backbone, --weights and --against only apply to the shift check: add --shift.")
    if args.weights != "auto" and not args.backbone:
        raise StoreError("--weights needs --backbone NAME (without it the check uses the latest run's backbone).")
    with open_project(args.project, args.home) as project:
        stats = project.stats()
        shift = _shift_check(project, args) if args.shift else None
    if args.json:
        data = stats.as_dict() | ({"shift": shift.to_dict()} if shift is not None else {})
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    print(f"project {stats.name!r}: {stats.n_images} images, {stats.n_labeled} labeled, {stats.n_unlabeled} unlabeled")
    for name, count in stats.class_counts.items():
        print(f"  {name}: {count}")
    print(f"duplicates skipped at import: {stats.duplicates_skipped}; identical pictures: {stats.identical_pairs} "
          f"pair(s); near duplicates: {stats.near_duplicate_pairs} pair(s)")
    for warning in stats.warnings:
        print(f"warning: {warning}")
    if shift is not None:
        _print_shift(shift)
    return 0


def _shift_check(project, args):
    """The domain-shift check (imports torch: only with --shift, so plain ``stats`` stays instant)."""
    from ..backbones import BackboneError
    from ..shift_check import check_project_shift

    try:
        return check_project_shift(project, backbone_name=args.backbone, weights=args.weights,
                                   target_paths=args.against)
    except BackboneError as error:
        raise DataError(str(error)) from None


def _print_shift(check) -> None:
    if not check.applicable:
        print(f"shift: {check.message}")
        return
    print(f"shift ({check.target} vs {check.n_labeled} labeled images, {check.backbone} features, "
          f"{check.backbone_origin}): {check.message}")
    if check.furthest:
        print("  furthest from the labeled images (score: distance / typical labeled spacing):")
        for image in check.furthest:
            suffix = f" (image {image.image_id})" if image.image_id is not None else ""
            print(f"  {image.score:>7.2f}  {image.name}{suffix}")


def _rename(args) -> int:
    new_name = rename_project(args.old_name, args.new_name, args.home)
    print(f"renamed project {args.old_name!r} to {new_name!r}")
    return 0


def _delete(args) -> int:
    trash = delete_project(args.name, args.confirm, args.home)
    print(f"moved project {args.name!r} to {trash} (remove it from there to free the space)")
    return 0


def _fsck(args) -> int:
    with open_project(args.project, args.home) as project:
        report = project.fsck(verify_hashes=args.verify_hashes)
    print(report.summary())
    if report.missing_files:
        print(f"missing files for image ids {report.missing_files[:20]}: re-import those images", file=sys.stderr)
    return 0 if report.ok else 1


def _suggest(args) -> int:
    problem = check_first_arguments(args)
    if problem:
        raise StoreError(problem)
    if args.first:
        return cmd_first(args)
    strategy = _load_strategy(Path(args.run))
    with open_project(args.project, args.home) as project:
        suggestions = suggest_for_project(project, strategy, top=args.top)
    if args.json:
        print(json.dumps([asdict(s) for s in suggestions], ensure_ascii=False, indent=2))
    elif not suggestions:
        print("no unlabeled images: nothing to suggest")
    else:
        print(f"{'image':>7}  {'suggested label':<24} {'confidence':>10} {'margin':>7} {'entropy':>7}")
        for s in suggestions:
            print(f"{s.image_id:>7}  {s.label:<24} {s.confidence:>10.3f} {s.margin:>7.3f} {s.entropy:>7.3f}")
    return 0


def _load_strategy(run_dir: Path):
    if not run_dir.is_dir():
        raise StoreError(f"run folder {run_dir} does not exist. Pass the --out folder of `fsl-app train`.")
    try:
        from fsl_app.runs import load_run
    except ImportError as error:
        raise StoreError(f"loading runs is not available in this installation ({error}). "
                         "Update fsl_app.") from None
    try:
        strategy, _backbone = load_run(run_dir)
    except (StoreError, DataError, ImageError):
        raise
    except Exception as error:  # a damaged or foreign run folder is a user problem, not a crash
        raise StoreError(f"could not load the run in {run_dir} ({type(error).__name__}: {error}). "
                         "Check that it is a finished run folder.") from None
    return strategy
