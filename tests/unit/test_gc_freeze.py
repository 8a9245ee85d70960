"""``gc_freeze``: after start-up the loaded code sits in the permanent generation."""

from __future__ import annotations

import gc

from agentcast.app import create_gateway
from agentcast.settings import Settings


async def test_start_freezes_the_startup_heap_when_asked() -> None:
    gc.unfreeze()
    gateway = create_gateway(Settings(store_url="", gc_freeze=True))
    try:
        await gateway.start()
        assert gc.get_freeze_count() > 10_000
    finally:
        await gateway.stop()
        gc.unfreeze()
    quiet = create_gateway(Settings(store_url="", gc_freeze=False))
    await quiet.start()
    try:
        assert gc.get_freeze_count() == 0
    finally:
        await quiet.stop()
