"""Property: every subscriber sees every event of its topics exactly once and in order,
or is told explicitly (``recovered: false``) that history was lost.

Runs the real gateway, hub and in-memory broker without sockets: writers record frames,
and the broker's history read yields to the event loop a drawn number of times before
and after reading, so publications race with every subscription's recovery. Over the
in-memory broker (synchronous capability) and over the same backend reached as a remote
broker would be (publishes batched, notifications late, some lost: the gateway fills
gaps from history, or closes with ``RESYNC`` and the client resumes).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcast.brokers.base import Broker
from agentcast.brokers.memory import MemoryBroker
from agentcast.codes import CloseCode
from agentcast.core.envelope import payload_of_frame
from agentcast.core.history import HistoryLimits, HistoryPage
from agentcast.core.session import Session
from agentcast.gateway import Gateway
from agentcast.policy import Principal
from agentcast.settings import Settings
from tests.broker_support import RemoteLikeBroker

TOPICS = ["t0", "workflow:p"]  # a plain topic and a run topic (snapshots)
REMOTE_TOPICS = ["t0", "t1"]
"""Over the remote-like broker, plain topics only: a run's snapshot is folded from the
notifications, which arrive late there, and the gateway's subscribe does not yet check
that history still reaches back to a lagging snapshot's seq."""
RUN_EVENT = {"workflow_id": "p", "execution_id": "e", "level": "info", "message": "m"}


class RacingBroker(MemoryBroker):
    def __init__(self, limits: HistoryLimits, delays: list[int]) -> None:
        super().__init__(limits)
        self.delays = delays
        self.i = 0

    def _delay(self) -> int:
        self.i += 1
        return self.delays[self.i % len(self.delays)] if self.delays else 0

    async def history(self, topic: str, since: int, limit: int | None = None) -> HistoryPage:
        for _ in range(self._delay()):
            await asyncio.sleep(0)
        page = self.history_now(topic, since, limit)
        for _ in range(self._delay()):
            await asyncio.sleep(0)
        return page


