"""The studio's login gate: when a password is configured (``FSL_APP_PASSWORD_HASH`` from ``fsl-app ui``, or
``FSL_APP_PASSWORD``), nothing but the password form renders until the session has logged in.

Wrong passwords slow down the next tries (``fsl_app.auth.LoginLimiter``, one per server process, keyed by the client's
address when Streamlit knows it, else by the session). Without a password there is no gate (loopback only: the
launcher refuses other addresses).
"""

from __future__ import annotations

import math
import os
import secrets

import streamlit as st

from fsl_app import auth

LOGGED_IN_KEY = "login-hash"  # the hash the session logged in against: a new password logs everyone out
CLIENT_KEY = "login-client"


@st.cache_resource(show_spinner=False)
def _expected_hash(hash_env: str | None, password_env: str | None) -> str | None:
    return auth.expected_secret_hash({auth.PASSWORD_HASH_ENV: hash_env or "", auth.PASSWORD_ENV: password_env or ""})


def expected_hash() -> str | None:
    """The configured password's hash, or None when the studio has no password."""
    return _expected_hash(os.environ.get(auth.PASSWORD_HASH_ENV), os.environ.get(auth.PASSWORD_ENV))


@st.cache_resource
def login_limiter() -> auth.LoginLimiter:
    """One back-off record per server process, shared by every session."""
    return auth.LoginLimiter()


def _client() -> str:
    if CLIENT_KEY not in st.session_state:
        st.session_state[CLIENT_KEY] = st.context.ip_address or f"session-{secrets.token_hex(8)}"
    return st.session_state[CLIENT_KEY]


def _log_out() -> None:
    st.session_state.pop(LOGGED_IN_KEY, None)


def require_login() -> None:
    """Return when the session may see the studio (adding a Log out button to the sidebar); otherwise show the
    password form and stop the script, before any page, navigation or sidebar renders."""
    try:
        expected = expected_hash()
    except auth.AuthError as error:  # a damaged hash: fail closed
        st.error(str(error))
        st.stop()
    if expected is None:
        return
    if st.session_state.get(LOGGED_IN_KEY) == expected:
        st.sidebar.button("Log out", icon=":material/logout:", on_click=_log_out)
        return
    _password_form(expected)
    st.stop()


def _password_form(expected: str) -> None:
    st.title("fsl_app studio")
    st.caption("This studio is protected by a password.")
    with st.form("login", clear_on_submit=True):
        given = st.text_input("Password", type="password", max_chars=1024)
        submitted = st.form_submit_button("Log in", type="primary")
    limiter = login_limiter()
    wait = limiter.retry_after(_client())
    if submitted and wait == 0:
        outcome = auth.attempt_login(limiter, _client(), given, expected)
        if outcome.accepted:
            st.session_state[LOGGED_IN_KEY] = expected
            st.rerun()
        st.error("Wrong password.")
        wait = outcome.retry_after_s
    if wait > 0:
        st.warning(f"Too many failed attempts: try again in {math.ceil(wait)} s.")
