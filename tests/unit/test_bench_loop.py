"""The benchmark endpoint's publisher reports its runs of back-to-back events (tail.py)."""

from __future__ import annotations

from agentcast.gateway import Gateway
from agentcast.settings import Settings
from agentcast.transports.http import _bench_loop


async def test_paced_publisher_reports_every_event_in_one_run_each() -> None:
    runs: list[tuple[int, int, int, int]] = []
    async with Gateway(Settings(store_url="")) as gateway:
        await _bench_loop(
            gateway, ["t0", "t1"], 200, 20_000.0, on_run=lambda *run: runs.append(run)
        )
        assert [(await gateway.broker.history(t, 0)).last_seq for t in ("t0", "t1")] == [100, 100]
    assert runs and sum(events for _, _, events, _ in runs) == 200
    dues = [due for _, _, _, due in runs]
    assert dues == sorted(dues) and len(set(dues)) == len(dues)
    for start, end, events, _ in runs:
        assert start <= end and events > 0


async def test_unpaced_publisher_reports_no_runs() -> None:
    runs: list[tuple[int, int, int, int]] = []
    async with Gateway(Settings(store_url="")) as gateway:
        await _bench_loop(gateway, ["t0"], 50, 0.0, on_run=lambda *run: runs.append(run))
        assert (await gateway.broker.history("t0", 0)).last_seq == 50
    assert runs == []
