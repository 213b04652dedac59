"""``fsl-app predict MODEL --batch DIR --ray``: Ray Data scoring on a local Ray gives the local path's predictions,
resumes without scoring an image twice or losing one, and fails fast on an address that does not answer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import make_digits_folder

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fsl_app[ray]' to run the Ray tests")

from fsl_app import ray_predict  # noqa: E402


def test_an_address_that_does_not_answer_fails_within_seconds():
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    started = time.perf_counter()
    with pytest.raises(ray_predict.RayPredictError, match="no Ray cluster answers"):
        ray_predict.connect("127.0.0.1:9", timeout=2)  # the discard port: nothing listens
    with pytest.raises(ray_predict.RayPredictError, match="no valid port"):
        ray_predict.connect("ray://head:port")
    assert time.perf_counter() - started < 5
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def onnx_model(digits_set, tiny_backbone, tmp_path_factory) -> Path:
    from fsl_app.export import export_run
    from fsl_app.runs import train_run
    from fsl_app.strategies import create_strategy

    folder = tmp_path_factory.mktemp("ray-model")
    run = train_run(digits_set, create_strategy("linear"), tiny_backbone, folder / "run")
    return export_run(run.run_dir, "onnx", folder / "model.onnx")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """30 unseen digits in sub-folders, and one file that is not an image."""
    root = make_digits_folder(tmp_path_factory.mktemp("ray-images"), classes=(0, 1, 2, 3, 4), per_class=6, offset=6)
    (root / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def local_rows(onnx_model, image_folder) -> dict[str, dict]:
    """What the local path (``fsl-app predict MODEL --batch DIR``) predicts, as output rows by absolute path."""
    from fsl_app.export import load_predictor

    paths = [Path(path) for path in ray_predict.list_images(image_folder)]
    results = load_predictor(onnx_model).predict_paths(paths, top_k=3)
    return {row["image"]: row for row in map(ray_predict.prediction_row, results)}


def _assert_same(table, local_rows: dict[str, dict]) -> None:
    assert sorted(table["image"]) == sorted(local_rows), "an image is missing or scored twice"
    for row in table.to_dict("records"):
        expected = local_rows[row["image"]]
        assert row["label"] == expected["label"] and row["error"] == expected["error"]
        if not expected["error"]:
            assert row["probability"] == pytest.approx(expected["probability"], abs=1e-5)
            assert [t["label"] for t in json.loads(row["top_k"])] == \
                [t["label"] for t in json.loads(expected["top_k"])]


class DyingScorer(ray_predict.ImageScorer):
    """Kills its Ray worker process in the middle of its second batch, once (a marker file remembers)."""

    marker: str = ""

    def __init__(self, model: str, top_k: int = 3):
        super().__init__(model, top_k)
        self.calls = 0

    def __call__(self, batch: dict) -> dict:
        import os

        self.calls += 1
        if self.calls == 2 and not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            os._exit(1)
        return super().__call__(batch)


def test_an_interrupted_run_resumes_with_each_image_once_though_a_worker_dies(local_ray, onnx_model, image_folder,
                                                                                 local_rows, tmp_path, capsys):
    """A run that died after writing two parts (and a half-written temp file) resumes with the rest only; a worker
    killed mid-run is replaced and its batch scored again; the predictions are the local path's, each image once;
    a rerun through the CLI scores nothing. One Ray Data run, one actor: Ray workers start slowly on 2 cores."""
    import sys

    import pandas as pd

    from fsl_app.cli import main

    out = tmp_path / "scores.csv"
    done = pd.DataFrame(list(local_rows.values())[:10])
    ray_predict.write_part(out, done.iloc[:6])
    ray_predict.write_part(out, done.iloc[6:])
    (ray_predict.parts_folder(out) / ".tmp-killed.tmp").write_bytes(b"PAR1 half")  # what a kill mid-write leaves
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    DyingScorer.marker = str(tmp_path / "died")
    report = ray_predict.predict_folder_ray(onnx_model, image_folder, out, actors=1, batch_size=4, part_rows=4,
                                            scorer=DyingScorer)
    assert (tmp_path / "died").exists(), "the worker never died: the test proved nothing"
    assert (report.n_images, report.n_scored, report.n_resumed, report.n_errors) == (31, 21, 10, 1)
    assert not ray_predict.parts_folder(out).exists()
    _assert_same(ray_predict.read_predictions(out), local_rows)
    command = ["predict", str(onnx_model), "--batch", str(image_folder), "--ray", "--out", str(out), "--json"]
    assert main(command) == 1  # one unreadable file
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"out": str(out), "images": 31, "scored": 0, "resumed": 31, "errors": 1}


def test_parts_merge_into_parquet_once_per_image(local_rows, tmp_path):
    import pandas as pd

    out = tmp_path / "scores.parquet"
    rows = pd.DataFrame(list(local_rows.values()))
    ray_predict.write_part(out, rows.iloc[:20])
    ray_predict.merge_parts(out)
    ray_predict.write_part(out, rows.iloc[15:])  # overlaps the merged file: a part written before a crash
    table = ray_predict.merge_parts(out)
    assert list(table["image"]) == sorted(local_rows) and not ray_predict.parts_folder(out).exists()
    _assert_same(pd.read_parquet(out), local_rows)


def test_cli_needs_a_folder_and_an_output_file(onnx_model, image_folder, capsys):
    from fsl_app.cli import main

    assert main(["predict", str(onnx_model), "--batch", str(image_folder), "--ray"]) == 2
    assert "--out predictions.parquet" in capsys.readouterr().err
    assert main(["predict", str(onnx_model), "--ray", "--out", "x.txt"]) == 2
    assert "--batch DIR" in capsys.readouterr().err
