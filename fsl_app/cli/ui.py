"""``fsl-app ui``: the ``streamlit run`` command line for the studio that ships inside the package.

The app (``fsl_app/app.py``) and its Streamlit settings (``fsl_app/.streamlit/config.toml``) are found through the
installed package, not the current folder. Streamlit reads ``.streamlit/config.toml`` from the working directory,
which for a pip-installed studio is wherever the user happens to be, so the packaged settings go on the command line
as flags (they also win over a config file that folder may hold).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def studio_app() -> Path:
    """The studio's entry script inside the installed package."""
    return Path(str(resources.files("fsl_app") / "app.py"))


def studio_settings() -> dict[str, object]:
    """``section.option`` -> value, from the packaged ``.streamlit/config.toml``."""
    text = (resources.files("fsl_app") / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    return {f"{section}.{option}": value for section, options in tomllib.loads(text).items()
            for option, value in options.items()}


def streamlit_command(address: str, port: int) -> list[str]:
    """``python -m streamlit run <app> --section.option=value ...`` with the packaged settings, address and port."""
    settings = {**studio_settings(), "server.address": address, "server.port": port}
    return [sys.executable, "-m", "streamlit", "run", str(studio_app()),
            *(f"--{name}={_flag_value(value)}" for name, value in settings.items())]


def _flag_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
