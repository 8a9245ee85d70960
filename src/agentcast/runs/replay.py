"""Timed replay: a run's recorded events re-sent at their original pace, N× faster, or at once.

``{"type": "replay", "topic": "workflow:1", "speed": 10, "since": 0, "id": 1}`` answers
``replay_started`` (``data.events``: how many), then sends the run's events — the original
envelopes, seq and timestamps included, marked ``"replay": true`` so that they are never
mistaken for live events — spaced by their original intervals divided by
``speed`` (``speed: 0`` sends them at once; a gap is never longer than ``max_gap`` seconds),
then ``replay_complete``. A replay runs beside the connection's other commands and
subscriptions and stops when the connection closes or on ``replay_stop``.

Events come from :meth:`Gateway.history <agentcast.gateway.Gateway.history>`: the
broker's history, and where a topic's history source reaches further back (the run store
for run topics) from there, so whole runs replay also after a restart. They are read
``replay_page_events`` at a time, up to the topic's last seq when the replay started, and
sent no faster than the connection takes them (:meth:`Gateway.wait_writable
<agentcast.gateway.Gateway.wait_writable>`): a replay of a long run holds one page in
memory and never overflows the connection's outbox. ``replay_started`` counts the events
to come (``last_seq - since`` where history is whole). The ``replay`` option of
``subscribe`` is the same command.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from agentcast.codes import ErrorCode
from agentcast.core.commands import error_frame
from agentcast.core.envelope import Publication
from agentcast.core.frames import TOPIC_PATTERN, ClientCommand
from agentcast.core.history import HistoryPage
from agentcast.errors import BrokerError, CommandError
from agentcast.plugin import GatewayFeature

if TYPE_CHECKING:
    from agentcast.core.session import Session
    from agentcast.gateway import Gateway

__all__ = ["ReplayCommand", "ReplayStopCommand", "Replays"]


class ReplayCommand(ClientCommand):
    """Replay a topic's recorded events."""

    type: Literal["replay"] = "replay"
    topic: str = Field(pattern=TOPIC_PATTERN)
    speed: float = Field(default=1.0, ge=0, le=10_000, description="0: at once.")
    since: int = Field(default=0, ge=0, description="Replay events after this seq.")
    max_gap: float = Field(default=5.0, gt=0, le=3600, description="Longest wait between events.")


class ReplayStopCommand(ClientCommand):
    type: Literal["replay_stop"] = "replay_stop"
    topic: str = Field(pattern=TOPIC_PATTERN)


class Replays(GatewayFeature):
    """The replay feature: ``replay`` and ``replay_stop``, and the replays running for
    each connection of one gateway."""

    name = "replay"

    def __init__(self) -> None:
        self.running: dict[tuple[int, str], asyncio.Task[None]] = {}

    def install(self, gateway: Gateway) -> None:
        super().install(gateway)
        gateway.add_command(ReplayCommand, "replay", handler=self._start)
        gateway.add_command(ReplayStopCommand, "replay_stop", handler=self._stop)

    async def _start(self, session: Session, command: ReplayCommand) -> None:
        gw = self.gateway
        if not await gw.may_subscribe(session.principal, command.topic):
            raise CommandError(ErrorCode.FORBIDDEN, f"may not read {command.topic!r}")
        key = (session.id, command.topic)
        if key in self.running:
            raise CommandError(
                ErrorCode.INVALID_FIELD, f"a replay of {command.topic!r} is running", field="topic"
            )
        size = gw.settings.replay_page_events
        try:
            page = await gw.history(command.topic, command.since, size)
        except BrokerError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"history unavailable: {exc}") from exc
        pubs = page.publications
        info = {"first_seq": page.first_seq, "last_seq": page.last_seq, "complete": page.complete}
        start = pubs[0].seq - 1 if pubs else page.last_seq
        events = len(pubs) if len(pubs) < size else page.last_seq - start
        gw.reply(
            session,
            "replay_started",
            {"events": events, "speed": command.speed, **info},
            id=command.id,
            topic=command.topic,
        )
        task = gw.spawn(self._play(session, command, page), cancel_on_drain=True)
        self.running[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: tuple[int, str], task: asyncio.Task[None]) -> None:
        """A replay ended: forget it, unless a newer replay of the topic took its place."""
        if self.running.get(key) is task:
            del self.running[key]

    async def _play(self, session: Session, command: ReplayCommand, page: HistoryPage) -> None:
        gw = self.gateway
        size = gw.settings.replay_page_events
        until = page.last_seq  # what the topic held when the replay started
        pubs: list[Publication] = page.publications
        previous = pubs[0].at if pubs else 0.0
        sent = 0
        while pubs:
            for pub in pubs:
                if session.closed:
                    return
                if pub.seq > until:
                    break
                if command.speed > 0:
                    gap = min((pub.at - previous) / command.speed, command.max_gap)
                    if gap > 0:
                        await asyncio.sleep(gap)
                previous = pub.at
                await gw.wait_writable(session)  # back-pressure: never past the outbox
                gw.send(session, pub.replay_frame)
                sent += 1
            last = pubs[-1].seq
            if len(pubs) < size or last >= until or session.closed:
                break
            try:
                pubs = (await gw.history(command.topic, last, size)).publications
            except BrokerError as exc:
                exc_frame = CommandError(ErrorCode.UNAVAILABLE, f"history unavailable: {exc}")
                gw.send(session, error_frame(exc_frame, gw.now_iso()))
                return
            if pubs and pubs[0].seq != last + 1:
                break  # evicted meanwhile: what followed is gone
        gw.reply(session, "replay_complete", {"events": sent}, topic=command.topic)

    def _stop(self, session: Session, command: ReplayStopCommand) -> None:
        task = self.running.pop((session.id, command.topic), None)
        if task is None:
            raise CommandError(ErrorCode.NOT_SUBSCRIBED, f"no replay of {command.topic!r}")
        task.cancel()
        self.gateway.reply(session, "replay_stopped", {}, id=command.id, topic=command.topic)
