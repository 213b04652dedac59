"""Shared fixtures: small real images (scikit-learn digits) in ImageFolder layout, a tiny random timm backbone,
and an isolated project store and feature cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_BACKBONE = "test_efficientnet"


@pytest.fixture(autouse=True, scope="session")
def _isolated_dirs(tmp_path_factory):
    """Never touch the user's real store or cache; keep the ONNX export cache across tests of one session."""
    root = tmp_path_factory.mktemp("fsl_env")
    os.environ.setdefault("FSL_APP_CACHE", str(root / "cache"))
    os.environ["FSL_APP_HOME"] = str(root / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


def make_digits_folder(root: Path, *, classes=(0, 1, 2), per_class: int = 6, size: int = 64,
                       offset: int = 0) -> Path:
    """Write real handwritten digits (scikit-learn's bundled set) as RGB PNGs in ImageFolder layout."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    for label in classes:
        folder = root / f"digit_{label}"
        folder.mkdir(exist_ok=True)
        members = np.flatnonzero(digits.target == label)[offset:offset + per_class]
        for index in members:
            pixels = (digits.images[index] / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB").save(
                folder / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """3 classes x 6 images of 64 px digits."""
    return make_digits_folder(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def digits_set(digits_dir):
    from fsl_app.dataset import ImageSet

    return ImageSet.from_folder(digits_dir)


@pytest.fixture(scope="session")
def tiny_backbone():
    """timm's tiny test_efficientnet with random init (no network, a few ms per image)."""
    from fsl_app.backbones import load_backbone

    return load_backbone(TINY_BACKBONE, "random")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (``item.rep_call``): the browser test saves evidence when it failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
