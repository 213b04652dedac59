"""``fsl-app distill``: a finished run teaches a smaller or lower-resolution student (parsing imports no torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._args import parse_params


def add_distill_command(commands) -> None:
    """Register ``fsl-app distill TEACHER_RUN DATA_DIR --student-backbone NAME [--input-size N] [--epochs N]
    [--temperature T] [--alpha A] [--out RUN_DIR]``."""
    parser = commands.add_parser("distill", help="train a smaller student run on a finished run's predictions")
    parser.add_argument("teacher", metavar="TEACHER_RUN", help="finished run folder (any strategy) to learn from")
    parser.add_argument("data", metavar="DATA_DIR", help="ImageFolder tree or project name; loose files = the pool")
    parser.add_argument("--student-backbone", required=True, help="timm model name, e.g. tf_efficientnet_lite0")
    parser.add_argument("--weights", default="auto", help="student weights: auto | package | hub | random | PATH")
    parser.add_argument("--input-size", type=int, default=None, metavar="N",
                        help="student input N x N px (default: the backbone's own); smaller is faster")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=4.0, help="softening of the teacher's probabilities")
    parser.add_argument("--alpha", type=float, default=0.7,
                        help="weight of the distillation loss; 1 - alpha weighs the true labels")
    parser.add_argument("--no-pool", action="store_true", help="learn from the labeled images only")
    parser.add_argument("--protocol", default=None, choices=["kfold", "holdout"],
                        help="evaluation protocol (default: the teacher's; leave-one-out becomes holdout)")
    parser.add_argument("--seed", type=int, default=None, help="default: the teacher's seed")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="fine-tuning hyperparameter of the student, repeatable (e.g. --param mode=full)")
    parser.add_argument("--out", default=None, metavar="RUN_DIR",
                        help="run folder to create (default: runs/<time>-distilled-<id>)")
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON, no progress")
    parser.add_argument("--home", default=None, help="project store folder (default: $FSL_APP_HOME)")
    parser.set_defaults(handler=cmd_distill)


def cmd_distill(args) -> int:
    from ..distill import distill_run
    from ..intervals import format_accuracy

    images = _images(args.data, args.home)

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    def on_step(step) -> None:
        if not args.json:
            say(f"epoch {step.epoch} loss={step.loss:.4f}")

    def on_progress(phase: str, done: int, total: int) -> None:
        if not args.json and phase != "done":
            say(f"{phase} {done}/{total}")

    result = distill_run(args.teacher, images, args.out, student_backbone=args.student_backbone,
                         weights=args.weights, input_size=args.input_size, epochs=args.epochs,
                         temperature=args.temperature, alpha=args.alpha, use_pool=not args.no_pool,
                         protocol=args.protocol, seed=args.seed, student_params=parse_params(args.param),
                         on_step=on_step, on_progress=on_progress, on_warning=lambda w: say(f"warning: {w}"))
    metrics = {**result.run.metrics, "run_dir": str(result.run.run_dir), "teacher_accuracy": result.teacher_accuracy,
               "warnings": result.warnings}
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
        return 0
    teacher = "" if result.teacher_accuracy is None else f" (teacher {100 * result.teacher_accuracy:.1f}%)"
    print(f"student {metrics['protocol']} accuracy {format_accuracy(metrics)}{teacher}, {metrics['n_images']} "
          f"labeled + {metrics.get('pool_size', 0)} pool images, {metrics['train_seconds']:.1f} s")
    print(f"run saved to {Path(result.run.run_dir)}")
    return 0


def _images(data: str, home: str | None):
    """DATA_DIR as an ImageSet: an ImageFolder tree, or a project of the store by name (as ``train`` reads it)."""
    from ..dataset import ImageSet

    if Path(data).is_dir():
        return ImageSet.from_folder(data)
    from ..store import resolve_image_set

    return resolve_image_set(data, home=home)
