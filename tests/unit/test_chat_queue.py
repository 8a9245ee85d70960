"""The fair queue: limit, round robin between users, positions, cancellation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcast.chat.queue import FairQueue


async def test_unlimited_queue_never_waits() -> None:
    queue = FairQueue(None)
    assert [await queue.acquire("u") for _ in range(100)] == [0] * 100
    assert queue.active == 100 and queue.waiting == 0


async def test_round_robin_and_positions() -> None:
    queue = FairQueue(1)
    assert await queue.acquire("holder") == 0
    positions: dict[str, list[int]] = {}
    served: list[str] = []

    async def request(name: str, user: str) -> None:
        positions[name] = []
        await queue.acquire(user, positions[name].append)
        served.append(name)

    tasks = []
    for name, user in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c")]:
        tasks.append(asyncio.create_task(request(name, user)))
        await asyncio.sleep(0)  # arrive in this order
    assert queue.order() == ["a", "b", "c", "a", "a"]
    assert {k: v[-1] for k, v in positions.items()} == {"a1": 1, "b1": 2, "c1": 3, "a2": 4, "a3": 5}
    for _ in range(5):
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert served == ["a1", "b1", "c1", "a2", "a3"]
    # every change was reported: pushed back by other users' arrivals, then moving up
    assert positions["a3"] == [3, 4, 5, 4, 3, 2, 1]
    assert positions["c1"] == [3, 2, 1]
    assert positions["a1"] == [1]


async def test_cancel_while_waiting_leaves_the_queue() -> None:
    queue = FairQueue(1)
    await queue.acquire("x")
    seen: list[int] = []
    waiting = asyncio.create_task(queue.acquire("y"))
    later = asyncio.create_task(queue.acquire("z", seen.append))
    await asyncio.sleep(0)
    assert queue.waiting == 2 and seen == [2]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.waiting == 1 and seen == [2, 1]
    queue.release()
    assert await later == 2
    assert queue.active == 1


async def test_cancel_right_after_grant_gives_the_slot_back() -> None:
    queue = FairQueue(1)
    await queue.acquire("x")
    task = asyncio.create_task(queue.acquire("y"))
    await asyncio.sleep(0)
    queue.release()  # granted: future resolved, task not resumed yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.active == 0, "the granted slot was returned"


async def test_slot_context_manager_releases_on_error() -> None:
    queue = FairQueue(2)
    with pytest.raises(RuntimeError):
        async with queue.slot("u"):
            assert queue.active == 1
            raise RuntimeError("boom")
    assert queue.active == 0
    with pytest.raises(ValueError):
        FairQueue(0)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 3),
    users=st.lists(st.sampled_from("abcd"), min_size=1, max_size=25),
)
def test_no_user_waits_behind_more_than_one_request_per_other_user(
    limit: int, users: list[str]
) -> None:
    """Whatever the arrivals, the k-th waiting request of a user is served before the
    (k+1)-th of anybody, and never more than ``limit`` run at once."""

    async def scenario() -> None:
        queue = FairQueue(limit)
        hold = [await queue.acquire("holder") for _ in range(limit)]
        assert hold == [0] * limit
        served: list[tuple[str, int]] = []
        running = 0
        peak = 0
        counts: dict[str, int] = {}

        async def request(user: str, k: int) -> None:
            nonlocal running, peak
            async with queue.slot(user):
                running += 1
                peak = max(peak, running)
                served.append((user, k))
                await asyncio.sleep(0)
                running -= 1

        tasks = []
        for user in users:
            k = counts.get(user, 0)
            counts[user] = k + 1
            tasks.append(asyncio.create_task(request(user, k)))
            await asyncio.sleep(0)
        for _ in range(limit):
            queue.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert peak <= limit
        rounds = [k for _, k in served]
        assert rounds == sorted(rounds), served
        assert queue.active == 0 and queue.waiting == 0

    asyncio.run(scenario())
