"""The shared-keys contract (``agentcast/cluster/shared.py``) and the tickets built on it
(``agentcast/security/tickets.py``), run on every cluster state: in-process (one node),
one Redis node, and two nodes on one Redis (real Redis, a fresh prefix per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentcast.cluster.shared import SharedKeys
from agentcast.policy import AuthenticationError, Principal, resolve
from agentcast.security.tickets import ClusterTicketStore, Tickets, TicketStore
from tests.conftest import UNIT
from tests.contract.test_cluster_state import CASES, Cluster, _build, _close


@pytest.fixture(params=CASES)
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    made = await _build(request.param)
    try:
        yield made
    finally:
        await _close(made)


def ends(cluster: Cluster) -> tuple[SharedKeys, SharedKeys]:
    """The first and the last node's keys (the same node when there is one)."""
    return cluster.nodes[0].state.shared, cluster.nodes[-1].state.shared


async def test_a_value_put_on_one_node_is_read_on_every_node(cluster: Cluster) -> None:
    a, b = ends(cluster)
    assert a.distributed == (cluster.kind != "memory")
    await a.put("k1", b"v1", 5.0)
    (got,) = await b.read(["k1"])
    assert got is not None and got[0] == b"v1" and 4.0 < got[1] <= 5.0
    await b.put("k1", b"v2", 1.0)  # replaced, with its own expiry
    replaced, absent = await a.read(["k1", "absent"])
    assert replaced is not None and replaced[0] == b"v2" and 0.8 < replaced[1] <= 1.0
    assert absent is None
    assert await a.read([]) == []


async def test_take_is_single_use_across_nodes(cluster: Cluster) -> None:
    a, b = ends(cluster)
    await a.put("once", b"x", 5.0)
    assert await b.take("once") == b"x"
    assert await a.take("once") is None
    assert await b.take("once") is None
    assert await a.read(["once"]) == [None]
    for round in range(5):
        await a.put(f"race{round}", b"y", 5.0)
        got = await asyncio.gather(*(n.take(f"race{round}") for n in (a, b) * 6))
        assert got.count(b"y") == 1 and got.count(None) == 11


async def test_a_key_expires_after_its_ttl(cluster: Cluster) -> None:
    a, b = ends(cluster)
    await a.put("short", b"s", 0.15)
    await a.put("long", b"l", 30.0)
    async with asyncio.timeout(5 * UNIT):
        while (await b.read(["short"]))[0] is not None:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.02)
    assert await b.take("short") is None
    assert (await b.read(["long"]))[0] is not None


def ticket_stores(cluster: Cluster) -> tuple[Tickets, Tickets]:
    """What the security feature picks: in memory for one process, else the cluster's."""
    a, b = ends(cluster)
    if not a.distributed:
        store = TicketStore(0.3)
        return store, store
    return ClusterTicketStore(a, 0.3), ClusterTicketStore(b, 0.3)


PRINCIPAL = Principal(
    "alice",
    claims={"tenant": "t1"},
    scopes=frozenset({"publish"}),
    topics=("workflow:team-1:*",),
    expires_at=2e9,
)


async def test_a_ticket_issued_on_one_node_opens_once_on_any(cluster: Cluster) -> None:
    issuer, other = ticket_stores(cluster)
    ticket = await resolve(issuer.issue(PRINCIPAL))
    principal = await resolve(other.redeem(ticket))
    assert principal == PRINCIPAL
    assert dict(principal.claims) == {"tenant": "t1"}
    for store in (issuer, other):  # reuse refused everywhere
        with pytest.raises(AuthenticationError) as refused:
            await resolve(store.redeem(ticket))
        assert refused.value.status == 401
    with pytest.raises(AuthenticationError):
        await resolve(other.redeem("never-issued"))


async def test_an_expired_ticket_is_refused(cluster: Cluster) -> None:
    issuer, other = ticket_stores(cluster)
    ticket = await resolve(issuer.issue(PRINCIPAL))
    await asyncio.sleep(0.35)  # the ticket's own lifetime (0.3 s) must pass: not a wait on an event
    with pytest.raises(AuthenticationError):
        await resolve(other.redeem(ticket))


async def test_racing_redemptions_of_one_ticket_admit_exactly_one(cluster: Cluster) -> None:
    issuer, other = ticket_stores(cluster)
    ticket = await resolve(issuer.issue(PRINCIPAL))

    async def redeem(store: Tickets) -> bool:
        try:
            await resolve(store.redeem(ticket))
        except AuthenticationError:
            return False
        return True

    got = await asyncio.gather(*(redeem(s) for s in (issuer, other) * 5))
    assert got.count(True) == 1
