"""The studio's exposure rules (fsl_app.auth) and its launcher (fsl_app.cli.ui): loopback detection, refusing a
network address without a password, the password file, the hash and its constant-time check, the login back-off."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest

from fsl_app import auth
from fsl_app.cli import ui as ui_launch
from fsl_app.auth import AuthError, BackoffPolicy, LoginLimiter

ROOT = Path(__file__).resolve().parents[1]
SECRET = "correct horse battery staple"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def password_file(tmp_path) -> Path:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("address", [None, "127.0.0.1", "127.8.9.10", "::1", "[::1]", "0:0:0:0:0:0:0:1", "localhost",
                                     " LocalHost ", "localhost.", "::ffff:127.0.0.1"])
def test_loopback_addresses(address):
    assert auth.is_loopback(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]", "", "192.168.1.20", "10.0.0.1", "fe80::1", "2001:db8::1",
                                     "example.com", "localhost.example.com", "127.0.0.1.nip.io", "myhost",
                                     "::ffff:10.0.0.1"])
def test_other_addresses_are_not_loopback(address):
    assert not auth.is_loopback(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.20", "my-laptop"])
def test_network_address_without_a_secret_is_refused_naming_the_fixes(address):
    with pytest.raises(AuthError) as error:
        auth.ui_launch_settings(address, password_file=None, no_auth=False, env={"HOME": "/x"})
    assert "--password-file FILE" in str(error.value)
    assert auth.PASSWORD_ENV in str(error.value)
    assert "--no-auth" in str(error.value)


def test_loopback_without_a_secret_has_no_gate():
    launch = auth.ui_launch_settings(None, password_file=None, no_auth=False, env={"HOME": "/x"})
    assert (launch.address, launch.auth, launch.warnings) == ("127.0.0.1", False, ())
    assert auth.PASSWORD_HASH_ENV not in launch.env and launch.env["HOME"] == "/x"


def test_password_from_the_environment_reaches_the_studio_only_as_a_hash():
    env = {auth.PASSWORD_ENV: SECRET, "HOME": "/x"}
    launch = auth.ui_launch_settings("0.0.0.0", password_file=None, no_auth=False, env=env)
    assert launch.auth and launch.warnings == ()
    assert auth.PASSWORD_ENV not in launch.env
    assert SECRET not in "".join(launch.env.values())
    assert auth.check_secret(SECRET, launch.env[auth.PASSWORD_HASH_ENV])
    assert not auth.check_secret(SECRET + "x", launch.env[auth.PASSWORD_HASH_ENV])


def test_a_secret_turns_the_gate_on_for_loopback_too(password_file):
    launch = auth.ui_launch_settings("127.0.0.1", password_file=str(password_file), no_auth=False, env={})
    assert launch.auth and auth.check_secret(SECRET, launch.env[auth.PASSWORD_HASH_ENV])


def test_password_file_wins_over_the_environment_and_drops_its_trailing_newline(password_file):
    launch = auth.ui_launch_settings("::", password_file=password_file, no_auth=False,
                                     env={auth.PASSWORD_ENV: "another one entirely"})
    assert launch.warnings == ()
    assert auth.check_secret(SECRET, launch.env[auth.PASSWORD_HASH_ENV])
    assert not auth.check_secret("another one entirely", launch.env[auth.PASSWORD_HASH_ENV])


def test_password_file_readable_by_others_is_accepted_with_a_warning(password_file):
    password_file.chmod(0o644)
    launch = auth.ui_launch_settings("0.0.0.0", password_file=password_file, no_auth=False, env={})
    assert launch.auth
    assert any("chmod 600" in warning for warning in launch.warnings)


def test_short_password_gets_a_warning(tmp_path):
    path = tmp_path / "pw"
    path.write_text("abc")
    path.chmod(0o600)
    assert any("only 3 characters" in warning for warning in auth.read_password_file(path).warnings)


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"\n", "is empty"), (b"  \n", "is empty"),
                                              (b"\xff\xfe\x00", "UTF-8"), (b"x" * 5000, "over 4096 bytes")])
def test_bad_password_files_are_refused(tmp_path, content, message):
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(AuthError, match=message):
        auth.ui_launch_settings("0.0.0.0", password_file=path, no_auth=False, env={})


def test_missing_password_file_says_how_to_make_one(tmp_path):
    with pytest.raises(AuthError, match="does not exist.*chmod 600"):
        auth.read_password_file(tmp_path / "nope")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")
@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_password_file_must_be_a_regular_file(tmp_path, kind):
    path = tmp_path / "pw"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block forever
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(AuthError, match="not a regular file"):
        auth.read_password_file(path)


def test_no_auth_on_the_network_warns_and_passes_no_secret():
    launch = auth.ui_launch_settings("0.0.0.0", password_file=None, no_auth=True,
                                     env={auth.PASSWORD_ENV: SECRET, auth.PASSWORD_HASH_ENV: "x"})
    assert not launch.auth
    assert len(launch.warnings) == 1 and "no password" in launch.warnings[0] and "0.0.0.0" in launch.warnings[0]
    assert auth.PASSWORD_ENV not in launch.env and auth.PASSWORD_HASH_ENV not in launch.env


def test_no_auth_on_loopback_needs_no_warning():
    assert auth.ui_launch_settings("127.0.0.1", password_file=None, no_auth=True, env={}).warnings == ()


def test_no_auth_with_a_password_file_is_contradictory(password_file):
    with pytest.raises(AuthError, match="contradict"):
        auth.ui_launch_settings("0.0.0.0", password_file=password_file, no_auth=True, env={})


def test_hashes_are_salted_and_checked_with_compare_digest(monkeypatch):
    first, second = auth.hash_secret(SECRET), auth.hash_secret(SECRET)
    assert first != second and SECRET not in first
    compared = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.check_secret(SECRET, first) and auth.check_secret(SECRET, second)
    assert not auth.check_secret("wrong", first)
    assert len(compared) == 3 and all(len(a) == len(b) == 32 for a, b in compared)


@pytest.mark.parametrize("bad", ["", "plain-text-password", "scrypt$1$2$3$!!$!!", "bcrypt$16384$8$1$AAAA$AAAA"])
def test_a_damaged_hash_is_refused_with_the_fix(bad):
    with pytest.raises(AuthError, match="--password-file"):
        auth.check_secret(SECRET, bad)
    if bad:  # an empty variable means no hash at all
        with pytest.raises(AuthError):
            auth.expected_secret_hash({auth.PASSWORD_HASH_ENV: bad})


def test_expected_secret_hash_prefers_the_launchers_hash():
    made = auth.hash_secret(SECRET)
    assert auth.expected_secret_hash({auth.PASSWORD_HASH_ENV: made, auth.PASSWORD_ENV: "other"}) == made
    from_plain = auth.expected_secret_hash({auth.PASSWORD_ENV: SECRET})
    assert auth.check_secret(SECRET, from_plain)
    assert auth.expected_secret_hash({}) is None
    assert auth.expected_secret_hash({auth.PASSWORD_ENV: ""}) is None


def test_limiter_backs_off_exponentially_per_client():
    clock = FakeClock()
    limiter = LoginLimiter(per_client=BackoffPolicy(3, 1.0, 8.0), process=BackoffPolicy(100, 1.0, 60.0), clock=clock)
    for _ in range(3):
        assert limiter.retry_after("a") == 0.0
        limiter.record_failure("a")
    assert limiter.retry_after("a") == 1.0
    assert limiter.retry_after("b") == 0.0  # another client is not slowed down by a's failures
    clock.now += 1.0
    assert limiter.retry_after("a") == 0.0
    waits = []
    for _ in range(4):
        limiter.record_failure("a")
        waits.append(limiter.retry_after("a"))
        clock.now += waits[-1]
    assert waits == [2.0, 4.0, 8.0, 8.0]  # doubles, capped at max_s
    limiter.record_failure("a")
    limiter.record_success("a")
    assert limiter.retry_after("a") == 0.0


def test_limiter_slows_down_every_session_after_many_failures_in_total():
    clock = FakeClock()
    limiter = LoginLimiter(per_client=BackoffPolicy(3, 1.0, 8.0), process=BackoffPolicy(5, 2.0, 60.0), clock=clock)
    for client in range(5):  # a fresh session per guess: each client stays under its own limit
        limiter.record_failure(f"session-{client}")
    assert limiter.retry_after("fresh-session") == 2.0
    limiter.record_success("session-0")  # someone logging in does not reset the process-wide count
    assert limiter.retry_after("fresh-session") == 2.0
    clock.now += 2.0
    assert limiter.retry_after("fresh-session") == 0.0


def test_limiter_forgets_failures_older_than_its_window():
    clock = FakeClock()
    policy = BackoffPolicy(2, 1.0, 8.0, window_s=60.0)
    limiter = LoginLimiter(per_client=policy, process=policy, clock=clock)
    limiter.record_failure("a")
    clock.now += 30
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 1.0
    clock.now += 31  # the first failure left the window: one failure, under the free allowance
    assert limiter.retry_after("a") == 0.0
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 1.0


def test_attempt_login_does_not_even_check_the_password_while_waiting(monkeypatch):
    clock = FakeClock()
    limiter = LoginLimiter(per_client=BackoffPolicy(1, 5.0, 60.0), clock=clock)
    expected = auth.hash_secret(SECRET)
    assert auth.attempt_login(limiter, "a", "wrong", expected) == auth.LoginOutcome(False, 5.0)
    checked = []
    monkeypatch.setattr(auth, "check_secret", lambda given, hashed: checked.append(given) or True)
    assert auth.attempt_login(limiter, "a", SECRET, expected) == auth.LoginOutcome(False, 5.0)
    assert checked == []
    clock.now += 5.0
    assert auth.attempt_login(limiter, "a", SECRET, expected).accepted
    assert checked == [SECRET]


def test_streamlit_command_keeps_xsrf_protection_on_and_the_secret_off_the_command_line(password_file):
    invocation = ui_launch.ui_invocation(port=8600, address="0.0.0.0", password_file=password_file, env={})
    command = invocation.command
    assert command[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(command[4]) == ROOT / "fsl_app" / "app.py"
    assert "--server.enableXsrfProtection=true" in command
    assert "--server.address=0.0.0.0" in command and "--server.port=8600" in command
    assert not any(SECRET in argument for argument in command)


@pytest.mark.parametrize("argument", ["--server.enableXsrfProtection=false", "--server.address=0.0.0.0",
                                      "--server.port=1"])
def test_extra_arguments_cannot_bypass_the_launch_rules(argument):
    with pytest.raises(AuthError, match="drop that argument"):
        ui_launch.streamlit_command("app.py", port=8501, address="127.0.0.1", extra_args=[argument])


def test_the_config_file_does_not_turn_xsrf_protection_off():
    config = tomllib.loads((ROOT / "fsl_app" / ".streamlit" / "config.toml").read_text())
    assert config.get("server", {}).get("enableXsrfProtection", True) is True


def test_launch_ui_prints_warnings_and_starts_streamlit_with_the_hash(monkeypatch, capsys, password_file):
    password_file.chmod(0o640)
    started = []
    monkeypatch.setattr(ui_launch.subprocess, "call", lambda command, env: started.append((command, env)) or 0)
    assert ui_launch.launch_ui(address="0.0.0.0", port=8502, password_file=str(password_file)) == 0
    (command, env), = started
    assert auth.check_secret(SECRET, env[auth.PASSWORD_HASH_ENV])
    assert "chmod 600" in capsys.readouterr().err


def test_launch_ui_refuses_before_starting_anything(monkeypatch):
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    monkeypatch.setattr(ui_launch.subprocess, "call", lambda *args, **kwargs: pytest.fail("streamlit started"))
    with pytest.raises(AuthError, match="refusing to serve"):
        ui_launch.launch_ui(address="0.0.0.0")


def test_ui_arguments_reach_the_launcher(monkeypatch, password_file):
    import argparse

    parser = argparse.ArgumentParser()
    ui_launch.add_ui_arguments(parser)
    started = []
    monkeypatch.setattr(ui_launch.subprocess, "call", lambda command, env: started.append((command, env)) or 0)
    args = parser.parse_args(["--address", "0.0.0.0", "--port", "8777", "--password-file", str(password_file)])
    assert args.handler(args) == 0
    (command, env), = started
    assert "--server.port=8777" in command
    assert auth.check_secret(SECRET, env[auth.PASSWORD_HASH_ENV])
    defaults = parser.parse_args([])
    assert (defaults.address, defaults.port, defaults.password_file, defaults.no_auth) == ("127.0.0.1", 8501, None,
                                                                                        False)
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    no_secret = parser.parse_args(["--address", "0.0.0.0"])
    with pytest.raises(AuthError, match="refusing"):
        no_secret.handler(no_secret)
