"""End-to-end fixtures: the system's Chromium (headless, driven by Playwright) against
real ``agentcast serve`` processes.

No browser is downloaded: Playwright launches Debian's ``/usr/bin/chromium``
(``AGENTCAST_CHROMIUM`` for another path; ``.ci/run`` installs the package). Without it the
tests are skipped, and fail under ``AGENTCAST_REQUIRE_SERVICES=1`` (CI). Screenshots go to
``tmp/artifacts/dashboard/`` (git-ignored), at desktop (1280×800) and phone (390×844) size.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import UNIT, ServerProcess, free_port
from tests.services import require_service

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tmp" / "artifacts" / "dashboard"
CHROMIUM = os.environ.get("AGENTCAST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = int(10_000 * UNIT)
"""How long a test waits for something to show on the page (bounded, never a sleep)."""


def _chromium_found() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        require_service("playwright is not installed (pip install -e '.[dev]')")
    if not _chromium_found():
        require_service(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh page at desktop size; page errors fail the test."""
    context = await browser.new_context(viewport=DESKTOP)
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        await context.close()
    assert errors == [], errors


async def shoot(page: Any, name: str, ready: Callable[[], Any] | None = None) -> None:
    """Save ``<name>-desktop.png`` and ``<name>-phone.png`` of the page as it is, then
    restore the desktop size; the phone shot also checks that nothing overflows sideways."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.evaluate("() => window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    await page.set_viewport_size(PHONE)
    if ready is not None:
        await ready()
    await page.wait_for_timeout(150)  # one layout and paint at the new width
    await page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"))
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{name}: the page is {overflow}px wider than a phone"
    await page.set_viewport_size(DESKTOP)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``serve --demo`` for the tests that only read (a server start costs seconds):
    the demo runs, and the offline agent at 12 words/s with one message per snapshot."""
    server = Server(
        tmp_path_factory.mktemp("demo"),
        "--demo",
        AGENTCAST_OFFLINE_TOKENS_PER_SECOND="12",
        AGENTCAST_CHAT_HISTORY_LIMIT="1",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.close()


class Server(ServerProcess):
    """``agentcast serve`` with its own SQLite store in a temporary directory."""

    def __init__(self, tmp: Path, *args: str, port: int | None = None, **env: str) -> None:
        base = {
            "AGENTCAST_STORE_URL": f"sqlite:///{tmp / 'agentcast.db'}",
            "AGENTCAST_MONITORING_INTERVAL": "0.5",
        }
        super().__init__(port or free_port(), *args, env={**base, **env})

    async def __aenter__(self) -> Server:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            await asyncio.to_thread(self.stop)
        self.log.close()

    async def stop_async(self, sig: int | None = None) -> int:
        return await asyncio.to_thread(self.stop, sig)

    async def publish(self, topic: str, type: str, data: dict[str, Any], token: str = "") -> int:
        """One event over the HTTP API (as an external producer would); returns its seq."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=5 * UNIT) as http:
            r = await http.post(
                f"/api/topics/{topic}/events", json={"type": type, "data": data}, headers=headers
            )
        assert r.status_code in (200, 201, 202), r.text
        return int(r.json()["seqs"][-1])
