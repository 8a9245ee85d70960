from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentcast.app import create_gateway
from agentcast.gateway import Gateway


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A started in-memory gateway without sockets."""
    gw = create_gateway()
    await gw.start()
    yield gw
    await gw.stop()


def recorded(gw: Gateway, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every retained event of ``topic``."""
    page = gw.broker.history_now(topic, 0)  # type: ignore[attr-defined]
    return [(p.type, p.to_dict()["data"]) for p in page.publications]
