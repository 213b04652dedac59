"""The domain-shift check of a project (labeled images vs the pool or a folder) and `fsl-app project stats --shift`.

Real images: scikit-learn's handwritten digits as the labeled domain, the same kind of digits (other samples) as an
unshifted pool, and inverted digits (white background) as a shifted one. The tiny random ``test_efficientnet``
separates those two domains; features are cached, so each backbone runs once per image.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import ImageOps

from fsl_app import shift_check
from fsl_app.backbones import load_backbone
from fsl_app.cli import main
from fsl_app.dataset import DataError
from fsl_app.shift_check import check_project_shift, missing_images_message
from fsl_app.store import create_project

try:
    from tests.conftest_store import digit_image, encode
except ModuleNotFoundError:
    from conftest_store import digit_image, encode

TINY = "test_efficientnet"
LABELED = range(0, 30)


def digit_files(indices, *, inverted: bool = False, prefix: str = "digit") -> list[tuple[str, bytes]]:
    files = []
    for index in indices:
        image = digit_image(index, 32).convert("RGB")
        files.append((f"{prefix}_{index:04d}.png", encode(ImageOps.invert(image) if inverted else image, "PNG")))
    return files


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("shift-home")


def new_project(home, name: str, pool: list[tuple[str, bytes]], labeled=LABELED):
    project = create_project(name, home=home)
    if labeled:
        project.import_files(digit_files(labeled), "digits")
    if pool:
        project.import_files(pool)
    return project


@pytest.fixture(scope="module")
def inverted_project(home):
    return new_project(home, "inverted pool", digit_files(range(100, 130), inverted=True, prefix="inverted"))


@pytest.fixture(scope="module")
def same_project(home):
    return new_project(home, "same pool", digit_files(range(100, 130), prefix="pool"))


def test_an_inverted_pool_is_flagged_with_its_furthest_images(inverted_project):
    check = check_project_shift(inverted_project, backbone_name=TINY)
    assert check.applicable and check.shifted
    assert check.report.p_value < 0.01 and check.message == check.report.verdict
    assert check.message.startswith("shift detected")
    assert (check.n_labeled, check.n_target, check.target) == (30, 30, "the unlabeled pool")
    assert (check.backbone, check.backbone_origin) == (TINY, "chosen")
    pool = {image.id: image for image in inverted_project.images(labeled=False)}
    assert len(check.furthest) == 10
    for row in check.furthest:
        assert row.name == pool[row.image_id].source_name and row.name.startswith("inverted_")
        assert row.path == str(pool[row.image_id].path)
    scores = [row.score for row in check.furthest]
    assert scores == sorted(scores, reverse=True) and min(scores) > 2  # far beyond the labeled images' spacing


def test_a_same_domain_pool_is_not_flagged(same_project):
    check = check_project_shift(same_project, backbone_name=TINY, seed=0)
    assert check.applicable and not check.shifted
    assert check.message.startswith("no measurable shift") and check.report.p_value > 0.2


def test_the_few_odd_images_of_a_pool_rank_furthest(home):
    odd = digit_files(range(200, 204), inverted=True, prefix="odd")
    project = new_project(home, "mixed pool", digit_files(range(100, 124), prefix="pool") + odd)
    check = check_project_shift(project, backbone_name=TINY, n_furthest=4)
    assert sorted(row.name for row in check.furthest) == sorted(name for name, _ in odd)


def test_a_folder_about_to_be_predicted_is_compared_instead_of_the_pool(same_project, tmp_path):
    for name, data in digit_files(range(300, 320), inverted=True):
        folder = tmp_path / "to_predict" / ("batch_a" if name < "digit_0310" else "batch_b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (tmp_path / "to_predict" / "notes.txt").write_text("not an image")
    check = check_project_shift(same_project, backbone_name=TINY, target_paths=tmp_path / "to_predict")
    assert check.shifted and check.n_target == 20 and check.target == str(tmp_path / "to_predict")
    assert all(row.image_id is None and row.name.startswith("batch_") for row in check.furthest)
    with pytest.raises(DataError, match="neither a folder nor an image file"):
        check_project_shift(same_project, backbone_name=TINY, target_paths=tmp_path / "missing")


@pytest.mark.parametrize("n_labeled, n_pool, expected", [
    (1, 5, "needs at least 2 labeled images (there are 1): label more images"),
    (5, 1, "needs at least 2 images in the unlabeled pool (there are 1): add unlabeled images"),
    (0, 0, "needs at least 2 labeled images (there are 0) and 2 images in the unlabeled pool (there are 0)"),
])
def test_too_few_images_give_a_message_and_load_no_backbone(home, monkeypatch, n_labeled, n_pool, expected):
    monkeypatch.setattr(shift_check, "load_backbone", lambda *a, **k: pytest.fail("no backbone is needed"))
    project = new_project(home, f"small {n_labeled} {n_pool}", digit_files(range(100, 100 + n_pool)),
                          labeled=range(n_labeled))
    check = check_project_shift(project)
    assert not check.applicable and not check.shifted and check.report is None
    assert expected in check.message
    assert check.to_dict()["applicable"] is False


def test_no_message_when_both_sides_have_two_images():
    assert missing_images_message(2, 2) is None
    assert "add images to that folder" in missing_images_message(3, 0, "/data/new")


def test_the_latest_runs_backbone_is_used_else_the_default(home, monkeypatch):
    loaded = []
    tiny = load_backbone(TINY, "random")
    monkeypatch.setattr(shift_check, "load_backbone", lambda name, weights: loaded.append((name, weights)) or tiny)
    project = new_project(home, "runs pick the backbone", digit_files(range(100, 104), prefix="pool"),
                          labeled=range(4))
    assert check_project_shift(project).backbone_origin == "the default backbone"
    for name, created, backbone in (("old", "2026-01-01", "resnet18"), ("new", "2026-02-01", TINY)):
        run = project.path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"created_at": created,
                                                     "backbone": {"name": backbone, "weights": "random"}}))
        (run / "metrics.json").write_text("{}")
    assert check_project_shift(project).backbone_origin == "the latest run"
    assert loaded == [("tf_efficientnet_lite0", "auto"), (TINY, "random")]


# --- fsl-app project stats --shift -----------------------------------------------------------------------------------

def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_stats_shift_prints_the_verdict_and_the_furthest_images(capsys, home, inverted_project):
    code, out, _ = run_cli(capsys, "project", "stats", "inverted pool", "--home", home, "--shift", "--backbone", TINY)
    assert code == 0
    assert "60 images, 30 labeled, 30 unlabeled" in out
    assert f"shift (the unlabeled pool vs 30 labeled images, {TINY} features, chosen): shift detected" in out
    assert out.count("inverted_") == 10


def test_stats_shift_json_adds_a_shift_key(capsys, home, same_project):
    code, out, _ = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--json", "--shift",
                           "--backbone", TINY)
    data = json.loads(out)
    assert code == 0 and data["n_unlabeled"] == 30
    assert data["shift"]["applicable"] and not data["shift"]["shifted"]
    assert data["shift"]["report"]["n_target"] == 30 and len(data["shift"]["furthest"]) == 10
    assert {"path", "name", "score", "image_id"} <= set(data["shift"]["furthest"][0])
    code, out, _ = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--json")
    assert "shift" not in json.loads(out)


def test_stats_shift_against_a_folder(capsys, home, same_project, tmp_path):
    for name, data in digit_files(range(300, 306), inverted=True):
        (tmp_path / name).write_bytes(data)
    code, out, _ = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--shift", "--backbone", TINY,
                           "--against", tmp_path)
    assert code == 0 and f"shift ({tmp_path} vs 30 labeled images" in out and "digit_0300.png" in out


def test_stats_shift_errors_are_one_line(capsys, home, same_project, tmp_path):
    code, _, err = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--backbone", TINY)
    assert code == 1 and "add --shift" in err
    code, _, err = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--shift", "--weights", "random")
    assert code == 1 and "--weights needs --backbone" in err
    code, _, err = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--shift", "--backbone",
                           "no_such_net")
    assert code == 1 and err.startswith("error: unknown backbone 'no_such_net'")
    code, _, err = run_cli(capsys, "project", "stats", "same pool", "--home", home, "--shift", "--backbone", TINY,
                           "--against", tmp_path / "missing")
    assert code == 1 and "neither a folder nor an image file" in err


def test_stats_shift_on_too_few_images_says_what_to_add(capsys, home):
    create_project("empty for shift", home=home)
    code, out, _ = run_cli(capsys, "project", "stats", "empty for shift", "--home", home, "--shift")
    assert code == 0 and "shift: The shift check needs at least 2 labeled images" in out


def test_stats_without_shift_imports_no_model_library(home, same_project):
    code = ("import sys\nfrom fsl_app.cli import main\n"
            f"main(['project', 'stats', 'same pool', '--home', {str(home)!r}])\n"
            "print(sorted(m for m in ('torch', 'timm', 'onnxruntime', 'sklearn') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip().splitlines()[-1] == "[]"
