"""Seed 003's endpoint: ``/api/v1/ws/{agent_id}``, one long conversation per socket.

* On connect: one welcome frame ``{"type": "welcome", "sender": "agent", "agent_id",
  "conversation_id", "message"}``. ``?conversation_id=`` continues a stored conversation
  of the caller's instead of starting a new one.
* Each plain-text message (a JSON object with a ``message`` string works too) is answered
  by exactly one frame: ``{"type": "message", "sender": "agent", "message": answer}``, or
  ``{"type": "error", "sender": "agent", "message": reason}`` when it failed. The
  conversation keeps its context across messages and is stored like any other (its
  stream is also published on ``chat:<conversation_id>`` for other viewers).
* After ``chat_idle_timeout`` seconds without a message the socket is closed with 4000
  and a reason saying so (seed 003's inactivity timeout).

Served through the ASGI app on both transports (answers are whole messages, so the
native path's fan-out machinery brings nothing here).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agentcast.codes import CloseCode
from agentcast.errors import ProtocolError
from agentcast.policy import UNAUTHENTICATED, AuthenticationError, Principal, resolve
from agentcast.security.credentials import select_subprotocol
from agentcast.web import request_of

if TYPE_CHECKING:
    from agentcast.chat.service import Chat
    from agentcast.gateway import Gateway

__all__ = ["SEED003_PATH", "seed003_endpoint", "seed003_router"]

SEED003_PATH = "/api/v1/ws/{agent_id}"


def _frame(kind: str, message: str, **extra: Any) -> str:
    return orjson.dumps({"type": kind, "sender": "agent", **extra, "message": message}).decode()


def _text_of(raw: str) -> str:
    """The user's message: the frame's text, or the ``message`` of a JSON object."""
    if raw.startswith("{"):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            return str(obj["message"])
    return raw


def seed003_router(gateway: Gateway, chat: Chat) -> APIRouter:
    """A router holding seed 003's endpoint at :data:`SEED003_PATH`."""
    router = APIRouter()
    router.add_api_websocket_route(SEED003_PATH, seed003_endpoint(gateway, chat))
    return router


def seed003_endpoint(gateway: Gateway, chat: Chat) -> Callable[[WebSocket], Awaitable[None]]:
    """The ASGI WebSocket endpoint of ``/api/v1/ws/{agent_id}`` on ``gateway``."""

    async def endpoint(websocket: WebSocket) -> None:
        try:
            result = gateway.authenticate(request_of(websocket))
            principal: Principal = await result if inspect.isawaitable(result) else result
            if principal is UNAUTHENTICATED:  # no first-message authentication here
                raise AuthenticationError("no credentials")
        except AuthenticationError as exc:
            gateway.auth_refused(exc)
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                word = "unauthorized" if exc.status == 401 else "forbidden"
                await websocket.send_denial_response(
                    PlainTextResponse(f"{word}: {exc}\n", status_code=exc.status)
                )
            else:  # pragma: no cover - depends on the ASGI server
                await websocket.close()  # before accepting: HTTP 403
            return
        refusal = await resolve(gateway.admit(principal))
        if refusal is not None:  # HTTP 429: the user holds max_connections_per_user
            status, text = refusal
            if "websocket.http.response" in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(
                    PlainTextResponse(f"{text}\n", status_code=status, headers={"Retry-After": "1"})
                )
            else:  # pragma: no cover - depends on the ASGI server
                await websocket.close()
            return
        gateway.user_connected(principal)
        try:
            await _serve(websocket, gateway, chat, principal)
        finally:
            gateway.user_disconnected(principal)

    return endpoint


async def _serve(websocket: WebSocket, gateway: Gateway, chat: Chat, principal: Principal) -> None:
    """One accepted seed 003 connection, counted as one of its user's."""
    agent_id = str(websocket.path_params["agent_id"])
    await websocket.accept(select_subprotocol(websocket.scope.get("subprotocols", [])))
    try:
        wanted = websocket.query_params.get("conversation_id")
        if wanted:
            conv = await chat.conversation(principal, wanted)
        else:
            conv = await chat.new_conversation(principal, agent_id, f"{agent_id} session")
    except ProtocolError as exc:
        await websocket.send_text(_frame("error", exc.message))
        await websocket.close(code=int(CloseCode.POLICY_VIOLATION), reason=exc.code.value)
        return
    await websocket.send_text(
        _frame(
            "welcome",
            f"Connected to agent {agent_id}. Send a message to start; the conversation "
            "keeps its context.",
            agent_id=agent_id,
            conversation_id=conv.id,
        )
    )
    idle = gateway.settings.chat_idle_timeout
    try:
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), idle)
            except TimeoutError:
                await websocket.close(
                    code=int(CloseCode.IDLE_TIMEOUT),
                    reason=f"idle timeout: no message for {idle:g} s",
                )
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                await websocket.send_text(_frame("error", "send text frames, not binary"))
                continue
            if wait := gateway.rate_limit_user(principal, "chat"):
                retry = round(wait, 3)
                await websocket.send_text(
                    _frame("error", f"rate limited: retry in {retry} s", retry_after=retry)
                )
                continue
            try:
                gen = await chat.submit(principal, conv, _text_of(raw))
            except ProtocolError as exc:
                await websocket.send_text(_frame("error", exc.message))
                continue
            answer = await asyncio.shield(gen.done)
            if answer.status == "complete":
                await websocket.send_text(_frame("message", answer.content))
            else:
                reason = answer.error or answer.status
                await websocket.send_text(_frame("error", f"{reason}"))
    except WebSocketDisconnect:
        return
    finally:
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close()
