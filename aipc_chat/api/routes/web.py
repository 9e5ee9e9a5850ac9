"""The built-in chat page: ``GET /`` and its static files under ``/web/`` (no CDN, works offline)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import FileResponse

from aipc_chat.api.deps import SettingsDep
from aipc_chat.errors import NotFound
from aipc_chat.settings import Settings

router = APIRouter(tags=["web"])
WEB_DIR = Path(str(resources.files("aipc_chat") / "web"))
# The only files served, by their path under web/: nothing else on disk is reachable. The vendored libraries are
# pinned and listed in web/vendor/README.md.
STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "vendor/marked.umd.js": "text/javascript",
    "vendor/purify.min.js": "text/javascript",
}


# Defence in depth under the Markdown sanitizer: the page runs only its own scripts, loads nothing from elsewhere,
# and its pictures are the server's (previews arrive as data: URLs).
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")


def page_policy(settings: Settings) -> str:
    """The page's policy; with presigned picture URLs (AIPC_IMAGE_URL_EXPIRY), pictures come from the object
    store's origin too."""
    if not (settings.image_store_url and settings.image_url_expiry):
        return PAGE_POLICY
    if settings.s3_endpoint:
        parts = urlsplit(settings.s3_endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
    else:
        origin = "https://*.amazonaws.com"
    return PAGE_POLICY.replace("img-src 'self' data: blob:", f"img-src 'self' data: blob: {origin}")


@router.get("/", include_in_schema=False)
async def index(settings: SettingsDep) -> FileResponse:
    """The chat page."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": page_policy(settings)})


@router.get("/web/{name:path}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    """The page's own scripts and styles, and the libraries it ships with (a fixed list)."""
    if name not in STATIC or not (WEB_DIR / name).is_file():
        raise NotFound("No such file.")
    return FileResponse(WEB_DIR / name, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})
