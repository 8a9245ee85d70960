"""The dashboard shipped in the package is the build of the source in ``dashboard/``,
and the feature serves it with the right types and caching (no Node needed).

``npm run build`` (``dashboard/scripts/manifest.mjs``) writes ``manifest.json`` beside the
build: the sha256 of every source file ``dashboard/sources.json`` lists and of every built
file. A source edited without rebuilding, a build edited by hand, or a new source file
that was never built fails here, so CI checks the shipped build against the source.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agentcast.app import default_features
from agentcast.dashboard import Dashboard
from agentcast.dashboard.feature import IMMUTABLE, STATIC_DIR, content_type
from agentcast.gateway import Gateway
from agentcast.settings import Settings
from agentcast.transports.http import create_app

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "dashboard"
MANIFEST = json.loads((STATIC_DIR / "manifest.json").read_text(encoding="utf-8"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def test_the_shipped_build_matches_the_source() -> None:
    listed = json.loads((SOURCE / "sources.json").read_text(encoding="utf-8"))["sources"]
    sources = {
        Path(os.path.relpath(p, SOURCE)).as_posix(): _sha(p)
        for entry in listed
        for p in _files(SOURCE / entry)
        if "node_modules" not in p.parts
    }
    assert "src/App.tsx" in sources and "package-lock.json" in sources
    # @agentcast/client is bundled from its source: a change to it needs a rebuild too
    assert "../clients/js/src/client.ts" in sources and "../clients/js/package.json" in sources
    stale = sorted(
        k
        for k in sources.keys() | MANIFEST["sources"].keys()
        if sources.get(k) != MANIFEST["sources"].get(k)
    )
    assert stale == [], f"rebuild the dashboard (npm ci && npm run build in dashboard/): {stale}"


def test_the_build_is_what_the_manifest_says() -> None:
    built = {
        p.relative_to(STATIC_DIR).as_posix(): _sha(p)
        for p in _files(STATIC_DIR)
        if p.name != "manifest.json"
    }
    assert built == MANIFEST["build"]
    index = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    referenced = re.findall(r'(?:src|href)="\./([^"]+)"', index)
    assert any(r.endswith(".js") for r in referenced) and any(
        r.endswith(".css") for r in referenced
    )
    assert all(r in built for r in referenced), referenced


def test_every_source_file_is_listed() -> None:
    """A file the build reads but ``sources.json`` misses would escape the check."""
    listed = json.loads((SOURCE / "sources.json").read_text(encoding="utf-8"))["sources"]
    top = {p.name for p in SOURCE.iterdir()} - {"node_modules", "sources.json", "scripts"}
    assert top <= set(listed), top - set(listed)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    gateway = Gateway(Settings(store_url=""), features=[Dashboard()])
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_the_page_and_its_assets_are_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<div id="root">' in page.text
    again = await http.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    for name in re.findall(r'(?:src|href)="\./(assets/[^"]+)"', page.text):
        got = await http.get(f"/{name}")
        assert got.status_code == 200
        assert got.headers["content-type"] == types[Path(name).suffix]
        assert got.headers["cache-control"] == IMMUTABLE == "public, max-age=31536000, immutable"
        assert got.content == (STATIC_DIR / name).read_bytes()
    icon = await http.get("/favicon.svg")
    assert icon.headers["content-type"] == "image/svg+xml"
    assert (await http.head("/")).status_code == 200


async def test_nothing_else_is_served(http: httpx.AsyncClient) -> None:
    for path in (
        "/assets/nope.js",
        "/assets/../feature.py",
        "/assets/%2e%2e%2ffeature.py",
        "/assets/../../__init__.py",
        "/manifest.json",
    ):
        assert (await http.get(path)).status_code == 404, path


async def test_a_package_without_the_build_says_so(tmp_path: Path) -> None:
    gateway = Gateway(Settings(store_url=""), features=[Dashboard(root=tmp_path / "none")])
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        got = await client.get("/")
    assert got.status_code == 503
    assert "npm run build" in got.json()["detail"]["message"]


def test_the_dashboard_is_a_default_feature() -> None:
    assert any(isinstance(f, Dashboard) for f in default_features(Settings(store_url="")))
    off = default_features(Settings(store_url="", dashboard=False))
    assert not any(isinstance(f, Dashboard) for f in off)
    assert content_type("a.svg") == "image/svg+xml"
    assert content_type("a.woff2") == "font/woff2"


def test_the_build_commands_of_the_docs_exist() -> None:
    """docs/dashboard.md's shell block names scripts package.json has (running them needs
    Node and the registry: the manifest check above is what proves the build current)."""
    doc = (ROOT / "docs" / "dashboard.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\ncd dashboard\n(.*?)```", doc, re.DOTALL)
    assert block is not None
    scripts = json.loads((SOURCE / "package.json").read_text(encoding="utf-8"))["scripts"]
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["npm ci", "npm run build", "npm run dev"]
    assert all(c.removeprefix("npm run ") in scripts for c in commands[1:])
    assert (SOURCE / "package-lock.json").is_file()  # what npm ci installs from
    assert "node scripts/manifest.mjs" in scripts["build"]
    assert IMMUTABLE in doc
