"""An application's own policy for ``agentcast serve --auth tests.integration.authapp:make``
(seed 000: "verify the execution exists and belongs to the user")."""

from __future__ import annotations

from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from agentcast.settings import Settings


class ExecutionOwners:
    """``X-User: <name>`` is the user; ``execution:<name>-…`` topics are theirs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def authenticate(self, request: ConnectionRequest) -> Principal:
        user = request.headers.get("x-user")
        if not user:
            raise AuthenticationError("no X-User header")
        return Principal(subject=user)

    def can_subscribe(self, principal: Principal, topic: str) -> bool:
        return topic.startswith(f"execution:{principal.subject}-")

    def can_publish(self, principal: Principal, topic: str) -> bool:
        return self.can_subscribe(principal, topic)


def make(settings: Settings) -> ExecutionOwners:
    return ExecutionOwners(settings)
