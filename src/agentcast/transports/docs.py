"""``/docs`` and ``/redoc`` that work without the internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google):
behind a firewall, on a plane or in an air-gapped network they stay blank.
:func:`install_offline_docs` serves the same pages with their JavaScript, CSS and favicon
taken from the files of the ``fastapi-offline`` package (Swagger UI 5, which renders
OpenAPI 3.1, and ReDoc 2), under :data:`ASSETS_URL` on the app itself.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.routing import BaseRoute, Route

__all__ = ["ASSETS", "ASSETS_URL", "assets_folder", "install_offline_docs"]

ASSETS_URL = "/_docs"
"""Where the pages' files are served (``/_docs/swagger-ui-bundle.js`` …)."""

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
"""The files served, with their content types; any other name under :data:`ASSETS_URL`
is a 404."""

_SWAGGER_PARAMETERS = {"validatorUrl": None}
"""No validator badge: Swagger UI would fetch it from validator.swagger.io."""


def assets_folder() -> Path:
    """The folder holding :data:`ASSETS` (inside the installed ``fastapi_offline``)."""
    return Path(str(files("fastapi_offline") / "static"))


def install_offline_docs(app: FastAPI) -> None:
    """Serve ``app``'s Swagger UI (``app.docs_url``) and ReDoc (``app.redoc_url``) pages
    from local files instead of FastAPI's CDN-loading ones, which it replaces.

    The pages point at ``app.openapi_url`` and at :data:`ASSETS_URL`, all relative to the
    request's ``root_path`` (an app mounted under a prefix keeps working). A docs URL set
    to None stays disabled. Raises ``FileNotFoundError`` when an asset is missing from the
    installed package, so a broken install fails at start-up, not in a browser.
    """
    folder = assets_folder()
    for name in ASSETS:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"offline docs: {folder / name} is missing")
    docs_url, redoc_url, openapi_url = app.docs_url, app.redoc_url, app.openapi_url
    replaced = {url for url in (docs_url, redoc_url) if url is not None}
    app.router.routes[:] = [r for r in app.router.routes if not _serves(r, replaced)]
    title = app.title

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404)
        return FileResponse(
            folder / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
        )

    if openapi_url is None:
        return
    if docs_url is not None:

        @app.get(docs_url, include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
                swagger_ui_parameters={**_SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})},
            )

    if redoc_url is not None:

        @app.get(redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            return get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            )


def _serves(route: BaseRoute, paths: set[str]) -> bool:
    return isinstance(route, Route) and route.path in paths
