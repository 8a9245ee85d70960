"""System monitoring and task updates (seed 001).

* Topic ``monitoring``: ``monitoring:metrics`` events with CPU, memory, process RSS,
  connections, subscriptions and events/s, published every ``monitoring_interval``
  seconds, and computed only while somebody is subscribed. A new subscriber gets the
  current metrics at once.
* Topics ``task:<id>``: ``task:update`` events; :meth:`Monitoring.broadcast_task_update`
  publishes one from the producer's process.
* Seed 001's commands on ``/ws``: ``{"type": "monitoring:subscribe"}``,
  ``monitoring:unsubscribe``, ``task:subscribe`` / ``task:unsubscribe`` with the task id in
  ``data`` (``taskId``, ``task_id`` or ``id``), and ``ping`` → ``pong``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import psutil
from pydantic import Field

from agentcast.codes import ErrorCode
from agentcast.core.frames import ClientCommand, valid_topic
from agentcast.errors import CommandError
from agentcast.plugin import GatewayFeature

if TYPE_CHECKING:
    from agentcast.core.session import Session
    from agentcast.gateway import Gateway

__all__ = ["MONITORING_TOPIC", "Monitoring"]

MONITORING_TOPIC = "monitoring"


class MonitoringCommand(ClientCommand):
    """``monitoring:subscribe`` / ``monitoring:unsubscribe``."""


class TaskCommand(ClientCommand):
    """``task:subscribe`` / ``task:unsubscribe``; the task id is in ``data``."""

    data: dict[str, Any] = Field(default_factory=dict)

    def task_id(self) -> str:
        for key in ("taskId", "task_id", "id"):
            value = self.data.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
        raise CommandError(
            ErrorCode.INVALID_FIELD, "data.taskId: a task id is required", field="data.taskId"
        )


class Monitoring(GatewayFeature):
    """The monitoring feature: the metrics publisher and seed 001's commands."""

    name = "monitoring"

    def __init__(self) -> None:
        self.process = psutil.Process()
        self._last_published = 0
        self._last_time = time.monotonic()

    def install(self, gateway: Gateway) -> None:
        super().install(gateway)
        gateway.add_command(MonitoringCommand, "monitoring:subscribe", handler=self._subscribe)
        gateway.add_command(MonitoringCommand, "monitoring:unsubscribe", handler=self._unsubscribe)
        gateway.add_command(TaskCommand, "task:subscribe", handler=self._task_subscribe)
        gateway.add_command(TaskCommand, "task:unsubscribe", handler=self._task_unsubscribe)
        gateway.add_background(self._loop)

    def metrics(self) -> dict[str, Any]:
        """The current metrics (CPU since the previous call)."""
        gw = self.gateway
        now = time.monotonic()
        published = gw.hub.published
        elapsed = max(now - self._last_time, 1e-9)
        rate = (published - self._last_published) / elapsed
        self._last_published, self._last_time = published, now
        memory = psutil.virtual_memory()
        return {
            "cpu": {"percent": psutil.cpu_percent(None), "count": psutil.cpu_count()},
            "memory": {"total": memory.total, "used": memory.used, "percent": memory.percent},
            "process": {
                "rss": self.process.memory_info().rss,
                "cpu_percent": self.process.cpu_percent(None),
            },
            "connections": len(gw.sessions),
            "subscriptions": sum(len(s.topics) for s in gw.sessions.values()),
            "topics": len(gw.hub.topics),
            "events_per_second": round(rate, 2),
        }

    async def _loop(self) -> None:
        interval = self.gateway.settings.monitoring_interval
        while True:
            await asyncio.sleep(interval)
            if self.gateway.hub.presence(MONITORING_TOPIC):
                await self.gateway.publish(MONITORING_TOPIC, "monitoring:metrics", self.metrics())

    async def broadcast_task_update(self, task_id: str | int, update: dict[str, Any]) -> int:
        """Publish ``update`` to ``task:<task_id>``; returns its seq."""
        pub = await self.gateway.publish(f"task:{task_id}", "task:update", update)
        return pub.seq

    async def _subscribe(self, session: Session, command: MonitoringCommand) -> None:
        gw = self.gateway
        await gw.subscribe(session, MONITORING_TOPIC, None, reply=False)
        gw.reply(
            session, "monitoring:metrics", self.metrics(), id=command.id, topic=MONITORING_TOPIC
        )

    def _unsubscribe(self, session: Session, command: MonitoringCommand) -> None:
        self.gateway.unsubscribe(session, MONITORING_TOPIC)
        self.gateway.reply(session, "monitoring:unsubscribed", {}, id=command.id)

    async def _task_subscribe(self, session: Session, command: TaskCommand) -> None:
        task_id = command.task_id()
        topic = f"task:{task_id}"
        if not valid_topic(topic):
            raise CommandError(
                ErrorCode.INVALID_TOPIC, f"invalid task id {task_id!r}", field="data"
            )
        await self.gateway.subscribe(session, topic, None, reply=False)
        self.gateway.reply(session, "task:subscribed", {"taskId": task_id}, id=command.id)

    def _task_unsubscribe(self, session: Session, command: TaskCommand) -> None:
        task_id = command.task_id()
        self.gateway.unsubscribe(session, f"task:{task_id}")
        self.gateway.reply(session, "task:unsubscribed", {"taskId": task_id}, id=command.id)
