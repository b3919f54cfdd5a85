"""Headless Chromium for tests that look at the Airflow UI the way an operator does (Playwright
driving Debian's ``chromium`` package: no ``playwright install``, no browser download).

    with headless_chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        login_through_form(page, stack.base_url, "/plugin/pipelined", "admin", "admin")

The browser binary is ``$TRIGGERFLOW_CHROMIUM`` or ``/usr/bin/chromium``;
:func:`chromium_missing` says why it cannot be used (tests skip on that, except under CI).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: the window the screenshots in docs/img/ are taken at
VIEWPORT = {"width": 1600, "height": 1000}
# No sandbox: CI containers run as root, where Chromium refuses its sandbox. The rest keeps the
# browser from phoning home (updates, sync, field trials) while a test runs.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> Path:
    return Path(os.environ.get("TRIGGERFLOW_CHROMIUM") or DEFAULT_CHROMIUM)


def chromium_missing() -> str | None:
    """Why a headless browser cannot run here (None: it can)."""
    path = chromium_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        return f"{path} not found: install Debian's chromium package (apt-get install chromium fonts-dejavu-core)"
    try:
        import playwright.sync_api  # noqa: F401 - only whether it imports
    except ImportError as exc:
        return f"the playwright package is not installed ({exc}); pip install -r requirements-dev.txt"
    return None


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """A Playwright ``Browser`` on the system Chromium, closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path()), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def login_through_form(page: Any, base_url: str, path: str, username: str, password: str, timeout_ms: float = 60_000) -> None:
    """Open ``path`` unauthenticated, expect Airflow's login form (SimpleAuthManager), sign in
    through it and wait until the UI is back at ``path`` with the ``_token`` cookie set."""
    page.goto(f"{base_url}{path}")
    page.wait_for_url(re.compile(r"/auth/login"), timeout=timeout_ms)
    page.get_by_label(re.compile("username", re.I)).fill(username)
    page.get_by_label(re.compile("password", re.I)).fill(password)
    page.get_by_role("button", name=re.compile(r"sign in|log ?in", re.I)).click()
    page.wait_for_url(re.compile(re.escape(path) + r"/?$"), timeout=timeout_ms)
    if not any(cookie["name"] == "_token" for cookie in page.context.cookies(base_url)):
        raise AssertionError("signed in, but the UI set no _token cookie")
