"""``fsl-app``: the command-line front end over the same core as the UI.

    fsl-app train DATA_DIR --strategy NAME [--backbone NAME] [--weights auto|random|PATH] [--out RUN_DIR] [--seed N]
              [--no-pool]
    fsl-app evaluate DATA_DIR --strategy NAME --n-way N --k-shot K [--queries Q] [--episodes E] [--json]
              [--transductive] [--pool N] [--pool-imbalance ALPHA] [--pool-outliers FRACTION] [--query-data DIR]
    fsl-app export RUN_DIR --format onnx|torchscript|bundle --out PATH
    fsl-app predict MODEL_PATH IMAGE_OR_DIR... [--json]
    fsl-app compare RUN_DIR... [--json] [--seed N]
    fsl-app pretrain PROJECT_OR_DIR --method supervised|protonet|maml [--epochs N | --episodes N --n-way N] [--out CKPT]
    fsl-app ui [--port N] [--address A] [--password-file FILE] [--no-auth]

DATA_DIR is an ImageFolder tree (one sub-folder per class) or the name of a project in the store. Its unlabeled
images (loose files at the top of the tree, or the project's unlabeled images) are the pool that ``train`` gives to
the strategies that learn from it (``uses_unlabeled``); ``--no-pool`` trains without them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .. import DEFAULT_BACKBONE
from ..distributed_train import add_devices_arguments
from ..ray_predict import add_ray_arguments
from .pools import (add_pool_arguments, check_pool_arguments, episode_setting_text, load_query_images,
                    note_ignored_pool, pool_text, training_pool)
from ._args import UserError, parse_params
from .pretrain import add_pretrain_command, warn_leakage
from .ui import add_ui_arguments

EXIT_USAGE = 2




def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA_DIR", help="ImageFolder tree or project name")
    parser.add_argument("--strategy", required=True, help="linear, protonet, finetune, ...")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm model name (default: %(default)s)")
    parser.add_argument("--weights", default="auto", help="auto | package | hub | hub-cache | random | PATH")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="strategy hyperparameter, repeatable (e.g. --param classifier=svm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=None, help="project store folder (default: $FSL_APP_HOME)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsl-app", description="Few-shot image classification studio.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="evaluate, fit and save a run folder")
    _add_model_options(train)
    train.add_argument("--out", default=None, help="run folder to create (default: runs/<time>-<strategy>)")
    train.add_argument("--protocol", default="auto", choices=["auto", "loo", "kfold", "holdout"])
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON, no progress bars")
    train.add_argument("--forecast", action="store_true",
                       help="also forecast the accuracy with more images per class (always part of --json)")
    train.add_argument("--no-pool", action="store_true",
                       help="train without DATA_DIR's unlabeled images (pool-aware strategies use them by default)")
    add_devices_arguments(train)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="N-way K-shot episodes: mean accuracy and 95%% CI")
    _add_model_options(evaluate)
    evaluate.add_argument("--n-way", type=int, required=True)
    evaluate.add_argument("--k-shot", type=int, required=True)
    evaluate.add_argument("--queries", type=int, default=15)
    evaluate.add_argument("--episodes", type=int, default=300)
    evaluate.add_argument("--json", action="store_true")
    add_pool_arguments(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser("predict", help="top-k labels for images with a run or exported model")
    predict.add_argument("model", metavar="MODEL_PATH",
                         help="run folder (or its .zip), .onnx, .pt (TorchScript) or bundle .zip")
    predict.add_argument("images", metavar="IMAGE_OR_DIR", nargs="*")
    predict.add_argument("--batch", metavar="DIR", default=None, help="predict every image under DIR")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--json", action="store_true")
    add_ray_arguments(predict)
    predict.set_defaults(handler=cmd_predict)

    ui = commands.add_parser("ui", help="start the Streamlit studio (a password is required off loopback)")
    add_ui_arguments(ui)

    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands) -> None:
    """Commands defined in their own modules of this package (export; project and suggest; compare)."""
    from .compare import add_compare_command
    from .distill import add_distill_command
    from .export import add_export_command
    from .store import add_store_commands

    add_export_command(commands)
    add_store_commands(commands)
    add_compare_command(commands)
    add_pretrain_command(commands)
    add_distill_command(commands)


def _resolve_images(data: str, home: str | None):
    from ..dataset import ImageSet

    if Path(data).is_dir():
        return ImageSet.from_folder(data)
    from ..store import resolve_image_set

    return resolve_image_set(data, home=home)


def _strategy_and_backbone(args):
    from ..backbones import load_backbone
    from ..strategies import create_strategy

    params = parse_params(args.param)
    if "seed" in _strategy_param_names(args.strategy) and "seed" not in params:
        params["seed"] = args.seed
    strategy = create_strategy(args.strategy, **params)
    return strategy, load_backbone(args.backbone, args.weights)


def _strategy_param_names(name: str) -> list[str]:
    from ..strategies import get_strategy_class

    return get_strategy_class(name).param_names()


def cmd_train(args) -> int:
    if args.devices is not None:
        from ..distributed_train import train_from_cli

        return train_from_cli(args)
    from ..dataset import training_warnings
    from ..evaluation import metrics_warnings
    from ..intervals import format_accuracy
    from ..learning_curve import forecast_images
    from ..runs import new_run_name, train_run

    images = _resolve_images(args.data, args.home)
    for warning in training_warnings(images):
        print(f"warning: {warning}", file=sys.stderr)
    strategy, backbone = _strategy_and_backbone(args)
    warn_leakage(backbone, images.labeled().classes)
    pool = training_pool(images, strategy, no_pool=args.no_pool)
    out = Path(args.out) if args.out else Path("runs") / new_run_name(strategy.name)
    bar = _Progress(enabled=not args.json)

    def on_step(step) -> None:
        if not args.json:
            val = f" val_acc={step.val_acc:.3f}" if step.val_acc is not None else ""
            stage = "final fit" if bar.phase == "fit" else "evaluation split"
            bar.write(f"{stage}: epoch {step.epoch} loss={step.loss:.4f}{val}")

    result = train_run(images, strategy, backbone, out, protocol=args.protocol, seed=args.seed, on_step=on_step,
                       on_progress=bar.update, pool=pool)
    bar.close()
    metrics = {**result.metrics, "run_dir": str(result.run_dir)}
    forecast = None
    if args.json or args.forecast:  # a few seconds on cached features, so only when asked for
        forecast = forecast_images(images, strategy, backbone, seed=args.seed)
        metrics["forecast"] = forecast.to_dict()
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        print(f"{metrics['protocol']} accuracy {format_accuracy(metrics)} "
              f"(balanced {100 * metrics['balanced_accuracy']:.1f}%), "
              f"{metrics['n_images']} images{pool_text(metrics)}, {metrics['train_seconds']:.1f} s")
        for warning in metrics_warnings(metrics):
            print(f"warning: {warning}", file=sys.stderr)
        if forecast is not None:
            print(f"forecast: {forecast.message}")
        print(f"run saved to {result.run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluation import evaluate_episodes
    from ..intervals import format_accuracy

    check_pool_arguments(args)
    images = _resolve_images(args.data, args.home)
    query_images = load_query_images(args.query_data)
    strategy, backbone = _strategy_and_backbone(args)
    warn_leakage(backbone, images.labeled().classes)
    note_ignored_pool(args, strategy)
    bar = _Progress(enabled=not args.json)
    report = evaluate_episodes(strategy, images, backbone, n_way=args.n_way, k_shot=args.k_shot,
                               n_query=args.queries, episodes=args.episodes, seed=args.seed,
                               progress=(lambda d, t: bar.update("episodes", d, t)) if not args.json else None,
                               transductive=args.transductive, pool=args.pool, pool_imbalance=args.pool_imbalance,
                               pool_outliers=args.pool_outliers, query_images=query_images)
    bar.close()
    settings = {"transductive": args.transductive, "pool": args.pool, "pool_imbalance": args.pool_imbalance,
                "pool_outliers": args.pool_outliers, "query_data": args.query_data}
    result = {"strategy": strategy.name, "params": strategy.get_params(), "backbone": backbone.id, **settings,
              **{k: v for k, v in report.to_dict().items() if k != "accuracies"}}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"{args.n_way}-way {args.k_shot}-shot, {args.episodes} episodes{episode_setting_text(args)}: "
              f"{format_accuracy(report)}")
    return 0


def cmd_predict(args) -> int:
    if args.ray is not None:
        from ..ray_predict import run_from_cli

        return run_from_cli(args)
    from ..export.loading import open_predictor  # .onnx and bundles: onnxruntime + numpy + pillow, no torch
    from ..images import is_image_name
    from ..store.names import printable

    paths = []
    for item in list(args.images) + ([args.batch] if args.batch else []):
        path = Path(item)
        if path.is_dir():
            paths.extend(p for p in sorted(path.rglob("*")) if p.is_file() and is_image_name(p.name))
        else:
            paths.append(path)
    if not paths:
        raise UserError("no images given. Pass image files or folders after the model path.")
    predictor = open_predictor(args.model)
    results = predictor.predict_paths(paths, top_k=args.top_k, progress=not args.json)
    if args.json:
        print(json.dumps(results, ensure_ascii=False))
    else:
        for item in results:
            if "error" in item:
                print(printable(f"{item['image']}: ERROR {item['error']}"))
                continue
            shown = item["top_k"] if item["label"] == "unknown" else item["top_k"][1:]
            alternatives = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in shown)
            ood = f"  ood {item['ood_score']:.2f}" if item.get("ood_score") is not None else ""
            print(printable(f"{item['image']}: {item['label']} ({item['probability']:.2f})"
                            + (f"  [{alternatives}]" if alternatives else "") + ood))
    return 0 if all("error" not in item for item in results) else 1


class _Progress:
    """A tqdm bar per phase, silent when disabled (e.g. under --json)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.print_enabled = enabled
        self.bar = None
        self.phase = None

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            if phase == "done":  # saving takes no time: no bar
                return
            self.bar = tqdm(total=total, desc=phase, leave=False)
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()

    def write(self, message: str) -> None:
        if not self.print_enabled:
            return
        if self.bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)  # above the bar, which stays intact
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    # DataError, ImageError, BackboneError and ModelFileError are ValueErrors (naming them would import torch here)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as error:
        if args.verbose:
            raise
        print(f"fsl-app {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
