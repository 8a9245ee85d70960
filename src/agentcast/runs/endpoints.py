"""The seeds' per-run WebSocket endpoints.

* ``/api/ws/workflow/{workflow_id}`` (seed 004) subscribes to ``workflow:<id>`` on connect;
  the text ``ping`` is answered ``{"type": "pong", "workflow_id": "<id>", …}``.
* ``/api/ws/executions/{execution_id}`` (seed 000's one-execution-per-socket model)
  subscribes to ``execution:<id>``; ``ping`` is answered with ``execution_id``.

Every frame is one JSON message of wire protocol v1 (a superset of the seeds'
``{type, timestamp, data}``); the subscription is implicit (no ``subscribed`` reply; a
late joiner's first frame is the run's ``snapshot``), and the connection also accepts
every ``/ws`` command. A ``?since=N`` query parameter resumes after seq N. An id that
is not a valid run id is refused at the handshake (404). The runs feature registers
them as :class:`~agentcast.plugin.SocketEndpoint`, which every transport serves.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentcast.core.frames import valid_topic
from agentcast.core.session import Session
from agentcast.gateway import Gateway
from agentcast.plugin import SocketEndpoint

__all__ = ["RUN_ENDPOINTS", "run_endpoints"]

RUN_ENDPOINTS = (
    ("/api/ws/workflow/{workflow_id}", "workflow:"),
    ("/api/ws/executions/{execution_id}", "execution:"),
)
"""Path and topic prefix of each per-run endpoint (the path parameter names the pong's id)."""


def run_endpoints(gateway: Gateway) -> list[SocketEndpoint]:
    """The seeds' per-run endpoints, bound to ``gateway``."""
    return [_endpoint(gateway, path, prefix) for path, prefix in RUN_ENDPOINTS]


def _endpoint(gateway: Gateway, path: str, prefix: str) -> SocketEndpoint:
    id_field = path.rsplit("{", 1)[1].rstrip("}")

    def accepts(run_id: str) -> bool:
        return valid_topic(prefix + run_id)

    def open(session: Session, run_id: str, query: Mapping[str, str]) -> None:
        """Set up a new connection of a run endpoint: its pong, then subscribe to the run."""
        session.meta = {"pong": {id_field: run_id}}
        since_text = query.get("since")
        since = int(since_text) if since_text is not None and since_text.isdigit() else None
        topic = prefix + run_id
        gateway.run_command(session, gateway.subscribe(session, topic, since, reply=False))

    return SocketEndpoint(path, open, accepts)
