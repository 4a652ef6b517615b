"""``/ui``: the operator dashboard, a static page that reads only the model and admin APIs.

The page and its assets ship inside the package (``serving/static``) and are served from here,
never from a CDN. Every response carries a strict Content-Security-Policy (same origin only, no
inline script or style), so even a reason text crafted as HTML cannot run in an operator's browser.
The admin token never reaches this router: the page keeps it in ``sessionStorage`` and sends it
as a bearer header to ``/v1/admin`` only.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@lru_cache(maxsize=1)
def static_files() -> dict[str, bytes]:
    """Name -> bytes of every shipped asset (read once; the set is fixed, so no path is ever joined)."""
    root = resources.files("reloop_service.serving") / "static"
    return {
        entry.name: entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in MEDIA_TYPES)
    }


def _asset(name: str) -> Response:
    data = static_files().get(name)
    if data is None:
        raise HTTPException(404, detail=f"no dashboard asset named {name!r}")
    media = next(m for ext, m in MEDIA_TYPES.items() if name.endswith(ext))
    return Response(data, media_type=media, headers=SECURITY_HEADERS)


@router.get("/ui", summary="Operator dashboard")
def dashboard() -> Response:
    return _asset("index.html")


@router.get("/ui/")
def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/static/{name}", summary="Dashboard asset")
def dashboard_asset(name: str) -> Response:
    return _asset(name)
