"""``gc_freeze``: after start-up the loaded code sits in the permanent generation."""

from __future__ import annotations

import gc

from agentcast.app import create_gateway
from agentcast.settings import Settings


async def test_start_freezes_the_startup_heap_when_asked() -> None:
    gc.unfreeze()
    threshold = gc.get_threshold()
    gateway = create_gateway(Settings(store_url="", gc_freeze=True, gc_full_every=77))
    try:
        await gateway.start()
        assert gc.get_freeze_count() > 10_000
        # full collections at most every 77 generation-1 collections, the young ones as before
        assert gc.get_threshold() == (threshold[0], threshold[1], 77)
    finally:
        await gateway.stop()
        gc.unfreeze()
        gc.set_threshold(*threshold)
    quiet = create_gateway(Settings(store_url="", gc_freeze=False))
    await quiet.start()
    try:
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == threshold
    finally:
        await quiet.stop()
