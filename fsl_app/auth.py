"""Who may open the studio: the loopback rule, the shared secret, its hash and the back-off after wrong passwords.

Binding the studio to anything but loopback serves every project and model to the network, so it needs a secret
(``--password-file FILE`` or ``FSL_APP_PASSWORD``) or an explicit ``--no-auth``. The launcher hands the studio only a
salted scrypt hash of the secret, in ``FSL_APP_PASSWORD_HASH``; the secret never appears on a command line. Whenever
a secret is configured the studio asks for it, on loopback too. Torch-free and streamlit-free: the CLI and the
studio's login gate (``fsl_app/views/_auth.py``) both use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD_ENV = "FSL_APP_PASSWORD"
PASSWORD_HASH_ENV = "FSL_APP_PASSWORD_HASH"
DEFAULT_ADDRESS = "127.0.0.1"
MAX_PASSWORD_FILE_BYTES = 4096
SHORT_SECRET_CHARS = 12
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_HASH_SCHEME = "scrypt"
_HOW_TO_SET_A_SECRET = (f"pass --password-file FILE (a file holding the password, chmod 600), set the environment "
                        f"variable {PASSWORD_ENV}, or pass --no-auth to serve without a password on purpose")


class AuthError(ValueError):
    """A launch or secret that cannot be accepted; the message says how to fix it."""


def is_loopback(address: str | None) -> bool:
    """Whether binding to ``address`` keeps the studio on this machine (127.0.0.0/8, ::1, localhost).

    ``None`` means the launcher's default, 127.0.0.1. The wildcards ``0.0.0.0``, ``::`` and ``""`` listen on every
    interface; other host names are not resolved, so they count as non-loopback.
    """
    if address is None:
        return True
    host = address.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``secret``: ``scrypt$n$r$p$salt$digest`` (base64), safe to put in an environment."""
    if not secret:
        raise AuthError(f"the password is empty: {_HOW_TO_SET_A_SECRET}")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    fields = [_HASH_SCHEME, str(_SCRYPT["n"]), str(_SCRYPT["r"]), str(_SCRYPT["p"]), _b64(salt), _b64(digest)]
    return "$".join(fields)


def check_secret(given: str, expected_hash: str) -> bool:
    """Whether ``given`` is the secret behind ``expected_hash`` (from ``hash_secret``), compared in constant time."""
    n, r, p, salt, expected = _parse_hash(expected_hash)
    digest = hashlib.scrypt(given.encode("utf-8"), salt=salt, dklen=len(expected), n=n, r=r, p=p)
    return hmac.compare_digest(digest, expected)


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _HASH_SCHEME:
            raise ValueError(scheme)
        return int(n), int(r), int(p), base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except ValueError as error:
        raise AuthError(f"{PASSWORD_HASH_ENV} is not a hash made by fsl_app.auth.hash_secret; unset it and start the "
                        f"studio with `fsl-app ui --password-file FILE` (or set {PASSWORD_ENV})") from error


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def expected_secret_hash(env: Mapping[str, str]) -> str | None:
    """The hash the studio checks passwords against: ``FSL_APP_PASSWORD_HASH``, else a fresh hash of
    ``FSL_APP_PASSWORD`` (for ``streamlit run`` without the launcher), else None (no login gate)."""
    if env.get(PASSWORD_HASH_ENV):
        _parse_hash(env[PASSWORD_HASH_ENV])
        return env[PASSWORD_HASH_ENV]
    if env.get(PASSWORD_ENV):
        return hash_secret(env[PASSWORD_ENV])
    return None


@dataclass(frozen=True)
class PasswordFile:
    secret: str
    warnings: tuple[str, ...] = ()


