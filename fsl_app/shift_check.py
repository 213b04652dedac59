"""Is a project's unlabeled pool (or a folder about to be predicted) like its labeled images?

:func:`check_project_shift` embeds both sides with one frozen backbone (the project's latest run's, else the
default), runs :func:`fsl_app.shift.detect_shift` on the features and names the target images furthest from the
labeled ones. The Data page and ``fsl-app project stats --shift`` show what it returns. Features come from the
feature cache, so a second check of the same images only reruns the test.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from . import DEFAULT_BACKBONE
from .backbones import TEST_BACKBONES, Backbone, BackboneError, load_backbone
from .dataset import DataError, ImageRecord, ImageSet, walk_files
from .features import get_extractor
from .images import is_image_name, sha256_file
from .run_tables import project_runs
from .shift import ShiftReport, detect_shift

MIN_IMAGES_PER_SIDE = 2
POOL = "the unlabeled pool"


@dataclass(frozen=True)
class FurthestImage:
    """A target image far from the labeled ones: ``score`` is its mean distance to the nearest labeled images over
    the labeled images' own typical spacing (about 1: as close as labeled images are to each other)."""

    path: str
    name: str  # original file name (pool) or path relative to the folder
    score: float
    image_id: int | None = None  # pool images only


@dataclass
class ShiftCheck:
    """The outcome of :func:`check_project_shift`; ``report`` is None when the check does not apply (``message``
    says what to add)."""

    target: str  # "the unlabeled pool" or the folder checked
    message: str  # the verdict, or why there is none
    n_labeled: int
    n_target: int
    backbone: str = ""
    backbone_origin: str = ""  # "the latest run", "the default backbone" or "chosen"
    report: ShiftReport | None = None
    furthest: list[FurthestImage] = field(default_factory=list)

    @property
    def applicable(self) -> bool:
        return self.report is not None

    @property
    def shifted(self) -> bool:
        return self.report is not None and self.report.shifted

    def to_dict(self) -> dict:
        data = asdict(self)
        data["applicable"], data["shifted"] = self.applicable, self.shifted
        return data


def missing_images_message(n_labeled: int, n_target: int, target: str = POOL) -> str | None:
    """Why the shift check cannot run on these counts, with what to add; None when it can."""
    needs, fixes = [], []
    if n_labeled < MIN_IMAGES_PER_SIDE:
        needs.append(f"{MIN_IMAGES_PER_SIDE} labeled images (there are {n_labeled})")
        fixes.append("label more images")
    if n_target < MIN_IMAGES_PER_SIDE:
        needs.append(f"{MIN_IMAGES_PER_SIDE} images in {target} (there are {n_target})")
        fixes.append("add unlabeled images" if target == POOL else "add images to that folder")
    if not needs:
        return None
    fix = " and ".join(fixes)
    return f"The shift check needs at least {' and '.join(needs)}: {fix}, then check again."


def check_project_shift(project, *, backbone_name: str | None = None, weights: str = "auto",
                        target_paths: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
                        seed: int = 0, permutations: int = 500, n_furthest: int = 10,
                        max_pool: int | None = None) -> ShiftCheck:
    """Test whether the project's labeled images and its unlabeled pool (or the images under ``target_paths``:
    a folder, or image files and folders) come from the same distribution, on frozen backbone features.

    ``backbone_name`` None: the backbone (and weights) of the project's latest run, else the default backbone;
    ``weights`` applies to a named backbone ("auto" means random for timm's tiny test models).
    Fewer than 2 images on a side gives a ShiftCheck without a report whose ``message`` says what to add.
    ``max_pool``: test a seeded random sample of at most that many pool images (a 100,000-image pool would mean
    extracting the features of every one).
    """
    labeled = project.image_set(labeled_only=True)
    if target_paths is None:
        pool = project.images(labeled=False) if max_pool is None else project.sample_images(labeled=False,
                                                                                             size=max_pool)
        target_name = POOL
        target = ImageSet(ImageRecord(path=image.path, sha256=image.sha256) for image in pool)
        rows = [(str(image.path), image.source_name, image.id) for image in pool]
    else:
        target_name, target, rows = _folder_target(target_paths)
    check = ShiftCheck(target=target_name, message="", n_labeled=len(labeled), n_target=len(target))
    problem = missing_images_message(len(labeled), len(target), target_name)
    if problem:
        check.message = problem
        return check
    backbone, check.backbone_origin = _pick_backbone(project, backbone_name, weights)
    check.backbone = backbone.name
    extractor = get_extractor(backbone)
    report = detect_shift(extractor.extract(labeled), extractor.extract(target), seed=seed,
                          permutations=permutations, n_furthest=n_furthest)
    check.report, check.message = report, report.verdict
    check.furthest = [FurthestImage(path=rows[index][0], name=rows[index][1], score=score, image_id=rows[index][2])
                      for index, score in zip(report.furthest, report.furthest_scores)]
    return check


def _folder_target(target_paths) -> tuple[str, ImageSet, list[tuple[str, str, None]]]:
    """The images under the given folder(s) / files: (description, ImageSet, (path, name, None) per image)."""
    sources = [Path(target_paths)] if isinstance(target_paths, (str, os.PathLike)) else list(map(Path, target_paths))
    if not sources:
        raise DataError("no target images given: pass a folder of images to compare with the labeled ones.")
    records, rows = [], []
    for source in sources:
        if source.is_dir():
            files = [path for path in walk_files(source) if path.is_file() and is_image_name(path.name)]
            names = [str(path.relative_to(source)) for path in files]
        elif source.is_file() and is_image_name(source.name):
            files, names = [source], [source.name]
        else:
            raise DataError(f"{source} is neither a folder nor an image file. Pass a folder of images (or image "
                            "files) to compare with the labeled ones.")
        for path, name in zip(files, names):
            records.append(ImageRecord(path=path, sha256=sha256_file(path)))
            rows.append((str(path), name, None))
    description = str(sources[0]) if len(sources) == 1 else f"{len(sources)} folders/files"
    return description, ImageSet(records), rows


def _pick_backbone(project, name: str | None, weights: str) -> tuple[Backbone, str]:
    """(backbone, where its choice came from): the one asked for, the latest run's, else the default."""
    if name is not None:
        return load_backbone(name, _weights_for(name, weights)), "chosen"
    runs = project_runs(project.path)
    spec = (runs[0]["config"].get("backbone") or {}) if runs else {}
    origin = "the default backbone"
    if spec.get("name"):
        try:
            return load_backbone(spec["name"], spec.get("weights", "auto")), "the latest run"
        except BackboneError:  # that run's weights are gone from this machine: any one backbone for both sides will do
            origin += f"; the latest run's {spec['name']} cannot be loaded here"
    return load_backbone(DEFAULT_BACKBONE, "auto"), origin


def _weights_for(name: str, weights: str) -> str:
    """timm's tiny test models have no pretrained weights: "auto" means random for them."""
    return "random" if weights == "auto" and name in TEST_BACKBONES else weights
