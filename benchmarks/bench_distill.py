"""Issue 13: knowledge distillation. Does a lite0 student taught by a bigger teacher beat the same student trained on
the labels alone, and what speed does it buy?

Each draw is a few-shot project cut from a bench set: ``N_WAY`` classes (drawn by the seed), ``SHOTS`` labeled images
a class, ``--pool`` unlabeled images a class (the project's pool) and ``TEST`` held-out images a class that no model
ever sees while training. Candidates, all fitted on the same project and scored on the same held-out images:

- teacher: ``linear`` on frozen ``tf_efficientnet_lite2`` features at 260 px (offline package weights), the kind of
  run a user would distil (fine-tuning lite2 itself takes too long on this CPU for a benchmark of a few minutes);
- lite0 linear: ``linear`` on frozen ``tf_efficientnet_lite0`` features at the student's input size (the cheap
  alternative that needs no distillation);
- student direct: ``finetune`` of lite0 at the student's input size on the labeled images only;
- student distilled: :class:`fsl_app.distill.DistilledStudent` (same fine-tuning hyperparameters, T=4, alpha=0.7) on
  the labeled images plus the pool, and without the pool.

Accuracy on the held-out images with the Wilson 95 % interval; agreement = share of held-out images where the model's
top class equals the teacher's. Speed: images/s of each model's PyTorch module on a preprocessed batch of 16,
measured interleaved (every round runs every model once, rotated order), reported as the median per-round ratio to the
teacher. Budget: ``--quick`` (1 draw per set, student at 96 px, 5 epochs, 10 pool images a class) takes about 15
minutes on a 2-core CPU shared with other work; the default (2 draws, 128 px, 8 epochs, 15 pool images) about an hour.

Run alone: ``.venv/bin/python benchmarks/bench_distill.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import _datasets
import _report
from fsl_app.backbones import at_input_size, load_backbone
from fsl_app.dataset import ImageRecord, ImageSet
from fsl_app.distill import DistilledStudent, Teacher
from fsl_app.features import images_to_batch
from fsl_app.intervals import wilson_interval
from fsl_app.strategies import create_strategy

N_WAY, SHOTS, TEST = 5, 5, 20
TEACHER, STUDENT = "tf_efficientnet_lite2", "tf_efficientnet_lite0"
FINETUNE = {"mode": "last_n", "last_n": 2, "lr": 1e-3, "augment": "light", "batch_size": 16, "seed": 0}
SETS = {"digits": lambda: _datasets.digits_folder(), "patches": lambda: _datasets.patches_folder()}
CANDIDATES = ("teacher (lite2 linear)", "lite0 linear", "student direct (finetune)", "student distilled + pool",
              "student distilled, no pool")


def draw_project(root: Path, seed: int, pool_size: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(labeled, pool without labels, held-out test) of ``N_WAY`` classes drawn with ``seed``; ``pool_size`` a
    class."""
    images = ImageSet.from_folder(root).labeled()
    rng = np.random.default_rng(seed)
    classes = sorted(rng.choice(images.classes, size=N_WAY, replace=False).tolist())
    labeled, pool, test = [], [], []
    for name in classes:
        members = rng.permutation([i for i, r in enumerate(images.records) if r.label == name])
        labeled += [images[i] for i in members[:SHOTS]]
        pool += [ImageRecord(images[i].path, images[i].sha256, None) for i in members[SHOTS:SHOTS + pool_size]]
        test += [images[i] for i in members[SHOTS + pool_size:SHOTS + pool_size + TEST]]
    return ImageSet(labeled), ImageSet(pool), ImageSet(test)


def fit_candidates(labeled: ImageSet, pool: ImageSet, test: ImageSet, input_size: int, epochs: int
                   ) -> tuple[dict, dict, dict]:
    """Fitted models, their held-out predictions and fit seconds, by candidate name."""
    teacher_backbone = load_backbone(TEACHER, "package")
    student_backbone = at_input_size(load_backbone(STUDENT, "package"), (3, input_size, input_size))
    fitted, seconds = {}, {}

    def timed(name, fit):
        started = time.perf_counter()
        fitted[name] = fit()
        seconds[name] = time.perf_counter() - started
        print(f"  {name}: {seconds[name]:.0f} s", flush=True)

    timed(CANDIDATES[0], lambda: create_strategy("linear").fit(labeled, backbone=teacher_backbone))
    teacher = Teacher(Path("benchmark-teacher"), fitted[CANDIDATES[0]], teacher_backbone, {}, {},
                      frozenset((r.sha256, r.label) for r in labeled.records))
    timed(CANDIDATES[1], lambda: create_strategy("linear").fit(labeled, backbone=student_backbone))
    timed(CANDIDATES[2], lambda: create_strategy("finetune", epochs=epochs, **FINETUNE).fit(
        labeled, backbone=student_backbone))
    timed(CANDIDATES[3], lambda: DistilledStudent(teacher=teacher, epochs=epochs, **FINETUNE).fit(
        labeled, backbone=student_backbone, unlabeled=pool))
    timed(CANDIDATES[4], lambda: DistilledStudent(teacher=teacher, epochs=epochs, **FINETUNE).fit(
        labeled, backbone=student_backbone, unlabeled=None))
    predictions = {name: model.predict(test) for name, model in fitted.items()}
    return fitted, predictions, seconds


