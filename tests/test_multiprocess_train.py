"""``fsl-app train ... --devices N``: fine-tuning on 2 CPU processes (Lightning Fabric, DDP on gloo) follows the loss
curve of one process, and the run it writes predicts like any other run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_BACKBONE, make_digits_folder

pytest.importorskip("lightning_fabric", reason="Lightning Fabric is not installed: pip install 'fsl_app[distributed]'")

PARAMS = ["epochs=4", "batch_size=4", "lr=0.05", "mode=full", "augment=none", "val_fraction=0", "head_init=random"]


def _train(data: Path, out: Path, devices: int) -> dict:
    command = [sys.executable, "-m", "fsl_app.cli", "train", str(data), "--strategy", "finetune", "--backbone",
               TINY_BACKBONE, "--weights", "random", "--protocol", "holdout", "--devices", str(devices),
               "--accelerator", "cpu", "--out", str(out), "--json", *[f"--param={p}" for p in PARAMS]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: 2 processes on 2 cores
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_loss_curve_of_one(tmp_path):
    data = make_digits_folder(tmp_path / "digits", classes=(0, 1, 2), per_class=4, size=32)  # 12 = 3 batches of 4
    one, two = _train(data, tmp_path / "one", 1), _train(data, tmp_path / "two", 2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    single, double = _losses(Path(one["run_dir"])), _losses(Path(two["run_dir"]))
    assert len(single) == len(double) == 4
    assert max(single) - min(single) > 0.05, f"the loss barely moved, the comparison would prove little: {single}"
    assert double == pytest.approx(single, abs=2e-3)

    from fsl_app.dataset import ImageSet
    from fsl_app.runs import load_run

    images = ImageSet.from_folder(data)
    probabilities = [load_run(run)[0].predict_proba(images) for run in (one["run_dir"], two["run_dir"])]
    assert probabilities[1].numpy() == pytest.approx(probabilities[0].numpy(), abs=2e-3)


def test_devices_is_refused_for_strategies_that_do_not_train_the_backbone(digits_dir, capsys):
    from fsl_app.cli import main

    assert main(["train", str(digits_dir), "--strategy", "linear", "--devices", "2"]) == 2
    assert "--strategy finetune" in capsys.readouterr().err
