"""Timed replay: a run's recorded events re-sent at their original pace, N× faster, or at once.

``{"type": "replay", "topic": "workflow:1", "speed": 10, "since": 0, "id": 1}`` answers
``replay_started`` (``data.events``: how many), then sends the run's events — the original
envelopes, seq and timestamps included, marked ``"replay": true`` so that they are never
mistaken for live events — spaced by their original intervals divided by
``speed`` (``speed: 0`` sends them at once; a gap is never longer than ``max_gap`` seconds),
then ``replay_complete``. A replay runs beside the connection's other commands and
subscriptions and stops when the connection closes or on ``replay_stop``.

Run topics replay from the run store (whole runs, also after a restart) when one is
configured; other topics from the broker's bounded history.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from agentcast.codes import ErrorCode
from agentcast.core.commands import register
from agentcast.core.envelope import Publication, encode_json
from agentcast.core.frames import TOPIC_PATTERN, ClientCommand
from agentcast.errors import CommandError
from agentcast.runs.state import run_kind
from agentcast.storage.base import StoreError

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


register(ReplayCommand, "replay")
register(ReplayStopCommand, "replay_stop")


class Replays:
    """The replays running for each connection of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.running: dict[tuple[int, str], asyncio.Task[None]] = {}
        gateway.handlers["replay"] = self._start
        gateway.handlers["replay_stop"] = self._stop

    async def start(
        self, session: Session, topic: str, *, speed: float = 1.0, since: int = 0, id: object = None
    ) -> None:
        """Start a replay for ``session`` (the ``replay`` option of ``subscribe``)."""
        command = ReplayCommand(topic=topic, speed=speed, since=since, id=id)  # type: ignore[arg-type]
        await self._start(session, command)

    async def _start(self, session: Session, command: ReplayCommand) -> None:
        gw = self.gateway
        if not await gw.may_subscribe(session.principal, command.topic):
            raise CommandError(ErrorCode.FORBIDDEN, f"may not read {command.topic!r}")
        key = (session.id, command.topic)
        if key in self.running:
            raise CommandError(
                ErrorCode.INVALID_FIELD, f"a replay of {command.topic!r} is running", field="topic"
            )
        page = await gw.broker.history(command.topic, command.since)
        pubs = page.publications
        info = {"first_seq": page.first_seq, "last_seq": page.last_seq, "complete": page.complete}
        recorder = gw.runs.recorder
        if recorder is not None and gw.store is not None and run_kind(command.topic):
            # run topics: the run store has the whole log, also after a restart
            try:
                await recorder.flush()
                stored = await gw.store.events(command.topic, command.since)
            except StoreError as exc:
                raise CommandError(ErrorCode.UNAVAILABLE, f"run store: {exc}") from exc
            if stored:
                pubs = [
                    Publication(e.topic, e.seq, e.type, encode_json(e.data), e.timestamp, e.at)
                    for e in stored
                ]
                info = {"first_seq": pubs[0].seq, "last_seq": pubs[-1].seq, "complete": True}
        gw.reply(
            session,
            "replay_started",
            {"events": len(pubs), "speed": command.speed, **info},
            id=command.id,
            topic=command.topic,
        )
        task = gw._spawn(self._play(session, command, pubs))
        self.running[key] = task
        task.add_done_callback(lambda _: self.running.pop(key, None))

    async def _play(self, session: Session, command: ReplayCommand, pubs: list) -> None:  # type: ignore[type-arg]
        gw = self.gateway
        previous = pubs[0].at if pubs else 0.0
        sent = 0
        for pub in pubs:
            if session.closed:
                return
            if command.speed > 0:
                gap = min((pub.at - previous) / command.speed, command.max_gap)
                if gap > 0:
                    await asyncio.sleep(gap)
            previous = pub.at
            gw.send(session, pub.replay_frame)
            sent += 1
        gw.reply(session, "replay_complete", {"events": sent}, topic=command.topic)

    def _stop(self, session: Session, command: ReplayStopCommand) -> None:
        task = self.running.pop((session.id, command.topic), None)
        if task is None:
            raise CommandError(ErrorCode.NOT_SUBSCRIBED, f"no replay of {command.topic!r}")
        task.cancel()
        self.gateway.reply(session, "replay_stopped", {}, id=command.id, topic=command.topic)
