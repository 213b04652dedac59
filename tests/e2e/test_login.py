"""The password gate in a real browser: the studio started the way `fsl-app ui --password-file FILE` starts it
(fsl_app.ui_launch, so only the password's hash reaches streamlit) shows nothing but the login form, refuses a wrong
password, and opens the Home page for the right one, with Streamlit's XSRF cookie set."""

from __future__ import annotations

import os

import pytest
from browser_setup import chromium, free_port, running_studio  # noqa: F401  (chromium: the fixture)
from test_browser import CHROMIUM_ARGS, VIEWPORT

from fsl_app import auth
from fsl_app.cli import ui as ui_launch

pytestmark = pytest.mark.e2e

SECRET = "browser test password 42"
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def protected_server(tmp_path_factory, chromium):
    """The studio on 127.0.0.1 with a password file (the gate applies on loopback too when a secret is set)."""
    folder = tmp_path_factory.mktemp("e2e-login")
    password_file = folder / "password"
    password_file.write_text(SECRET + "\n")
    password_file.chmod(0o600)
    env = {**os.environ, "FSL_APP_HOME": str(folder / "home"), "FSL_APP_TEST_BACKBONES": "1", "HF_HUB_OFFLINE": "1"}
    env.pop(auth.PASSWORD_ENV, None)
    port = free_port()
    invocation = ui_launch.ui_invocation(port=port, address="127.0.0.1", password_file=password_file, env=env)
    assert invocation.launch.auth and SECRET not in " ".join(invocation.command)
    with running_studio(folder, invocation.launch.env, port=port, command=invocation.command) as url:
        yield url


def test_log_in_then_see_the_home_page(protected_server, chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(protected_server)
            password = page.get_by_label("Password", exact=True)
            password.wait_for()
            assert page.get_by_text("Few-shot image classification studio").count() == 0
            assert page.locator('[data-testid="stSidebarNav"]').count() == 0

            password.fill("wrong password")
            page.get_by_role("button", name="Log in").click()
            page.get_by_text("Wrong password.").wait_for()

            password.fill(SECRET)
            page.get_by_role("button", name="Log in").click()
            page.get_by_text("Few-shot image classification studio").first.wait_for()
            page.get_by_role("button", name="Log out").wait_for()
            assert "_streamlit_xsrf" in {cookie["name"] for cookie in context.cookies()}
        finally:
            context.close()
            browser.close()