class Client:
    """A model client: checks every frame it receives against the protocol's promise."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.session: Session | None = None
        self.last: dict[str, int] = {}
        self.wanted: set[str] = set()
        self.live: set[str] = set()
        self.lost = 0
        self.events = 0
        self.violations: list[str] = []
        self.snapshots = 0
        self.epoch: dict[str, str] = {}
        self.sent: dict[str, list[int | None]] = {}
        """The ``since`` of each subscribe sent on this connection and not answered, per
        topic."""
        self.resyncs = 0

    # Writer protocol
    def write_frames(self, frames: list[bytes]) -> None:
        # Runs inside the gateway's flush callback, where asyncio would swallow an
        # exception: record violations and let the scenario assert on them.
        for frame in frames:
            try:
                self.receive(orjson.loads(payload_of_frame(frame)))
            except AssertionError as exc:
                self.violations.append(str(exc))

    def send_ping(self) -> None: ...

    def hold_reading(self, seconds: float) -> None: ...

    def close(self, code: CloseCode, reason: str) -> None:
        if code == CloseCode.RESYNC:
            self.resyncs += 1
        session = self.session
        self.session = None
        self.live.clear()
        if session is not None:
            self.gateway.close_session(session)

    def receive(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "subscribed":
            topic, data = msg["topic"], msg["data"]
            self.epoch[topic] = data["epoch"]
            assert data["since"] == self.sent[topic].pop(0), (data, self.sent)
            if data["since"] is None:
                self.last[topic] = data["seq"]
            elif not data["recovered"]:
                self.lost += 1
                self.last[topic] = data["first_seq"] - 1
            else:  # resumed where this subscribe asked: the client may have received more
                # since it sent it (a real client drops those duplicates by seq)
                self.last[topic] = data["since"]
            self.live.add(topic)
        elif kind == "snapshot":
            topic = msg["topic"]
            assert topic in self.live, "snapshot before its subscribed reply"
            assert msg["seq"] == msg["data"]["seq"]
            self.last[topic] = msg["seq"]
            self.snapshots += 1
        elif kind == "unsubscribed":  # events may come until this reply, none after it
            self.live.discard(msg["topic"])
        elif kind == "pong":
            pass
        elif kind == "error":
            raise AssertionError(f"unexpected error frame {msg}")
        else:
            topic, seq = msg["topic"], msg["seq"]
            assert topic in self.live, f"event {seq} of {topic} before its subscribed reply"
            assert seq == self.last[topic] + 1, f"{topic}: got {seq} after {self.last[topic]}"
            self.last[topic] = seq
            self.events += 1

    def send(self, obj: dict[str, Any]) -> None:
        assert self.session is not None
        self.gateway.receive_text(self.session, orjson.dumps(obj).decode())

    def subscribe(self, topic: str) -> None:
        since = self.last.get(topic)
        command: dict[str, Any] = {"type": "subscribe", "topic": topic, "since": since}
        if since is not None and topic in self.epoch:
            command["epoch"] = self.epoch[topic]
        self.sent.setdefault(topic, []).append(since)
        self.send(command)

    def connect(self) -> None:
        self.session = self.gateway.open_session(Principal("u"), self)
        self.sent.clear()
        for topic in sorted(self.wanted):
            self.subscribe(topic)


actions = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 1), st.integers(1, 4)),
        st.tuples(st.just("subscribe"), st.integers(0, 2), st.integers(0, 1)),
        st.tuples(st.just("unsubscribe"), st.integers(0, 2), st.integers(0, 1)),
        st.tuples(st.just("drop"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("reconnect"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("yield"), st.integers(0, 3), st.just(0)),
    ),
    max_size=60,
)


async def scenario(
    steps: list[tuple[str, int, int]],
    history_size: int,
    delays: list[int],
    remote: bool = False,
    lost: frozenset[int] = frozenset(),
) -> None:
    limits = HistoryLimits(max_events=history_size)
    broker: Broker
    if remote:
        counter = iter(range(1 << 30))

        def steps_() -> int:
            return delays[next(counter) % len(delays)] if delays else 0

        remote_broker = RemoteLikeBroker(steps_, lambda pub: pub.seq in lost, limits)
        broker = remote_broker
    else:
        broker = RacingBroker(limits, delays)
    gateway = Gateway(Settings(), broker=broker)
    await gateway.start()
    topics = REMOTE_TOPICS if remote else TOPICS
    clients = [Client(gateway) for _ in range(3)]
    try:
        for op, a, b in steps:
            if op == "publish":
                for _ in range(b):
                    if a and not remote:
                        await gateway.publish(topics[a], "log", RUN_EVENT)
                    else:
                        await gateway.publish(topics[a], "e", {"n": 1})
            elif op == "burst":  # one batch on a remote broker
                await asyncio.gather(
                    *(gateway.publish_nowait(topics[a], "e", {"n": 1}) for _ in range(b))
                )
            elif op == "subscribe":
                client, topic = clients[a], topics[b]
                if client.session is None:
                    client.connect()
                if topic not in client.wanted:
                    client.wanted.add(topic)
                    client.subscribe(topic)
            elif op == "unsubscribe":
                client, topic = clients[a], topics[b]
                if client.session is not None and topic in client.wanted:
                    client.wanted.discard(topic)
                    client.send({"type": "unsubscribe", "topic": topic})
            elif op == "drop":
                session = clients[a].session
                if session is not None:
                    gateway.close(session, CloseCode.SLOW_CONSUMER)
            elif op == "reconnect":
                if clients[a].session is None:
                    clients[a].connect()
            else:
                for _ in range(a):
                    await asyncio.sleep(0)
            await asyncio.sleep(0)  # one loop step between actions: commands run concurrently
        if remote:
            remote_broker.redeliver_latest()  # as after the broker's reconnection
        for _ in range(3):  # a resync closes; the client comes back
            await settle(gateway, broker)
            for client in clients:
                if client.session is None and client.wanted:
                    client.connect()
        await settle(gateway, broker)
        assert all(t.done() for t in gateway._tasks - gateway._background_tasks)
        final = gateway.broker.topics()
        for client in clients:
            assert client.violations == [], client.violations
            for topic in client.wanted:
                if topic in final:
                    assert client.last[topic] == final[topic], (topic, client.last, final)
    finally:
        await gateway.stop()


async def settle(gateway: Gateway, broker: Broker) -> None:
    """Let every command finish, every notification arrive and every outbox flush."""
    idle = 0
    for _ in range(20000):
        await asyncio.sleep(0)
        busy = any(not t.done() for t in gateway._tasks - gateway._background_tasks) or (
            isinstance(broker, RemoteLikeBroker) and not broker.idle
        )
        idle = 0 if busy else idle + 1
        if idle > 20:
            return
    raise AssertionError("the gateway did not settle")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=actions,
    history_size=st.integers(2, 30),
    delays=st.lists(st.integers(0, 4), max_size=5),
)
def test_every_event_once_in_order_or_loss_reported(
    steps: list[tuple[str, int, int]], history_size: int, delays: list[int]
) -> None:
    asyncio.run(scenario(steps, history_size, delays))


remote_actions = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 1), st.integers(1, 4)),
        st.tuples(st.just("burst"), st.integers(0, 1), st.integers(1, 6)),
        st.tuples(st.just("subscribe"), st.integers(0, 2), st.integers(0, 1)),
        st.tuples(st.just("unsubscribe"), st.integers(0, 2), st.integers(0, 1)),
        st.tuples(st.just("drop"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("reconnect"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("yield"), st.integers(0, 3), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=remote_actions,
    history_size=st.integers(2, 30),
    delays=st.lists(st.integers(0, 4), max_size=5),
    lost=st.frozensets(st.integers(1, 40), max_size=6),
)
def test_over_a_remote_like_broker_that_loses_notifications(
    steps: list[tuple[str, int, int]], history_size: int, delays: list[int], lost: frozenset[int]
) -> None:
    asyncio.run(scenario(steps, history_size, delays, remote=True, lost=lost))
