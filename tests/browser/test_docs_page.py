"""The API docs render in a browser with no internet (issue #30): every request that is not to the server itself is
blocked, and Swagger UI and ReDoc still show the operations; neither page even tries to reach another host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.browser


# ReDoc's sidebar shows its maker's logo from their CDN (hard-coded in its bundle): the page's Content-Security-Policy
# refuses it before any request is made, and ReDoc then leaves the logo out.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def offline(page: Any) -> list[str]:
    """Block every request to another host (as on a machine with no network); the list fills with what was tried,
    and with the console's errors (a Content-Security-Policy refusal is one)."""
    tried: list[str] = []
    page.on("console", lambda message: tried.append(message.text) if message.type == "error" else None)

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlsplit(url).hostname in ("127.0.0.1", "localhost") or url.startswith("data:"):
            request_route.continue_()
        else:
            tried.append(url)
            request_route.abort("internetdisconnected")

    page.route("**/*", route)
    return tried


def test_swagger_ui_renders_the_operations_offline(web_server: LiveServer, new_page: Callable[..., Any]) -> None:
    page = new_page(web_server.base_url)
    tried = offline(page)
    page.goto(f"{web_server.base_url}/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() > 20
    chat = page.locator('.opblock-post .opblock-summary-path[data-path="/v1/chat/completions"]')
    assert chat.count() == 1 and chat.is_visible()
    assert "aipc-chat" in page.locator(".info .title").inner_text()
    chat.click()  # an operation opens: its body schema comes from the same local schema
    page.locator(".opblock-post.is-open .opblock-body").first.wait_for()
    assert tried == []


def test_redoc_renders_the_operations_offline(web_server: LiveServer, new_page: Callable[..., Any]) -> None:
    page = new_page(web_server.base_url)
    tried = offline(page)
    page.goto(f"{web_server.base_url}/redoc")
    operations = page.locator('[data-section-id^="operation/"]')
    operations.first.wait_for(state="attached")
    assert operations.count() > 20
    assert page.get_by_text("/v1/chat/completions").count() >= 1
    assert page.locator('img[alt="redocly logo"]').count() == 0
    assert len(tried) == 1 and REDOC_LOGO in tried[0] and "Content Security Policy" in tried[0], tried
