"""Project statistics and data warnings shown before training (tiny classes, imbalance, duplicates across classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .duplicates import NEAR_DUPLICATE_MAX_DISTANCE

if TYPE_CHECKING:
    from .project import Project

MIN_IMAGES_PER_CLASS = 2
IMBALANCE_RATIO = 3.0


@dataclass
class ProjectStats:
    name: str
    n_images: int
    n_labeled: int
    n_unlabeled: int
    class_counts: dict[str, int]  # every class, including empty ones
    duplicates_skipped: int  # exact duplicates refused at import, over the project's life
    identical_pairs: int  # different files showing the same picture (phash distance 0)
    near_duplicate_pairs: int  # phash distance 1..threshold
    cross_class_near_duplicates: list[tuple[int, int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def project_stats(project: "Project", max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE) -> ProjectStats:
    counts = project.class_counts()
    with project.read() as conn:
        skipped = int(conn.execute("SELECT value FROM meta WHERE key = 'duplicates_skipped'").fetchone()[0])
        n_images, n_labeled = conn.execute("SELECT COUNT(*), COUNT(class_id) FROM images").fetchone()
    pairs = project.near_duplicates(max_distance)
    label_of = project.labels_by_id(image_id for pair in pairs for image_id in pair[:2]) if pairs else {}
    cross = [pair for pair in pairs
             if label_of.get(pair[0]) and label_of.get(pair[1]) and label_of[pair[0]] != label_of[pair[1]]]
    stats = ProjectStats(
        name=project.name, n_images=n_images, n_labeled=n_labeled, n_unlabeled=n_images - n_labeled,
        class_counts=counts, duplicates_skipped=skipped,
        identical_pairs=sum(1 for pair in pairs if pair[2] == 0),
        near_duplicate_pairs=sum(1 for pair in pairs if pair[2] > 0), cross_class_near_duplicates=cross)
    stats.warnings = data_warnings(stats)
    return stats


def data_warnings(stats: ProjectStats) -> list[str]:
    """Plain-language problems with the data, each saying what to do."""
    warnings = []
    counts = stats.class_counts
    if len(counts) < 2:
        warnings.append(f"{len(counts)} class(es): training needs at least 2. Add a class and label some images.")
    small = [name for name, count in counts.items() if count < MIN_IMAGES_PER_CLASS]
    if small:
        warnings.append(f"classes with fewer than {MIN_IMAGES_PER_CLASS} images: {small}. Label more images for "
                        "them (or delete them); evaluation needs at least one image to train and one to test.")
    non_empty = [count for count in counts.values() if count > 0]
    if len(non_empty) >= 2 and max(non_empty) > IMBALANCE_RATIO * min(non_empty):
        largest = max(counts, key=counts.get)
        smallest = min((name for name in counts if counts[name] > 0), key=counts.get)
        warnings.append(f"imbalanced classes: {largest!r} has {counts[largest]} images, {smallest!r} only "
                        f"{counts[smallest]}. Label more of the small class; accuracy alone will look too good.")
    if stats.cross_class_near_duplicates:
        warnings.append(f"{len(stats.cross_class_near_duplicates)} near-duplicate pair(s) carry different labels. "
                        "Check them: one label is probably wrong.")
    if stats.identical_pairs or stats.near_duplicate_pairs:
        warnings.append(f"{stats.identical_pairs + stats.near_duplicate_pairs} near-duplicate pair(s): they can leak "
                        "between training and test splits. Review them and delete copies you do not need.")
    if stats.n_unlabeled:
        warnings.append(f"{stats.n_unlabeled} image(s) are unlabeled; label them or use suggestions from a run.")
    return warnings