def read_password_file(path: str | os.PathLike) -> PasswordFile:
    """The secret in ``path`` (one line; the trailing newline is not part of it), refusing anything but a small,
    non-empty regular file, with a warning when others may read it or the secret is short."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AuthError(f"password file {path} does not exist: create it (e.g. `openssl rand -base64 24 > {path}; "
                        f"chmod 600 {path}`) or point --password-file at an existing one") from None
    if not stat.S_ISREG(info.st_mode):
        raise AuthError(f"password file {path} is not a regular file: point --password-file at a plain text file")
    with open(path, "rb") as stream:
        data = stream.read(MAX_PASSWORD_FILE_BYTES + 1)
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise AuthError(f"password file {path} is over {MAX_PASSWORD_FILE_BYTES} bytes: it should hold one line, "
                        f"the password")
    try:
        secret = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise AuthError(f"password file {path} is not UTF-8 text: write the password as one line of text") from None
    if not secret.strip():
        raise AuthError(f"password file {path} is empty: write the password in it (one line)")
    warnings = []
    if os.name == "posix" and info.st_mode & 0o077:
        warnings.append(f"password file {path} can be read by other users (mode {stat.filemode(info.st_mode)}); "
                        f"run `chmod 600 {path}`")
    warnings.extend(_short_secret_warning(secret))
    return PasswordFile(secret, tuple(warnings))


def _short_secret_warning(secret: str) -> list[str]:
    if len(secret) >= SHORT_SECRET_CHARS:
        return []
    return [f"the password has only {len(secret)} characters; use at least {SHORT_SECRET_CHARS} "
            f"(e.g. `openssl rand -base64 24`)"]


@dataclass(frozen=True)
class UiLaunch:
    """How to start the studio: the address to bind, the environment of the streamlit process, what to print."""

    address: str
    env: dict[str, str] = field(repr=False)
    auth: bool
    warnings: tuple[str, ...] = ()


def ui_launch_settings(address: str | None, *, password_file: str | os.PathLike | None, no_auth: bool,
                       env: Mapping[str, str]) -> UiLaunch:
    """Decide whether the studio may start on ``address`` and with which login gate.

    A secret (``password_file``, else ``env[FSL_APP_PASSWORD]``) turns the gate on, whatever the address; the
    returned environment carries only its salted hash. A non-loopback address without a secret is refused unless
    ``no_auth``, which comes with a warning. ``no_auth`` with a password file is contradictory and refused.
    """
    address = DEFAULT_ADDRESS if address is None else address
    child_env = {key: value for key, value in env.items() if key not in (PASSWORD_ENV, PASSWORD_HASH_ENV)}
    if no_auth:
        if password_file is not None:
            raise AuthError("--no-auth and --password-file contradict each other: drop one of them")
        return UiLaunch(address, child_env, auth=False, warnings=_no_auth_warnings(address))
    warnings: tuple[str, ...] = ()
    if password_file is not None:
        read = read_password_file(password_file)
        secret, warnings = read.secret, read.warnings
    else:
        secret = env.get(PASSWORD_ENV, "")
        warnings = tuple(_short_secret_warning(secret)) if secret else ()
    if not secret:
        if not is_loopback(address):
            raise AuthError(f"refusing to serve the studio on {address!r} without a password: anyone who can reach "
                            f"it could read and change every project and model; {_HOW_TO_SET_A_SECRET}")
        return UiLaunch(address, child_env, auth=False)
    child_env[PASSWORD_HASH_ENV] = hash_secret(secret)
    return UiLaunch(address, child_env, auth=True, warnings=warnings)


def _no_auth_warnings(address: str) -> tuple[str, ...]:
    if is_loopback(address):
        return ()
    return (f"WARNING: --no-auth: the studio on {address} has no password; anyone who can reach this port can read, "
            f"change and download every project and model",)


@dataclass(frozen=True)
class BackoffPolicy:
    """``free_failures`` within ``window_s`` cost nothing; each further one doubles the wait, from ``base_s`` up to
    ``max_s``."""

    free_failures: int
    base_s: float
    max_s: float
    window_s: float = 900.0

    def wait_after(self, failures: int) -> float:
        if failures < self.free_failures:
            return 0.0
        return min(self.max_s, self.base_s * 2.0 ** min(failures - self.free_failures, 32))


PER_CLIENT_POLICY = BackoffPolicy(free_failures=5, base_s=1.0, max_s=300.0)
PROCESS_POLICY = BackoffPolicy(free_failures=20, base_s=1.0, max_s=60.0)


class LoginLimiter:
    """Exponential back-off after wrong passwords, per client and for the whole process (so fresh sessions do not
    buy fresh guesses). Thread-safe: every studio session shares one. A success clears only that client's record."""

    def __init__(self, *, per_client: BackoffPolicy = PER_CLIENT_POLICY, process: BackoffPolicy = PROCESS_POLICY,
                 clock: Callable[[], float] = time.monotonic):
        self.per_client = per_client
        self.process = process
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def retry_after(self, client: str) -> float:
        """Seconds before ``client`` may try a password again (0.0: now)."""
        with self._lock:
            now = self.clock()
            self._forget_old(now)
            return max(self._wait(self.per_client, self._clients.get(client, ()), now),
                       self._wait(self.process, self._all, now))

    def record_failure(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            self._clients.setdefault(client, deque()).append(now)
            self._all.append(now)

    def record_success(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    @staticmethod
    def _wait(policy: BackoffPolicy, failures, now: float) -> float:
        if not failures:
            return 0.0
        return max(0.0, failures[-1] + policy.wait_after(len(failures)) - now)

    def _forget_old(self, now: float) -> None:
        _drop_before(self._all, now - self.process.window_s)
        for client in list(self._clients):
            if not _drop_before(self._clients[client], now - self.per_client.window_s):
                del self._clients[client]


def _drop_before(times: deque[float], cutoff: float) -> deque[float]:
    while times and times[0] < cutoff:
        times.popleft()
    return times


@dataclass(frozen=True)
class LoginOutcome:
    accepted: bool
    retry_after_s: float = 0.0  # > 0: refused (or now locked) for this long


def attempt_login(limiter: LoginLimiter, client: str, given: str, expected_hash: str) -> LoginOutcome:
    """Check ``given`` unless ``client`` must wait; record the result. While waiting, the password is not checked."""
    wait = limiter.retry_after(client)
    if wait > 0:
        return LoginOutcome(False, wait)
    if check_secret(given, expected_hash):
        limiter.record_success(client)
        return LoginOutcome(True)
    limiter.record_failure(client)
    return LoginOutcome(False, limiter.retry_after(client))
