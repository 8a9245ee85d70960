"""``/docs`` and ``/redoc`` need nothing but the server: every script, style sheet and
icon they reference is served by the server itself."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from agentcast.transports import docs
from agentcast.transports.docs import ASSETS, ASSETS_URL, install_offline_docs
from tests.conftest import RunningServer

EXPECTED_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def referenced(html: str) -> list[str]:
    """Every URL the page loads or links: src/href attributes and the spec's ``url``."""
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)  # Swagger UI's spec URL
    urls += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)  # ReDoc's
    return urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_local_assets(server: RunningServer, page: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        assert "http://" not in html and "https://" not in html and "//cdn" not in html
        urls = referenced(html)
        assert "/openapi.json" in urls
        assets = [url for url in urls if url.startswith(ASSETS_URL + "/")]
        assert len(assets) >= 2  # the script and the icon (Swagger UI: and its CSS)
        assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
        for url in urls:
            got = await http.get(url)
            assert got.status_code == 200, url
            suffix = url[url.rfind(".") :]
            if suffix in EXPECTED_TYPES:
                assert EXPECTED_TYPES[suffix] in got.headers["content-type"], url
        if page == "/docs":
            script = await http.get(f"{ASSETS_URL}/swagger-ui-bundle.js")
            assert "SwaggerUIBundle" in script.text[:2000]
            assert len(script.content) > 500_000  # the real bundle, not a stub
            version = re.search(r'PACKAGE_VERSION:"(\d+)\.', script.text)
            assert version is not None and int(version[1]) >= 5  # renders OpenAPI 3.1
            assert (await http.get("/openapi.json")).json()["openapi"].startswith("3.1")
            assert '"validatorUrl": null' in html  # no badge from validator.swagger.io


async def test_assets_served_and_nothing_else(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for name, media_type in ASSETS.items():
            got = await http.get(f"{ASSETS_URL}/{name}")
            assert got.status_code == 200
            assert got.headers["content-type"] == media_type
            assert got.headers["cache-control"] == "public, max-age=86400"
        for name in ("../pyproject.toml", "%2e%2e%2fcore.py", "core.py", "nope.js"):
            assert (await http.get(f"{ASSETS_URL}/{name}")).status_code == 404


async def test_mounted_under_a_prefix_and_disabled_pages() -> None:
    """URLs follow the ASGI root_path; a docs URL set to None stays disabled."""
    app = FastAPI(redoc_url=None)
    install_offline_docs(app)
    transport = httpx.ASGITransport(app=app, root_path="/gw")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        html = (await http.get("/docs")).text
        assert "/gw/openapi.json" in referenced(html)
        assert f"/gw{ASSETS_URL}/swagger-ui-bundle.js" in referenced(html)
        assert (await http.get("/redoc")).status_code == 404
    assert [getattr(r, "path", None) for r in app.routes].count("/docs") == 1


async def test_no_openapi_no_docs_pages() -> None:
    app = FastAPI(openapi_url=None)
    install_offline_docs(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert (await http.get("/docs")).status_code == 404
        assert (await http.get("/redoc")).status_code == 404


def test_a_broken_install_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An assets folder without the files (a broken install) fails install_offline_docs,
    not the user's browser later."""
    (tmp_path / "swagger-ui-bundle.js").write_text("// not all of them")
    monkeypatch.setattr(docs, "assets_folder", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"offline docs: .*swagger-ui\.css is missing"):
        install_offline_docs(FastAPI())
