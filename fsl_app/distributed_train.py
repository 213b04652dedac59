"""Multi-process (multi-GPU, multi-node) fine-tuning with Lightning Fabric: ``fsl-app train ... --devices N``.

The command never trains in its own process: it writes the request to a JSON file and starts ``python -m
fsl_app.distributed_train REQUEST``, whose Fabric (``strategy="ddp"``: NCCL on GPUs, gloo on CPUs) launches the other
N-1 processes. So a front that calls :func:`train_in_subprocess` (the CLI, a studio job) never forks a process that
holds CUDA. Every process runs the same :func:`fsl_app.runs.train_run` (evaluation splits, then the final fit) inside
``_training.data_parallel(fabric)``: the fine-tuning loops split every batch of ``batch_size`` images over the
processes and DDP averages the gradients, so N processes follow the loss curve of one. Process 0 writes the run
folder; the others write theirs to a temporary folder that is deleted.

Multi-node: run the same command on every node with ``--num-nodes M`` and the environment Fabric reads
(``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``), or under SLURM / torchrun, which set it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BACKBONE_TRAINING = ("finetune",)  # strategies whose fit trains the backbone in _training's data-parallel loops


class DistributedTrainingError(ValueError):
    """A request that cannot train on several processes, with what to do instead."""


def check_request(strategy: str, devices: int, num_nodes: int = 1) -> None:
    if strategy not in BACKBONE_TRAINING:
        raise DistributedTrainingError(
            f"--devices trains the backbone on several processes; {strategy!r} does not train it (frozen-feature "
            f"strategies fit in seconds on one). Use --strategy {' or '.join(BACKBONE_TRAINING)}, or drop --devices.")
    if devices < 1 or num_nodes < 1:
        raise DistributedTrainingError(f"--devices ({devices}) and --num-nodes ({num_nodes}) must be at least 1.")


def train_in_subprocess(request: dict, *, timeout: float | None = None) -> dict:
    """Run ``request`` (the fields of :func:`_train`) in ``python -m fsl_app.distributed_train``; returns the final
    metrics of the run (with ``run_dir``). The child's progress lines go to this process's stderr."""
    check_request(request["strategy"], request["devices"], request.get("num_nodes", 1))
    with tempfile.TemporaryDirectory(prefix="fsl_app_ddp_") as folder:
        request_file, result_file = Path(folder) / "request.json", Path(folder) / "result.json"
        request_file.write_text(json.dumps({**request, "result_file": str(result_file)}), encoding="utf-8")
        completed = subprocess.run([sys.executable, "-m", "fsl_app.distributed_train", str(request_file)],
                                   stdout=subprocess.DEVNULL, timeout=timeout, env={**os.environ})
        if completed.returncode != 0 or not result_file.is_file():
            raise DistributedTrainingError(f"the {request['devices']}-process training failed (exit code "
                                           f"{completed.returncode}); its error is printed above.")
        return json.loads(result_file.read_text(encoding="utf-8"))


def _train(request: dict) -> None:
    """One process of the run: join the Fabric, train, and (process 0) write the run folder and the result file."""
    from lightning_fabric import Fabric

    from .backbones import load_backbone
    from .dataset import ImageSet
    from .runs import train_run
    from .strategies import create_strategy
    from .strategies._training import data_parallel

    import torch

    accelerator = request.get("accelerator", "auto")
    on_gpu = accelerator != "cpu" and torch.cuda.is_available()
    fabric = Fabric(accelerator=accelerator, devices=request["devices"], num_nodes=request.get("num_nodes", 1),
                    strategy="ddp", precision="16-mixed" if on_gpu else "32-true")  # AMP on GPUs, as in one process
    fabric.launch()
    images = _load_images(request["data"], request.get("home"), ImageSet)
    strategy = create_strategy(request["strategy"], **request.get("params", {}))
    backbone = load_backbone(request["backbone"], request.get("weights", "auto"))
    leader = fabric.global_rank == 0
    with tempfile.TemporaryDirectory(prefix=f"fsl_app_rank{fabric.global_rank}_") as scratch, data_parallel(fabric):
        out = Path(request["out"]) if leader else Path(scratch) / "run"

        def on_step(step) -> None:
            if leader:
                print(f"epoch {step.epoch} loss={step.loss:.4f}", file=sys.stderr, flush=True)

        result = train_run(images, strategy, backbone, out, protocol=request.get("protocol", "auto"),
                           seed=request.get("seed", 0), on_step=on_step)
    fabric.barrier()
    if leader:
        metrics = {**result.metrics, "run_dir": str(result.run_dir), "devices": request["devices"],
                   "num_nodes": request.get("num_nodes", 1), "world_size": fabric.world_size}
        Path(request["result_file"]).write_text(json.dumps(metrics), encoding="utf-8")


def _load_images(data: str, home: str | None, image_set_type):
    if Path(data).is_dir():
        return image_set_type.from_folder(data)
    from .store import resolve_image_set

    return resolve_image_set(data, home=home)


def add_devices_arguments(train) -> None:
    """``--devices N``, ``--num-nodes M``, ``--accelerator`` on the ``train`` parser (stdlib only)."""
    train.add_argument("--devices", type=int, default=None, metavar="N",
                       help="fine-tune on N processes (GPUs, or CPU processes on gloo) with Lightning Fabric DDP; "
                            "needs the 'distributed' extra")
    train.add_argument("--num-nodes", type=int, default=1, metavar="M", help="with --devices: machines (default 1)")
    train.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "gpu"],
                       help="with --devices: where the processes train (default: GPUs when present)")


def train_from_cli(args) -> int:
    """``fsl-app train DATA --strategy finetune --devices N``: train in a subprocess, print the summary."""
    from .cli._args import parse_params

    check_request(args.strategy, args.devices, args.num_nodes)
    params = parse_params(args.param)
    params.setdefault("seed", args.seed)
    out = Path(args.out) if args.out else Path("runs") / _run_name(args.strategy)
    request = {"data": str(args.data), "home": args.home, "strategy": args.strategy, "params": params,
               "backbone": args.backbone, "weights": args.weights, "seed": args.seed, "out": str(out.resolve()),
               "protocol": args.protocol, "devices": args.devices, "num_nodes": args.num_nodes,
               "accelerator": args.accelerator}
    metrics = train_in_subprocess(request)
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        print(f"{metrics['protocol']} accuracy {100 * metrics['accuracy']:.1f}% on {metrics['world_size']} "
              f"process(es), {metrics['train_seconds']:.1f} s\nrun saved to {metrics['run_dir']}")
    return 0


def _run_name(strategy: str) -> str:
    from .runs import new_run_name

    return new_run_name(strategy)


if __name__ == "__main__":
    _train(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
