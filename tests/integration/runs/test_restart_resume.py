"""A client following a run across a server restart (SIGTERM) loses nothing.

The server is ``agentcast serve --demo`` in a subprocess with a SQLite run store; the
client is agentcast's own Python client, subscribed from seq 0. The server is stopped with
SIGTERM mid-run and started again on the same port and database: the client must see
every seq exactly once, in order, including the interrupted run's last events (published
while stopping), and go on with the next runs, without ``HistoryLostError``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from agentcast.client import Event, connect
from tests.conftest import UNIT, ServerProcess, free_port


async def test_follow_the_demo_across_a_sigterm_restart(tmp_path: Path) -> None:
    port = free_port()
    env = {"AGENTCAST_STORE_URL": f"sqlite:///{tmp_path / 'runs.db'}"}
    first = ServerProcess(port, "--demo", env=env)
    await asyncio.to_thread(first.start)
    second: ServerProcess | None = None
    events: list[Event] = []
    arrived = asyncio.Event()
    try:
        async with connect(first.url) as client:

            async def follow() -> None:
                async for event in client.subscribe("workflow:demo", since=0):
                    if isinstance(event, Event):
                        events.append(event)
                        arrived.set()

            follower = asyncio.create_task(follow())

            async def wait_for(predicate: object) -> None:
                async with asyncio.timeout(30 * UNIT):
                    while not predicate():  # type: ignore[operator]
                        arrived.clear()
                        if follower.done():
                            follower.result()  # raises what the subscription raised
                        await arrived.wait()

            # in the middle of a run: started, some nodes running, not complete
            await wait_for(
                lambda: (
                    any(e.type == "node_status" for e in events)
                    and events[-1].type != "workflow_complete"
                )
            )
            assert first.proc is not None
            cut = len(events)
            first.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(first.proc.wait, 20 * UNIT)
            assert code in (0, -signal.SIGTERM), first.output()
            before = len(events)
            # the interrupted run ended while the server stopped, and the client saw it
            # before the socket closed (or, at the latest, on resuming from the store)
            await wait_for(lambda: any(e.type == "workflow_complete" for e in events[cut:]))
            interrupted = next(e for e in events[cut:] if e.type == "workflow_complete")
            assert interrupted.data["success"] is False

            second = ServerProcess(port, "--demo", env=env)
            await asyncio.to_thread(second.start)
            await wait_for(
                lambda: (
                    sum(e.type == "workflow_start" for e in events) >= 2
                    and len(events) > before + 3
                )
            )
            follower.cancel()
    finally:
        first.stop()
        first.log.close()
        if second is not None:
            second.stop()
            second.log.close()
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    # the interrupted run's end precedes the next run's start
    kinds = [e.type for e in events]
    assert kinds.index("workflow_complete", cut) < kinds.index("workflow_start", cut)
