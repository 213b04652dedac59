"""``fsl-app ui``: the ``streamlit run`` command line for the studio that ships inside the package.

The app (``fsl_app/app.py``) and its Streamlit settings (``fsl_app/.streamlit/config.toml``) are found through the
installed package, not the current folder. Streamlit reads ``.streamlit/config.toml`` from the working directory,
which for a pip-installed studio is wherever the user happens to be, so the packaged settings go on the command line
as flags (they also win over a config file that folder may hold). The address is checked against the password rules
of :mod:`fsl_app.auth` first; XSRF protection is always on and only the password's hash reaches streamlit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..auth import DEFAULT_ADDRESS, PASSWORD_ENV, AuthError, UiLaunch, ui_launch_settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_PORT = 8501
# set by the launcher itself: passing them again would bypass the address check or turn XSRF protection off
_RESERVED_OPTIONS = ("server.address", "server.port", "server.enableXsrfProtection")


def studio_app() -> Path:
    """The studio's entry script inside the installed package."""
    return Path(str(resources.files("fsl_app") / "app.py"))


def studio_settings() -> dict[str, object]:
    """``section.option`` -> value, from the packaged ``.streamlit/config.toml``."""
    text = (resources.files("fsl_app") / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    return {f"{section}.{option}": value for section, options in tomllib.loads(text).items()
            for option, value in options.items()}


def streamlit_command(app_path: str | os.PathLike | None = None, *, port: int, address: str,
                      extra_args: Sequence[str] = ()) -> list[str]:
    """``python -m streamlit run <app> --section.option=value ...``: the packaged settings, then the address, the
    port and XSRF protection, which ``extra_args`` may not override."""
    for argument in extra_args:
        if any(option in argument for option in _RESERVED_OPTIONS):
            raise AuthError(f"{argument!r}: the address and port come from --address and --port, and XSRF "
                            "protection stays on; drop that argument")
    settings = {**studio_settings(), "server.address": address, "server.port": port,
                "server.enableXsrfProtection": True}
    return [sys.executable, "-m", "streamlit", "run", str(app_path or studio_app()),
            *(f"--{name}={_flag_value(value)}" for name, value in settings.items()), *extra_args]


def _flag_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class UiInvocation:
    command: list[str]
    launch: UiLaunch


def ui_invocation(app_path: str | os.PathLike | None = None, *, port: int = DEFAULT_PORT, address: str | None = None,
                  password_file: str | os.PathLike | None = None, no_auth: bool = False,
                  extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> UiInvocation:
    """The command line and settings (environment, warnings) that start the studio; raises AuthError when the
    address needs a password and none is given."""
    launch = ui_launch_settings(address, password_file=password_file, no_auth=no_auth,
                                env=os.environ if env is None else env)
    command = streamlit_command(app_path, port=port, address=launch.address, extra_args=extra_args)
    return UiInvocation(command, launch)


def launch_ui(app_path: str | os.PathLike | None = None, *, port: int = DEFAULT_PORT, address: str | None = None,
              password_file: str | os.PathLike | None = None, no_auth: bool = False,
              extra_args: Sequence[str] = ()) -> int:
    """Run the studio until it exits; returns streamlit's exit status. Prints the warnings on stderr first."""
    invocation = ui_invocation(app_path, port=port, address=address, password_file=password_file, no_auth=no_auth,
                               extra_args=extra_args)
    for warning in invocation.launch.warnings:
        print(warning, file=sys.stderr)
    if invocation.launch.auth:
        print("The studio asks for the password before showing any page.", file=sys.stderr)
    return subprocess.call(invocation.command, env=invocation.launch.env)


def add_ui_arguments(parser) -> None:
    """The options of `fsl-app ui` on an argparse (sub)parser, with ``ui_command`` as its handler."""
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help="address to listen on (default 127.0.0.1); any other than loopback needs a password")
    parser.add_argument("--password-file", metavar="FILE",
                        help=f"file holding the password (one line, chmod 600); or set {PASSWORD_ENV}. With a "
                             "password the studio asks for it before showing any page, on any address")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve on a non-loopback address without a password, on purpose (prints a warning)")
    parser.set_defaults(handler=ui_command)


def ui_command(args) -> int:
    """`fsl-app ui`: ``launch_ui`` with the options of ``add_ui_arguments``."""
    return launch_ui(port=args.port, address=args.address, password_file=args.password_file, no_auth=args.no_auth)
