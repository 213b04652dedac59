"""Learning across projects (issue 12 item 3): pretraining on base classes, the safetensors + JSON checkpoint,
``--weights CKPT`` for its own architecture only, the leakage warning, cancel, the CLI and the weights picker.

Tiny random ``test_efficientnet`` on small real digits (conftest); a few episodes or one epoch each.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

from conftest import TINY_BACKBONE, make_digits_folder
from fsl_app import backbones, pretrain, training_job
from fsl_app.backbones import BackboneError, leaked_classes, load_backbone, pretrained_checkpoints
from fsl_app.cli import main
from fsl_app.dataset import DataError, ImageSet
from fsl_app.runs import train_run
from fsl_app.strategies import create_strategy, interrupt_check, list_strategies

FAST = pretrain.PretrainSettings(epochs=1, batch_size=8, episodes=2, n_way=3, k_shot=2, n_query=2, augment="none")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """4 base classes x 5 digits (32 px)."""
    return make_digits_folder(tmp_path_factory.mktemp("base"), classes=(0, 1, 2, 3), per_class=5, size=32)


@pytest.fixture(scope="module")
def checkpoint(base_dir, tiny_backbone, tmp_path_factory):
    """(path, trained model) of a protonet pretraining saved in a scratch folder."""
    images = ImageSet.from_folder(base_dir)
    model = pretrain.pretrain_backbone(images, tiny_backbone, method="protonet", settings=FAST)
    provenance = pretrain.checkpoint_provenance(tiny_backbone, images, method="protonet", settings=FAST,
                                                source="digits-base")
    path = pretrain.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "base", provenance)
    return path, model


def test_checkpoint_round_trips_as_safetensors_and_json_without_pickle(checkpoint):
    path, model = checkpoint
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    raw = path.read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    assert raw[8:9] == b"{" and b"\x80" not in raw[:2]  # a JSON header, not a pickle stream
    header = json.loads(raw[8:8 + header_size])
    sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert json.loads(header["__metadata__"][backbones.PROVENANCE_KEY]) == sidecar
    assert sidecar["architecture"] == TINY_BACKBONE and sidecar["method"] == "protonet"
    assert sidecar["base_classes"] == ["digit_0", "digit_1", "digit_2", "digit_3"] and sidecar["n_images"] == 20
    assert sidecar["source_project"] == "digits-base" and sidecar["data_config"]["input_size"] == [3, 160, 160]
    assert {"created_at", "settings", "started_from"} <= set(sidecar)
    loaded = load_backbone(TINY_BACKBONE, path)
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.model.state_dict().items())
    assert loaded.provenance["base_classes"] == sidecar["base_classes"]
    assert loaded.spec()["pretrained"]["method"] == "protonet"


def test_pretraining_changes_the_weights_it_trains_and_reports_progress(base_dir, tiny_backbone):
    steps = []
    settings = pretrain.PretrainSettings(epochs=2, batch_size=8, augment="none", last_n=1)
    model = pretrain.pretrain_backbone(ImageSet.from_folder(base_dir), tiny_backbone, method="supervised",
                                       settings=settings, on_step=steps.append)
    assert [step.epoch for step in steps] == [1, 2] and all(step.loss > 0 for step in steps)
    before, after = tiny_backbone.model.state_dict(), model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(not key.startswith("conv_stem") for key in changed)  # only the last group trained
    assert model.num_classes == 0 and "classifier.weight" not in after  # the temporary head is gone


def test_a_checkpoint_for_another_architecture_is_refused_naming_both(checkpoint):
    with pytest.raises(BackboneError, match="made for test_efficientnet, not test_vit"):
        load_backbone("test_vit", checkpoint[0])


def test_leakage_names_the_overlapping_classes_ignoring_case_and_spaces():
    assert leaked_classes(["Digit  0", "cat "], ["digit 0", "dog", "CAT"]) == ["digit 0", "CAT"]
    assert leaked_classes(["cat"], ["dog"]) == []
    warning = backbones.leakage_warning({"base_classes": ["Cat"], "method": "supervised", "source_project": "pets"},
                                        ["cat", "cow"])
    assert "(cat; supervised on pets)" in warning and "cow" not in warning


def test_leakage_is_recorded_in_the_run_config_and_warned_on_stderr(checkpoint, tmp_path, capsys):
    new_dir = make_digits_folder(tmp_path / "new", classes=(3, 5), per_class=3, size=32, offset=10)
    backbone = load_backbone(TINY_BACKBONE, checkpoint[0])
    result = train_run(ImageSet.from_folder(new_dir), create_strategy("protonet"), backbone, tmp_path / "run")
    config = json.loads((result.run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["leaked_classes"] == ["digit_3"] and config["backbone"]["pretrained"]["architecture"]
    assert main(["evaluate", str(new_dir), "--strategy", "protonet", "--backbone", TINY_BACKBONE, "--weights",
                 str(checkpoint[0]), "--n-way", "2", "--k-shot", "1", "--queries", "1", "--episodes", "2",
                 "--json"]) == 0
    assert "trained on 1 of this project's classes (digit_3" in capsys.readouterr().err


def test_cancel_stops_within_an_episode_and_a_failed_save_leaves_nothing(base_dir, tiny_backbone, tmp_path,
                                                                         monkeypatch):
    calls = []

    def cancel_on_third_check():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("cancelled")

    settings = pretrain.PretrainSettings(**{**FAST.__dict__, "episodes": 50})
    with pytest.raises(KeyboardInterrupt), interrupt_check(cancel_on_third_check):
        pretrain.pretrain_backbone(ImageSet.from_folder(base_dir), tiny_backbone, method="protonet",
                                   settings=settings)
    assert len(calls) == 3
    monkeypatch.setattr(pretrain, "write_json_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        pretrain.save_checkpoint(tiny_backbone.model, tmp_path / "out" / "ckpt", {"format": "x"})
    assert list((tmp_path / "out").iterdir()) == []  # neither weights, sidecar nor a temp file


def test_base_data_that_cannot_make_episodes_is_refused_naming_the_minimum(base_dir):
    images = ImageSet.from_folder(base_dir)
    with pytest.raises(DataError, match="at least 5 classes; it has 4. Lower --n-way to 4"):
        pretrain.check_base_classes(images, "protonet", pretrain.PretrainSettings(n_way=5))
    one_class = images.subset([i for i, label in enumerate(images.labels) if label == "digit_0"])
    with pytest.raises(DataError, match="at least 2 labeled classes"):
        pretrain.check_base_classes(one_class, "supervised", pretrain.PretrainSettings())
    with pytest.raises(ValueError, match="unknown pretraining method 'nope'. Pick one of: maml, protonet, supervised"):
        pretrain.check_base_classes(images, "nope", pretrain.PretrainSettings())


def test_cli_pretrains_then_trains_with_the_checkpoint_and_the_picker_lists_it(base_dir, tmp_path, capsys):
    assert main(["pretrain", str(base_dir), "--method", "supervised", "--backbone", TINY_BACKBONE, "--weights",
                 "random", "--epochs", "1", "--batch-size", "10", "--augment", "none", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    listed = [c for c in pretrained_checkpoints(architecture=TINY_BACKBONE) if str(c.path) == made["checkpoint"]]
    assert listed, "a checkpoint written to the default folder is offered by the picker"
    assert listed[0].label().startswith(f"{base_dir.name}-supervised-{TINY_BACKBONE} · supervised on {base_dir.name} "
                                        "(4 classes: digit_0, digit_1, digit_2, digit_3)")
    assert not pretrained_checkpoints(architecture="test_vit") or all(
        c.architecture == "test_vit" for c in pretrained_checkpoints(architecture="test_vit"))
    new_dir = make_digits_folder(tmp_path / "new", classes=(5, 6), per_class=3, size=32)
    assert main(["train", str(new_dir), "--strategy", "linear", "--backbone", TINY_BACKBONE, "--weights",
                 made["checkpoint"], "--out", str(tmp_path / "run"), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["n_images"] == 6 and "warning" not in out.err  # no class overlaps
    assert main(["pretrain", str(base_dir), "--method", "supervised", "--backbone", TINY_BACKBONE]) == 2
    assert "already exists. Pass --force" in capsys.readouterr().err
    assert main(["pretrain", str(base_dir), "--method", "protonet", "--n-way", "6", "--backbone", TINY_BACKBONE,
                 "--weights", "random", "--out", str(tmp_path / "x")]) == 2
    assert "needs at least 6 classes; it has 4" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_evaluate_every_strategy_includes_every_registered_strategy(monkeypatch, tmp_path):
    """Registry-driven: a strategy added in one file (maml, matchingnet, ...) is queued with the rest."""
    import importlib
    import sys
    import textwrap

    from fsl_app.store import create_project
    from fsl_app.strategies import _registry
    from test_strategy_registration import NAME, SOURCE

    monkeypatch.setattr(_registry, "_STRATEGIES", dict(_registry._STRATEGIES))
    (tmp_path / "throwaway_all_strategy.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("throwaway_all_strategy")
        project = create_project("all strategies pretrain test")
        digits = make_digits_folder(tmp_path / "d", classes=(0, 1), per_class=3, size=32)
        for folder in sorted(digits.iterdir()):
            project.import_files([(p.name, p.read_bytes()) for p in sorted(folder.iterdir())], folder.name)
        _, requests = training_job.requests_for_all_strategies(project.path, TINY_BACKBONE, "random", "auto", 0, None)
        assert [r.strategy for r in requests] == list_strategies() and NAME in list_strategies()
    finally:
        sys.modules.pop("throwaway_all_strategy", None)


def test_maml_pretraining_writes_a_checkpoint_that_loads_and_says_maml(base_dir, tiny_backbone, tmp_path, capsys):
    steps = []
    settings = pretrain.PretrainSettings(**{**FAST.__dict__, "last_n": 1, "inner_steps": 2})
    images = ImageSet.from_folder(base_dir)
    model = pretrain.pretrain_backbone(images, tiny_backbone, method="maml", settings=settings, on_step=steps.append)
    assert [step.step for step in steps] == [1, 2]
    assert all(step.loss > 0 and 0 <= step.val_acc <= 1 for step in steps)
    before, after = tiny_backbone.model.state_dict(), model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(not key.startswith("conv_stem") for key in changed)  # only the last group meta-trained
    assert all(p.requires_grad for p in tiny_backbone.model.parameters())  # the source backbone is untouched
    assert main(["pretrain", str(base_dir), "--method", "maml", "--backbone", TINY_BACKBONE, "--weights", "random",
                 "--episodes", "2", "--n-way", "3", "--k-shot", "1", "--queries", "1", "--inner-steps", "1",
                 "--last-n", "1", "--augment", "none", "--out", str(tmp_path / "maml"), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["method"] == "maml" and made["settings"]["inner_steps"] == 1
    loaded = load_backbone(TINY_BACKBONE, made["checkpoint"])
    assert loaded.spec()["pretrained"]["method"] == "maml"
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, loaded.num_features)


def test_a_cancelled_maml_pretraining_leaves_no_checkpoint(base_dir, tmp_path, capsys):
    calls = []

    def cancel_on_fourth_check():
        calls.append(1)
        if len(calls) == 4:  # inside the first episode's inner loop
            raise KeyboardInterrupt("cancelled")

    with interrupt_check(cancel_on_fourth_check):
        code = main(["pretrain", str(base_dir), "--method", "maml", "--backbone", TINY_BACKBONE, "--weights",
                     "random", "--episodes", "20", "--n-way", "3", "--k-shot", "1", "--queries", "1",
                     "--augment", "none", "--out", str(tmp_path / "out" / "maml")])
    assert code == 130 and len(calls) == 4 and "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
