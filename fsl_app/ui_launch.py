"""Start the studio (`fsl-app ui`): check the address against the password rules of ``fsl_app.auth``, then run
``streamlit run fsl_app/app.py`` with XSRF protection forced on and the password's hash in the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fsl_app.auth import DEFAULT_ADDRESS, PASSWORD_ENV, AuthError, UiLaunch, ui_launch_settings

APP_PATH = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501
# set by the launcher itself: passing them again would bypass the address check or turn XSRF protection off
_RESERVED_OPTIONS = ("server.address", "server.port", "server.enableXsrfProtection")


@dataclass(frozen=True)
class UiInvocation:
    command: list[str]
    launch: UiLaunch


def streamlit_command(app_path: str | os.PathLike, *, port: int, address: str,
                      extra_args: Sequence[str] = ()) -> list[str]:
    """``python -m streamlit run APP`` bound to ``address:port``, no usage statistics, XSRF protection on."""
    for argument in extra_args:
        if any(option in argument for option in _RESERVED_OPTIONS):
            raise AuthError(f"{argument!r}: the address and port come from --address and --port, and XSRF "
                            f"protection stays on; drop that argument")
    return [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", address,
            "--server.port", str(port), "--server.enableXsrfProtection", "true",
            "--browser.gatherUsageStats", "false", *extra_args]


def ui_invocation(app_path: str | os.PathLike = APP_PATH, *, port: int = DEFAULT_PORT, address: str | None = None,
                  password_file: str | os.PathLike | None = None, no_auth: bool = False,
                  extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> UiInvocation:
    """The command line and settings (environment, warnings) that start the studio; raises AuthError when the
    address needs a password and none is given."""
    launch = ui_launch_settings(address, password_file=password_file, no_auth=no_auth,
                                env=os.environ if env is None else env)
    return UiInvocation(streamlit_command(app_path, port=port, address=launch.address, extra_args=extra_args), launch)


def launch_ui(app_path: str | os.PathLike = APP_PATH, *, port: int = DEFAULT_PORT, address: str | None = None,
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
                             f"password the studio asks for it before showing any page, on any address")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve on a non-loopback address without a password, on purpose (prints a warning)")
    parser.set_defaults(handler=ui_command)


def ui_command(args) -> int:
    """`fsl-app ui`: ``launch_ui`` with the options of ``add_ui_arguments``."""
    return launch_ui(port=args.port, address=args.address, password_file=args.password_file, no_auth=args.no_auth)
