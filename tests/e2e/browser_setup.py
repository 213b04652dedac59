"""What every browser test needs: Debian's chromium and the playwright package (a plain module, not a conftest.py:
a second conftest would shadow tests/conftest.py's helpers). Missing, they skip the tests on a
developer's machine and fail them in CI (``CI=true``), where a skipped browser test would pass unnoticed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # ``playwright install`` needs the internet, so the system browser is used


def missing_browser_parts() -> list[str]:
    """What the browser tests lack, each with how to install it; empty when they can run."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"Debian's chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh installs it "
                       "when run as root)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package (pip install playwright)")
    return missing


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The chromium executable; skips (locally) or fails (in CI) when it or playwright is missing."""
    missing = missing_browser_parts()
    if missing:
        message = f"the browser tests need {' and '.join(missing)}"
        if in_ci():
            pytest.fail(f"{message}; CI must run them (CI=true), so this is a failure, not a skip.")
        pytest.skip(message)
    return CHROMIUM
