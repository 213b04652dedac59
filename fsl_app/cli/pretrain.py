"""``fsl-app pretrain PROJECT_OR_DIR --method NAME [--out CKPT]``: train a backbone on many base classes and save it
as a checkpoint (safetensors + JSON sidecar) that ``--weights CKPT`` and the Train page's weights picker use.

Argument parsing imports nothing heavy; torch and timm load inside the command. Without ``--out`` the checkpoint goes
to the workspace's backbone folder, where every project's Train page offers it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .. import DEFAULT_BACKBONE
from ._args import UserError

PROGRESS_EVERY = 10  # episodes between two progress lines of an episodic method


def add_pretrain_command(commands) -> None:
    parser = commands.add_parser("pretrain", help="train a backbone on a project with many classes, for use on new "
                                                  "classes with --weights CKPT")
    parser.add_argument("data", metavar="PROJECT_OR_DIR", help="project name or ImageFolder tree of base classes")
    parser.add_argument("--method", default="supervised", help="supervised | protonet | maml (default: %(default)s)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm model name (default: %(default)s)")
    parser.add_argument("--weights", default="auto", help="starting weights: auto | random | PATH (default: auto)")
    parser.add_argument("--epochs", type=int, default=5, help="supervised: passes over the base images")
    parser.add_argument("--batch-size", type=int, default=32, help="supervised: images per step")
    parser.add_argument("--episodes", type=int, default=200, help="protonet, maml: training episodes")
    parser.add_argument("--n-way", type=int, default=5, help="protonet, maml: classes per episode")
    parser.add_argument("--k-shot", type=int, default=5, help="protonet, maml: shots per class and episode")
    parser.add_argument("--queries", type=int, default=10, help="protonet, maml: queries per class and episode")
    parser.add_argument("--inner-steps", type=int, default=5, help="maml: adaptation steps per episode")
    parser.add_argument("--inner-lr", type=float, default=0.1,
                        help="maml: adaptation learning rate (SGD; backbone weights at a hundredth of it)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    parser.add_argument("--last-n", type=int, default=None,
                        help="train only the last N layer groups (default: every layer)")
    parser.add_argument("--augment", default="light", help="augmentation preset (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, metavar="CKPT",
                        help="checkpoint to write (.safetensors; default: the workspace's backbone folder, offered "
                             "in every project's Train page)")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    parser.add_argument("--home", default=None, help="project store folder (default: $FSL_APP_HOME)")
    parser.add_argument("--json", action="store_true", help="print the checkpoint's provenance as JSON")
    parser.set_defaults(handler=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from ..backbones import load_backbone, pretrained_folder
    from ..pretrain import (PretrainSettings, check_base_classes, checkpoint_path, checkpoint_provenance,
                            pretrain_backbone, save_checkpoint)

    images, source = _base_images(args.data, args.home)
    settings = PretrainSettings(epochs=args.epochs, batch_size=args.batch_size, episodes=args.episodes,
                                n_way=args.n_way, k_shot=args.k_shot, n_query=args.queries, lr=args.lr,
                                last_n=args.last_n, augment=args.augment, seed=args.seed,
                                inner_steps=args.inner_steps, inner_lr=args.inner_lr)
    _check_counts(args)
    check_base_classes(images.labeled(), args.method, settings)  # before loading a backbone: fail fast
    default_out = pretrained_folder(args.home) / f"{_slug(source)}-{args.method}-{_slug(args.backbone)}"
    out = checkpoint_path(args.out or default_out)
    if out.exists() and not args.force:
        raise UserError(f"{out} already exists. Pass --force to replace it, or another --out.")
    backbone = load_backbone(args.backbone, args.weights)
    trained = pretrain_backbone(images, backbone, method=args.method, settings=settings,
                                on_step=None if args.json else _progress_printer(args.method))
    provenance = checkpoint_provenance(backbone, images, method=args.method, settings=settings, source=source)
    path = save_checkpoint(trained, out, provenance)
    if args.json:
        print(json.dumps({"checkpoint": str(path), **provenance}, ensure_ascii=False))
    else:
        print(f"{args.method} pretraining of {backbone.name} on {len(provenance['base_classes'])} classes "
              f"({provenance['n_images']} images) saved to {path}\nuse it with: --backbone {backbone.name} "
              f"--weights {path}")
    return 0


def _check_counts(args) -> None:
    for name in ("epochs", "episodes", "batch_size", "k_shot", "queries", "inner_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")


def _base_images(data: str, home: str | None):
    """(labeled ImageSet, source name): an ImageFolder tree (source: its folder name) or a project of the store."""
    from ..dataset import ImageSet

    if Path(data).is_dir():
        return ImageSet.from_folder(data).labeled(), Path(data).resolve().name
    from ..store import resolve_image_set

    return resolve_image_set(data, home=home).labeled(), data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "base"


def _progress_printer(method: str):
    def report(step) -> None:
        if method == "supervised" or step.step % PROGRESS_EVERY == 0 or step.step == 1:
            unit = "epoch" if method == "supervised" else "episode"
            accuracy = f" train_acc={step.train_acc:.3f}" if step.train_acc is not None else ""
            accuracy += f" query_acc={step.val_acc:.3f}" if step.val_acc is not None else ""  # maml: adapted queries
            print(f"{unit} {step.epoch} loss={step.loss:.4f}{accuracy}", file=sys.stderr)

    return report


def warn_leakage(backbone, classes) -> None:
    """Print to stderr which of ``classes`` the backbone checkpoint was trained on (nothing for other weights)."""
    from ..backbones import leakage_warning

    warning = leakage_warning(backbone.provenance, classes)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
