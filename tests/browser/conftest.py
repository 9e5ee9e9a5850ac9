"""Headless Chromium (Debian's ``/usr/bin/chromium``, driven by playwright) against a live demo server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import LiveServer, start_server

CHROMIUM = Path(os.environ.get("AIPC_TEST_CHROMIUM", "/usr/bin/chromium"))
# No network chatter of its own: the page must work on a machine with no internet, and so must the test.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = REPO / "test-artifacts"
VIEWPORT = {"width": 1000, "height": 720}


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One Chromium for the session; skipped when the browser or playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="package")
def web_server(browser: Any, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A demo server for the page tests (started after the browser check, so a skip costs nothing)."""
    root = tmp_path_factory.mktemp("web")
    server = start_server(demo_models.parent, root / "data", root / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell a failed test at teardown."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def new_page(browser: Any, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Open pages in fresh contexts (a new user each: empty localStorage); on failure, screenshot every page."""
    contexts: list[Any] = []
    errors: list[str] = []  # uncaught JavaScript errors fail the test

    def open_page(base_url: str, **context_options: Any) -> Any:
        context = browser.new_context(viewport=VIEWPORT, color_scheme="light", **context_options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base_url}/")
        return page

    yield open_page
    report = getattr(request.node, "rep_call", None)
    for i, context in enumerate(contexts):
        if report is not None and report.failed:
            for j, page in enumerate(context.pages):
                page.screenshot(path=artifacts / f"FAILED-{request.node.name}-{i}-{j}.png", full_page=True)
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
