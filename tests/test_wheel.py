"""The wheel ships the studio: `pip install fsl_app` gives an `fsl-app ui` that starts from any folder.

The wheel is built from a copy of this checkout, installed with --no-deps into a fresh venv in a temp folder that
borrows the test interpreter's site-packages (torch and streamlit are not installed twice) through a .pth file, and
started as `fsl-app ui` from the temp folder: its health endpoint must answer, the page must load, and the packaged
app must run under AppTest in that venv.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout, process groups")]

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120
SHIPPED_FILES = ("app.py", ".streamlit/config.toml", "export/bundle_scripts/predict.py",
                 "export/bundle_scripts/predict_onnx.py", "export/bundle_scripts/bundle_io.py")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    output = completed.stdout[-2000:] + completed.stderr[-3000:]
    assert completed.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return completed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (the build writes build/ and *.egg-info/ next to the sources)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "fsl_app", source / "fsl_app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
         str(out), str(source)])
    [built] = out.glob("fsl_app-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv outside the source tree with the wheel installed; other packages come from this interpreter."""
    root = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = _venv_python(root)
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         env=_clean_env()).stdout.strip())
    # directories named in a .pth are appended after the venv's own site-packages, and the .pth files inside them
    # (the checkout's editable install) are not run: the venv's fsl_app is the wheel's
    (venv_site / "borrowed_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    return root


def _venv_python(root: Path) -> Path:
    return root / "bin" / "python"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH, which would put the checkout's fsl_app first."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode("utf-8", "replace")


def test_wheel_holds_the_studio_and_the_bundle_scripts(venv):
    code = "import fsl_app, pathlib; print(pathlib.Path(fsl_app.__file__).resolve().parent)"
    package = Path(run([str(_venv_python(venv)), "-c", code], env=_clean_env(), cwd=venv.parent).stdout.strip())
    assert package.is_relative_to(venv.resolve()), f"{package} is not the wheel's copy in {venv}"
    missing = [name for name in SHIPPED_FILES if not (package / name).is_file()]
    assert not missing, f"not in the wheel: {missing}"


def test_installed_fsl_app_ui_starts_headless_and_serves_the_studio(venv, tmp_path):
    port = _free_port()
    script = venv / "bin" / "fsl-app"
    log = tmp_path / "ui.log"
    with log.open("w") as output:
        server = subprocess.Popen([str(script), "ui", "--port", str(port)], cwd=tmp_path, stdout=output,
                                  stderr=subprocess.STDOUT, env=_clean_env(FSL_APP_HOME=str(tmp_path / "home")),
                                  start_new_session=True)
    try:
        _wait_until_healthy(server, port, log)
        page = _get(f"http://127.0.0.1:{port}/")
        assert "<title>" in page and 'id="root"' in page
    finally:
        _stop(server)


def _wait_until_healthy(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"fsl-app ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(f"http://127.0.0.1:{port}/_stcore/health").strip() == "ok":
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"fsl-app ui did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """Stop `fsl-app ui` and the streamlit process it started (one process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_packaged_app_runs_under_apptest_in_the_fresh_venv(venv, tmp_path):
    code = ("from streamlit.testing.v1 import AppTest\n"
            "from fsl_app.cli.ui import studio_app\n"
            "app = AppTest.from_file(str(studio_app()), default_timeout=120).run()\n"
            "assert not app.exception, [e.value for e in app.exception]\n"
            "print(len(app.main.children))\n")
    completed = run([str(_venv_python(venv)), "-c", code], cwd=tmp_path,
                    env=_clean_env(FSL_APP_HOME=str(tmp_path / "home")))
    assert int(completed.stdout.strip().splitlines()[-1]) > 0  # the page rendered something
