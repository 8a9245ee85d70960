"""The live web dashboard: ``GET /`` and its built assets.

The dashboard is a single-page application (source in ``dashboard/`` at the repository
root: React, TypeScript, Vite); its build is shipped inside the package, in
``agentcast/dashboard/static/``, so that ``pip install agentcast`` serves it without Node.
This feature serves that directory and nothing else:

* ``GET /`` (and ``/index.html``): the page, ``Cache-Control: no-cache`` (revalidated on
  every load, so a new build is picked up at once), with an ``ETag``;
* ``GET /assets/<name>``: the bundles, whose names carry a content hash, so they are
  ``Cache-Control: public, max-age=31536000, immutable``;
* ``GET /favicon.svg``.

Files are found by name in a table read once, at the first request (never by joining a
request's path to a directory: no traversal). Every answer has
``X-Content-Type-Options: nosniff`` and the page a ``Content-Security-Policy`` that allows
only this origin (and its WebSocket). The page holds no data: it reads everything through
the HTTP API and ``/ws`` with the visitor's token, so serving it needs no credentials.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from agentcast.codes import ErrorCode
from agentcast.plugin import GatewayFeature
from agentcast.web import http_error

if TYPE_CHECKING:
    from agentcast.gateway import Gateway

__all__ = ["STATIC_DIR", "Dashboard"]

STATIC_DIR = Path(__file__).parent / "static"
"""Where the build is shipped (``npm run build`` in ``dashboard/`` writes it)."""

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".map": "application/json",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the build, read into memory."""

    body: bytes
    content_type: str
    etag: str


def content_type(name: str) -> str:
    """The ``Content-Type`` a build file is served with."""
    suffix = Path(name).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def load_assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every file under ``root`` by its relative path (``index.html``,
    ``assets/index-3f2a.js``, …); empty when the build is missing."""
    table: dict[str, Asset] = {}
    if not root.is_dir():
        return table
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        table[name] = Asset(body, content_type(name), etag)
    return table


class Dashboard(GatewayFeature):
    """Serves the built dashboard at ``/`` (``root``: another build directory, for tests)."""

    name = "dashboard"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or STATIC_DIR
        self._assets: dict[str, Asset] | None = None

    @property
    def assets(self) -> dict[str, Asset]:
        """The build's files, read at the first access."""
        if self._assets is None:
            self._assets = load_assets(self.root)
        return self._assets

    def install(self, gateway: Gateway) -> None:
        super().install(gateway)
        router = APIRouter(include_in_schema=False)

        @router.api_route("/", methods=["GET", "HEAD"])
        @router.api_route("/index.html", methods=["GET", "HEAD"])
        async def index(request: Request) -> Response:
            """The dashboard's page (503 when the package was built without it)."""
            asset = self.assets.get("index.html")
            if asset is None:
                message = "the dashboard is not built: run `npm ci && npm run build` in dashboard/"
                raise http_error(503, ErrorCode.UNAVAILABLE, message)
            return self._answer(request, asset, REVALIDATE, page=True)

        @router.api_route("/favicon.svg", methods=["GET", "HEAD"])
        async def favicon(request: Request) -> Response:
            return self._file(request, "favicon.svg", REVALIDATE)

        @router.api_route("/assets/{name:path}", methods=["GET", "HEAD"])
        async def asset(request: Request, name: str) -> Response:
            """A bundle of the build (hashed name: cached for a year)."""
            return self._file(request, f"assets/{name}", IMMUTABLE)

        gateway.add_router(router)

    def _file(self, request: Request, name: str, cache: str) -> Response:
        asset = self.assets.get(name)
        if asset is None:
            raise http_error(404, ErrorCode.NOT_FOUND, f"no dashboard file {name!r}")
        return self._answer(request, asset, cache)

    @staticmethod
    def _answer(request: Request, asset: Asset, cache: str, *, page: bool = False) -> Response:
        headers = {
            "Cache-Control": cache,
            "ETag": asset.etag,
            "X-Content-Type-Options": "nosniff",
        }
        if page:
            headers["Content-Security-Policy"] = CSP
            headers["Referrer-Policy"] = "no-referrer"
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, headers=headers, media_type=asset.content_type)
