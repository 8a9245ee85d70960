"""The security feature's frames: ``auth`` and ``auth:refresh`` in, ``authenticated``
out, and the ``POST /api/tickets`` answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agentcast.core.frames import ClientCommand, CommandId, ServerFrame

__all__ = ["AuthCommand", "AuthenticatedData", "AuthenticatedFrame", "TicketOut"]


class AuthCommand(ClientCommand):
    """``auth``: the first message of a connection whose handshake carried no credentials
    (within ``auth_timeout`` seconds). ``auth:refresh``: a fresh token for the same subject
    on an authenticated connection, before its token expires (plus ``auth_expiry_grace``).
    Answered by ``authenticated``."""

    type: Literal["auth", "auth:refresh"]
    token: str = Field(min_length=1, max_length=8192, description="The token (a JWT).")


class AuthenticatedData(BaseModel):
    subject: str = Field(description="The token's `sub`.")
    scopes: list[str] = Field(description="The scopes granted (`publish`, `control`, `admin`).")
    expires_at: str | None = Field(description="When the token expires (ISO-8601 UTC).")


class AuthenticatedFrame(ServerFrame):
    """Reply to ``auth`` and ``auth:refresh``: who the connection now is."""

    type: Literal["authenticated"] = "authenticated"
    id: CommandId = Field(default=None, description="The `id` of the command answered.")
    data: AuthenticatedData  # type: ignore[assignment]


class TicketOut(BaseModel):
    """Answer of ``POST /api/tickets``."""

    ticket: str = Field(description="Opens one WebSocket: `/ws?ticket=<ticket>`.")
    expires_in: float = Field(description="Seconds the ticket stays valid (unused).")
