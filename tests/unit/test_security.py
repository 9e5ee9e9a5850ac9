"""The Host and cross-site rules, as pure functions (the e2e suite sends the same requests to a live server)."""

from __future__ import annotations

import pytest

from aipc_chat.api.security import cross_site_write, host_allowed, origin_allowed


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]", "[::1]:65535", "LOCALHOST"])
def test_local_hosts_pass(host: str) -> None:
    assert host_allowed(host, [])


@pytest.mark.parametrize("host", [
    None, "", "attacker.example", "localhost:80@evil.example", "user@localhost", "localhost:99999", "localhost:0",
    "localhost:80:80", "localhost/path", "127.0.0.1.evil.example", "localhost.", "[::2]", "local host",
])
def test_foreign_or_malformed_hosts_are_refused(host: str | None) -> None:
    assert not host_allowed(host, [])


def test_configured_names_and_star() -> None:
    assert host_allowed("box.lan:8000", ["box.lan"]) and not host_allowed("box.lan@evil", ["box.lan"])
    assert host_allowed("anything.example", ["*"])


@pytest.mark.parametrize(("method", "origin", "site", "refused"), [
    ("DELETE", "null", None, True),
    ("POST", "null", "cross-site", True),
    ("POST", None, "cross-site", True),  # a form or fetch from another site whose Origin was not sent
    ("PUT", "https://evil.example", "cross-site", True),
    ("PATCH", "http://localhost:3000", "cross-site", False),  # localhost:3000 -> 127.0.0.1:8000 is cross-site too
    ("POST", "http://localhost:8000", "same-origin", False),
    ("POST", None, None, False),  # curl, SDKs, desktop apps: no browser headers
    ("POST", None, "same-site", False),
    ("GET", "null", "cross-site", False),  # reading is governed by CORS, not this rule
])
def test_cross_site_writes(method: str, origin: str | None, site: str | None, refused: bool) -> None:
    assert (cross_site_write(method, origin, site, []) is not None) is refused


def test_an_allowed_extra_origin_may_write_cross_site() -> None:
    assert cross_site_write("POST", "https://app.example", "cross-site", ["https://app.example"]) is None


@pytest.mark.parametrize(("origin", "allowed"), [
    ("app://obsidian.md", True), ("tauri://localhost", True), ("vscode-webview://abc123", True),
    ("vscode-file://vscode-app", True), ("http://localhost:3000", True), ("file://", False), ("null", False),
    ("app://a/b", False), ("https://evil.example", False), ("myapp://x", False)])
def test_desktop_origins(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, []) is allowed
