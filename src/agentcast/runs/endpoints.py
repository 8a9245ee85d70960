"""The seeds' per-run WebSocket endpoints.

* ``/api/ws/workflow/{workflow_id}`` (seed 004) subscribes to ``workflow:<id>`` on connect;
  the text ``ping`` is answered ``{"type": "pong", "workflow_id": "<id>", …}``.
* ``/api/ws/executions/{execution_id}`` (seed 000's one-execution-per-socket model)
  subscribes to ``execution:<id>``; ``ping`` is answered with ``execution_id``.

Every frame is one JSON message of wire protocol v1 (a superset of the seeds'
``{type, timestamp, data}``); the subscription is implicit (no ``subscribed`` reply; a
late joiner's first frame is the run's ``snapshot``), and the connection also accepts
every ``/ws`` command. A ``?since=N`` query parameter resumes after seq N. Both
transports use :func:`match` and :func:`open_run_endpoint`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agentcast.core.frames import valid_topic
from agentcast.core.session import Session
from agentcast.gateway import Gateway

__all__ = ["RUN_ENDPOINTS", "RunEndpoint", "match", "open_run_endpoint"]


@dataclass(frozen=True, slots=True)
class RunEndpoint:
    """A path pattern, the topic family it subscribes to, and the id field of its pong."""

    path: str
    prefix: str
    id_field: str

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + self.path.replace("{id}", "(?P<id>[^/]+)") + "$")


RUN_ENDPOINTS = (
    RunEndpoint("/api/ws/workflow/{id}", "workflow:", "workflow_id"),
    RunEndpoint("/api/ws/executions/{id}", "execution:", "execution_id"),
)
_COMPILED = [(endpoint, endpoint.regex) for endpoint in RUN_ENDPOINTS]


def match(path: str) -> tuple[RunEndpoint, str] | None:
    """The run endpoint serving ``path`` and the run id in it, or None."""
    for endpoint, regex in _COMPILED:
        found = regex.match(path)
        if found is not None and valid_topic(endpoint.prefix + found["id"]):
            return endpoint, found["id"]
    return None


def open_run_endpoint(
    gateway: Gateway, session: Session, endpoint: RunEndpoint, run_id: str, query: Mapping[str, str]
) -> None:
    """Set up a new connection of a run endpoint: its pong, then subscribe to the run."""
    session.meta = {"pong": {endpoint.id_field: run_id}}
    since_text = query.get("since")
    since = int(since_text) if since_text is not None and since_text.isdigit() else None
    topic = endpoint.prefix + run_id
    gateway.run_command(session, gateway.subscribe(session, topic, since, reply=False))
