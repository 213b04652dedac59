"""The studio's login gate under Streamlit's AppTest: with a password configured nothing renders before login, a wrong
password is refused (and repeated ones slow down), the right one opens the Home page, Log out closes it again."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.proto.TextInput_pb2 import TextInput as TextInputProto
from streamlit.testing.v1 import AppTest

from fsl_app import auth
from fsl_app.views import _auth

APP = Path(__file__).resolve().parents[1] / "fsl_app" / "app.py"
SECRET = "a long enough studio password"
HOME_TITLE = "Few-shot image classification studio"


@pytest.fixture(autouse=True)
def fresh_gate(monkeypatch):
    """A configured password (the plain variable, as for `streamlit run`) and a clean back-off record."""
    monkeypatch.delenv(auth.PASSWORD_HASH_ENV, raising=False)
    monkeypatch.setenv(auth.PASSWORD_ENV, SECRET)
    _auth.login_limiter.clear()
    yield
    _auth.login_limiter.clear()


def start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def log_in(at: AppTest, password: str) -> AppTest:
    password_box, = [box for box in at.text_input if box.label == "Password"]
    password_box.input(password)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shows_the_studio(at: AppTest) -> bool:
    return any(title.value.startswith(HOME_TITLE) for title in at.title) or len(at.sidebar.selectbox) > 0


def test_nothing_of_the_studio_renders_before_login():
    at = start()
    assert [box.label for box in at.text_input] == ["Password"]
    assert at.text_input[0].proto.type == TextInputProto.PASSWORD  # masked in the browser
    assert not shows_the_studio(at)
    assert len(at.sidebar.button) == 0 and len(at.sidebar.expander) == 0  # no project picker, no new-project form


def test_wrong_password_is_refused():
    at = log_in(start(), "not it")
    assert [error.value for error in at.error] == ["Wrong password."]
    assert not shows_the_studio(at)


def test_right_password_opens_the_home_page_and_log_out_closes_it():
    at = log_in(start(), SECRET)
    assert shows_the_studio(at)
    assert any(title.value.startswith(HOME_TITLE) for title in at.title)
    assert not at.error
    log_out, = [button for button in at.sidebar.button if button.label == "Log out"]
    log_out.click().run()
    assert not shows_the_studio(at)
    assert [box.label for box in at.text_input] == ["Password"]


def test_repeated_failures_show_the_back_off_and_refuse_even_the_right_password():
    at = start()
    for _ in range(auth.PER_CLIENT_POLICY.free_failures):
        log_in(at, "guess")
    assert any("Too many failed attempts" in warning.value for warning in at.warning)
    log_in(at, SECRET)
    assert not shows_the_studio(at)
    assert any("Too many failed attempts" in warning.value for warning in at.warning)


def test_the_launchers_hash_is_accepted(monkeypatch):
    monkeypatch.delenv(auth.PASSWORD_ENV)
    monkeypatch.setenv(auth.PASSWORD_HASH_ENV, auth.hash_secret(SECRET))
    at = start()
    assert not shows_the_studio(at)
    assert shows_the_studio(log_in(at, SECRET))


def test_a_damaged_hash_keeps_the_studio_closed(monkeypatch):
    monkeypatch.setenv(auth.PASSWORD_HASH_ENV, "not-a-hash")
    at = start()
    assert any("--password-file" in error.value for error in at.error)
    assert not shows_the_studio(at) and not at.text_input


def test_without_a_password_there_is_no_gate(monkeypatch):
    monkeypatch.delenv(auth.PASSWORD_ENV)
    at = start()
    assert shows_the_studio(at)
    assert "Log out" not in [button.label for button in at.sidebar.button]
