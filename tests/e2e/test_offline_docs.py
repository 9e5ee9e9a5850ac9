"""The API docs work offline (issue #30): /docs and /redoc load Swagger UI and ReDoc from the server itself, never a
CDN or Google Fonts, and open without an API key as the chat page does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e

# every URL a page names: attributes, and Swagger UI's `url: '...'` in its inline script
URL_IN_HTML = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl:\s*)["']([^"']+)["']""")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
KEY = "docs-key"


def urls_in(html: str) -> list[str]:
    return URL_IN_HTML.findall(html)


def check_docs_page(base_url: str, path: str, expected: set[str]) -> None:
    """The page and everything it names come from ``base_url``, with the right content type."""
    page = httpx.get(f"{base_url}{path}", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]  # nothing from elsewhere, even if tried
    html = page.text
    assert "http:" not in html and "https:" not in html and "fonts.googleapis" not in html, html
    urls = urls_in(html)
    assert {Path(urlsplit(u).path).suffix for u in urls} == expected, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # same server, same scheme
        asset = httpx.get(urljoin(base_url, url), timeout=10)
        assert asset.status_code == 200, (url, asset.status_code)
        suffix = Path(urlsplit(url).path).suffix
        assert asset.headers["content-type"].split(";")[0] == CONTENT_TYPES[suffix], (url, asset.headers)
        assert len(asset.content) > 100, url


def test_the_url_pattern_sees_every_kind_of_reference() -> None:
    html = """<link href="/a.css"><script src='/b.js'></script><redoc spec-url="/c.json"></redoc>
              <script>SwaggerUIBundle({url: '/d.json'})</script>"""
    assert urls_in(html) == ["/a.css", "/b.js", "/c.json", "/d.json"]


def test_swagger_ui_loads_everything_from_the_server(base_url: str) -> None:
    check_docs_page(base_url, "/docs", {".css", ".png", ".js", ".json"})
    assert "aipc-chat" in httpx.get(f"{base_url}/docs", timeout=10).text


def test_redoc_loads_everything_from_the_server_and_no_fonts(base_url: str) -> None:
    check_docs_page(base_url, "/redoc", {".png", ".js", ".json"})


def test_the_schema_still_loads(base_url: str) -> None:
    schema = httpx.get(f"{base_url}/openapi.json", timeout=10)
    assert schema.status_code == 200 and schema.headers["content-type"] == "application/json"
    assert "post" in schema.json()["paths"]["/v1/chat/completions"]


def test_only_the_shipped_files_are_served(base_url: str) -> None:
    for name in ("README.md", "swagger-ui-dist.LICENSE", "..%2F..%2Fsettings.py", "swagger-ui-bundle.js.map"):
        assert httpx.get(f"{base_url}/docs/assets/{name}", timeout=10).status_code == 404, name


@pytest.fixture(scope="module")
def keyed_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with an API key (models loaded on first use: only the docs are asked for here)."""
    root = tmp_path_factory.mktemp("docs-keyed")
    server = start_server(demo_models.parent, root / "data", root / "server.log",
                          env={"AIPC_API_KEY": KEY, "AIPC_LOAD_ON_START": "false"})
    yield server
    server.stop()


def test_the_docs_open_without_the_key_and_the_api_still_needs_it(keyed_server: LiveServer) -> None:
    check_docs_page(keyed_server.base_url, "/docs", {".css", ".png", ".js", ".json"})
    check_docs_page(keyed_server.base_url, "/redoc", {".png", ".js", ".json"})
    refused = httpx.get(f"{keyed_server.base_url}/v1/models", timeout=10)
    assert refused.status_code == 401
    assert httpx.get(f"{keyed_server.base_url}/v1/models", headers={"authorization": f"Bearer {KEY}"},
                     timeout=10).status_code == 200
