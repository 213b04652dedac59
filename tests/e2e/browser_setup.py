"""What every browser test needs: Debian's chromium and the playwright package (a plain module, not a conftest.py:
a second conftest would shadow tests/conftest.py's helpers), and a studio server to point it at
(:func:`running_studio`). Missing, chromium and playwright skip the tests on a developer's machine and fail them in
CI (``CI=true``), where a skipped browser test would pass unnoticed."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # ``playwright install`` needs the internet, so the system browser is used
ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def streamlit_command(port: int) -> list[str]:
    """``streamlit run app.py`` headless on 127.0.0.1:``port``, without usage statistics or a file watcher."""
    return [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
            "--server.address=127.0.0.1", "--browser.gatherUsageStats=false", f"--server.port={port}",
            "--server.fileWatcherType=none"]


@contextlib.contextmanager
def running_studio(folder: Path, env: dict, *, port: int | None = None,
                   command: Sequence[str] | None = None) -> Iterator[str]:
    """The studio started with ``command`` (default: :func:`streamlit_command` on ``port``, else a free one) in
    ``env``, its output in ``folder/streamlit.log``; yields its URL once it answers, stops it (this process only)
    afterwards."""
    port = port or free_port()
    log = folder / "streamlit.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(list(command or streamlit_command(port)), cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
        yield url
    finally:
        stop(process)


def wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """End a studio server: terminate, then kill if it does not exit within 15 s."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