def speed_ratios(fitted: dict, test: ImageSet, rounds: int) -> dict[str, float]:
    """Median per-round images/s ratio of each model's PyTorch module to the teacher's (batch of 16)."""
    images = [test.load(i) for i in range(min(16, len(test)))]
    modules = {name: model.to_module().eval() for name, model in fitted.items()}
    batches = {name: images_to_batch(images, model.backbone_.data_config) for name, model in fitted.items()}

    def runner(name):
        def run() -> int:
            with torch.inference_mode():
                modules[name](batches[name])
            return len(images)
        return run

    rates = _report.interleaved({name: runner(name) for name in modules}, rounds)
    return {name: _report.paired_ratio(rates[name], rates[CANDIDATES[0]]) for name in modules}


def accuracy_text(correct: int, n: int) -> str:
    low, high = wilson_interval(correct, n)
    return f"{100 * correct / n:.1f} ({100 * low:.1f}–{100 * high:.1f})"


def run_set(name: str, seeds: list[int], input_size: int, epochs: int, rounds: int, pool_size: int
            ) -> tuple[str, list]:
    totals = {candidate: [0, 0, 0] for candidate in CANDIDATES}  # correct, agreeing with the teacher, n
    ratios, fit_seconds = {c: [] for c in CANDIDATES}, {c: [] for c in CANDIDATES}
    for seed in seeds:
        print(f"{name}, draw {seed}", flush=True)
        labeled, pool, test = draw_project(SETS[name](), seed, pool_size)
        fitted, predictions, seconds = fit_candidates(labeled, pool, test, input_size, epochs)
        truth, teacher = test.labels, predictions[CANDIDATES[0]]
        for candidate, predicted in predictions.items():
            totals[candidate][0] += sum(p == t for p, t in zip(predicted, truth))
            totals[candidate][1] += sum(p == t for p, t in zip(predicted, teacher))
            totals[candidate][2] += len(truth)
            fit_seconds[candidate].append(seconds[candidate])
        for candidate, ratio in speed_ratios(fitted, test, rounds).items():
            ratios[candidate].append(ratio)
    rows = [[candidate, accuracy_text(correct, n), f"{100 * agree / n:.1f}", f"{np.median(ratios[candidate]):.2f}",
             f"{np.mean(fit_seconds[candidate]):.0f}"] for candidate, (correct, agree, n) in totals.items()]
    text = (f"### {name}: {N_WAY}-way, {SHOTS} labeled + {pool_size} pool images a class, {TEST} held-out a class, "
            f"{len(seeds)} draw(s) ({totals[CANDIDATES[0]][2]} held-out images in all)\n\n"
            + _report.table(["model", "held-out accuracy % (95 % CI)", "agrees with teacher %",
                             "speed vs teacher (x)", "fit s"], rows))
    return text, [totals, ratios]


def goal_rows(name: str, totals: dict, ratios: dict) -> list[list[str]]:
    def accuracy(candidate):
        correct, _, n = totals[candidate]
        return 100 * correct / n

    distilled, direct = accuracy(CANDIDATES[3]), accuracy(CANDIDATES[2])
    n = totals[CANDIDATES[2]][2]
    low, high = wilson_interval(totals[CANDIDATES[3]][0], n)
    verdict = "met" if distilled > direct and 100 * low > direct else \
        ("tie (within the CI)" if 100 * low <= direct <= 100 * high else "missed")
    rows = [[f"distilled (+ pool) beats the student trained directly, {name}",
             f"{distilled:.1f} vs {direct:.1f} (distilled 95 % CI {100 * low:.1f}–{100 * high:.1f})", verdict]]
    gap = accuracy(CANDIDATES[0]) - distilled
    speed = float(np.median(ratios[CANDIDATES[3]]))
    rows.append([f"student keeps the teacher's accuracy within 5 points at >= 2x its speed, {name}",
                 f"{gap:+.1f} points below the teacher, {speed:.2f}x its speed",
                 "met" if gap <= 5 and speed >= 2 else "missed"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 draw per set, student at 96 px, 5 epochs, 10 pool images a class (default: 2 draws, "
                             "128 px, 8 epochs, 15 pool images)")
    parser.add_argument("--input-size", type=int, default=None, help="student input size (px)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--pool", type=int, default=None, help="pool images a class")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()
    args.input_size = args.input_size or (96 if args.quick else 128)
    args.epochs = args.epochs or (5 if args.quick else 8)
    args.pool = args.pool or (10 if args.quick else 15)
    started = time.perf_counter()
    info = _report.machine_info()
    seeds = [0] if args.quick else [0, 1]
    sections = [f"Teacher `{TEACHER}` (260 px) + linear; student `{STUDENT}` at {args.input_size} px, fine-tuned "
                f"{args.epochs} epochs ({FINETUNE}); distillation T=4, alpha=0.7. See the script's docstring."]
    goals = []
    for name in SETS:
        text, (totals, ratios) = run_set(name, seeds, args.input_size, args.epochs, args.rounds, args.pool)
        sections.append(text)
        goals += goal_rows(name, totals, ratios)
    _report.write_result("distill", "Issue 13. Distillation: a lite0 student taught by a lite2 teacher", sections,
                         info=info, seconds=time.perf_counter() - started, goals=goals)


if __name__ == "__main__":
    main()
