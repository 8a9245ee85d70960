"""When the gateway writes: a lone frame at the end of the loop iteration, a group of dirty
outboxes early in the iteration (up to a budget), the rest coalesced at its end (one write
per connection), and a failing writer harms no one else.

The real gateway, hub and in-memory broker, without sockets: writers record their writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from agentcast.codes import CloseCode
from agentcast.core.envelope import payload_of_frame
from agentcast.gateway import _WRITE_BUDGET, _WRITE_GROUP, Gateway
from agentcast.policy import Principal
from agentcast.settings import Settings
from tests.conftest import UNIT


class Recorder:
    """A writer that keeps every write (a list of frames) it was given."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.fail = False
        self.closed: CloseCode | None = None
        self.wrote = asyncio.Event()

    def write_frames(self, frames: list[bytes]) -> None:
        if self.fail:
            raise OSError("broken writer")
        self.writes.append(list(frames))
        self.wrote.set()

    def send_ping(self) -> None: ...

    def hold_reading(self, seconds: float) -> None: ...

    def close(self, code: CloseCode, reason: str) -> None:
        self.closed = code

    def types(self) -> list[str]:
        return [orjson.loads(payload_of_frame(f))["type"] for w in self.writes for f in w]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway(Settings(store_url=""))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def subscribed(gw: Gateway, topics: list[str]) -> list[Recorder]:
    """One connection per topic, each subscribed (its ``subscribed`` reply received)."""
    writers = []
    for topic in topics:
        w = Recorder()
        session = gw.open_session(Principal("u"), w)
        gw.receive_text(session, orjson.dumps({"type": "subscribe", "topic": topic}).decode())
        writers.append(w)
    for w in writers:
        await asyncio.wait_for(w.wrote.wait(), UNIT)
        assert w.types() == ["subscribed"]
        w.writes.clear()
    # the last flush of the subscribe replies is behind us: a fresh iteration
    await asyncio.wait_for(_iteration(gw), UNIT)
    return writers


async def _iteration(gw: Gateway) -> None:
    """Wait until the end-of-iteration flush already scheduled has run (callbacks run in
    the order they were scheduled)."""
    done = asyncio.get_running_loop().create_future()
    gw.loop.call_soon(done.set_result, None)
    await done
    assert gw._flush_handle is None and not gw.hub.dirty


async def test_a_lone_event_is_written_at_the_end_of_the_iteration(gateway: Gateway) -> None:
    (w,) = await subscribed(gateway, ["t"])
    await gateway.publish("t", "e", {"n": 1})  # returns without an event-loop iteration
    assert not w.writes
    await asyncio.wait_for(_iteration(gateway), UNIT)
    assert w.types() == ["e"] and len(w.writes) == 1


async def test_a_group_of_dirty_outboxes_is_written_early(gateway: Gateway) -> None:
    writers = await subscribed(gateway, [f"u{i}" for i in range(_WRITE_GROUP)])
    for i in range(_WRITE_GROUP - 1):
        gateway.publish_now(f"u{i}", "e", {"i": i})
    assert all(not w.writes for w in writers)
    await gateway.publish(f"u{_WRITE_GROUP - 1}", "e", {"i": 0})  # the group is complete
    assert all(w.types() == ["e"] and len(w.writes) == 1 for w in writers)


async def test_a_heavy_iteration_coalesces_one_write_per_connection(gateway: Gateway) -> None:
    writers = await subscribed(gateway, ["fan"] * (_WRITE_BUDGET + 36))
    for n in range(3):  # each event dirties more outboxes than the budget at once
        gateway.publish_now("fan", "e", {"n": n})
    assert all(not w.writes for w in writers)  # nothing before the iteration's end
    await asyncio.wait_for(_iteration(gateway), UNIT)
    assert all([len(x) for x in w.writes] == [3] for w in writers)


async def test_the_budget_is_per_iteration_then_the_rest_coalesces(gateway: Gateway) -> None:
    n = _WRITE_BUDGET + 50
    writers = await subscribed(gateway, [f"u{i}" for i in range(n)])
    for i in range(n):
        gateway.publish_now(f"u{i}", "e", {"i": i})
    assert [bool(w.writes) for w in writers] == [True] * _WRITE_BUDGET + [False] * 50
    for i in range(_WRITE_BUDGET):  # a second frame for the early ones waits too
        gateway.publish_now(f"u{i}", "e", {"i": i})
    assert all(len(w.writes) == 1 for w in writers[:_WRITE_BUDGET])
    await asyncio.wait_for(_iteration(gateway), UNIT)
    assert all(w.types() == ["e", "e"] and len(w.writes) == 2 for w in writers[:_WRITE_BUDGET])
    assert all(w.types() == ["e"] and len(w.writes) == 1 for w in writers[_WRITE_BUDGET:])
    # the next iteration has its budget again
    for i in range(_WRITE_GROUP):
        gateway.publish_now(f"u{i}", "e", {"i": i})
    assert all(len(w.writes) == 3 for w in writers[:_WRITE_GROUP])


async def test_a_failing_writer_is_closed_and_harms_no_one_else(gateway: Gateway) -> None:
    writers = await subscribed(gateway, [f"u{i}" for i in range(_WRITE_GROUP)])
    bad = writers[0]
    bad.fail = True
    for i in range(_WRITE_GROUP):  # the group's early write: inside publish_now
        gateway.publish_now(f"u{i}", "e", {"i": i})  # the writer's error stays in the gateway
    assert all(w.types() == ["e"] for w in writers[1:])
    assert bad.closed is CloseCode.INTERNAL_ERROR
    gateway.publish_now("u0", "e", {"i": 0})  # the closed one is no longer written to
    await asyncio.wait_for(_iteration(gateway), UNIT)
    assert not bad.writes
