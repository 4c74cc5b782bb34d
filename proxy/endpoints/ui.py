"""The chat page (proxy/static): `/` and `/chat`, its script and style under `/static/`. The files are
read once, at import; nothing is fetched from anywhere else at run time."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.errors import NotFound

_DIR = Path(__file__).parent.parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
FILES = {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in sorted(_DIR.iterdir()) if p.suffix in _TYPES}
# No inline script or style, no other origin: the page talks only to this proxy.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
            "cache-control": "no-cache"}


async def chat_page(request: Request) -> Response:
    body, media_type = FILES["chat.html"]
    return Response(body, media_type=media_type, headers=_HEADERS)


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in FILES or name.endswith(".html"):
        raise NotFound(f"Unknown request URL: GET {request.url.path}.", code="not_found")
    body, media_type = FILES[name]
    return Response(body, media_type=media_type, headers=_HEADERS)


ROUTES = [
    Route("/", chat_page, methods=["GET"]),
    Route("/chat", chat_page, methods=["GET"]),
    Route("/static/{name}", static_file, methods=["GET"]),
]
