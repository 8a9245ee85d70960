"""HTTP routes of chat: conversations (list, read, rename, delete), their messages (paged),
agents, and the LLM upstreams (models, health, figures)."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from agentcast.chat.service import Chat
from agentcast.codes import ErrorCode
from agentcast.errors import BrokerError, ProtocolError
from agentcast.gateway import Gateway
from agentcast.policy import Principal
from agentcast.storage.base import StoreError
from agentcast.storage.chat import Conversation
from agentcast.web import admin_of, http_error, principal_of

__all__ = ["chat_router"]

logger = logging.getLogger("agentcast.chat")

_CID = r"^[A-Za-z0-9_\-.@=+]{1,64}$"
Cid = Annotated[str, Path(pattern=_CID, description="Conversation id.")]


class ConversationOut(BaseModel):
    id: str
    agent_id: str
    title: str
    created_at: str
    updated_at: str
    message_count: int
    generating: bool = Field(description="An answer is being generated right now.")


class ConversationPage(BaseModel):
    total: int
    limit: int
    offset: int
    conversations: list[ConversationOut]


class ConversationIn(BaseModel):
    agent_id: str | None = Field(
        default=None, min_length=1, max_length=200, description="Default: the default agent."
    )
    title: str = Field(default="New conversation", min_length=1, max_length=200)


class RenameIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)


class MessagePage(BaseModel):
    conversation_id: str
    messages: list[dict[str, Any]] = Field(description="Oldest first.")
    has_more: bool = Field(description="Older messages exist: ask again with `before`.")
    before: int | None = Field(description="The `before` that fetches the previous page.")


class AgentOut(BaseModel):
    id: str
    name: str
    model: str | None
    concurrency: int | None
    default: bool


def chat_router(gateway: Gateway, chat: Chat) -> APIRouter:
    """The chat HTTP API of ``chat`` on ``gateway``."""
    router = APIRouter(tags=["chat"])

    def out(conv: Conversation, generating: set[str]) -> ConversationOut:
        return ConversationOut(**conv.to_wire(), generating=conv.id in generating)

    async def one(conv: Conversation) -> ConversationOut:
        return out(conv, await chat.generating([conv.id]))

    async def owned(
        request: Request, cid: str, *, read: bool = False
    ) -> tuple[Principal, Conversation]:
        """The conversation the caller owns (``read``: may read); 404 for any other,
        existing or not."""
        principal = await principal_of(gateway, request)
        try:
            return principal, await chat.conversation(principal, cid, read=read)
        except ProtocolError as exc:
            status = 404 if exc.code is ErrorCode.NOT_FOUND else 503
            raise http_error(status, exc.code, exc.message) from exc

    @router.get("/api/conversations", response_model=ConversationPage)
    async def list_conversations(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> ConversationPage:
        """The caller's conversations, most recently updated first (every conversation
        for ``admin``, and in open dev mode, where every request is a new anonymous
        user)."""
        principal = await principal_of(gateway, request)
        everyone = (principal.anonymous and gateway.open_mode) or principal.admin
        user = None if everyone else principal.subject
        try:
            found, total = await chat.store.list_conversations(user, limit, offset)
        except StoreError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
        generating = await chat.generating([c.id for c in found])
        return ConversationPage(
            total=total,
            limit=limit,
            offset=offset,
            conversations=[out(c, generating) for c in found],
        )

    @router.post("/api/conversations", response_model=ConversationOut, status_code=201)
    async def create_conversation(request: Request, body: ConversationIn) -> ConversationOut:
        """Start a conversation (a client can subscribe to ``chat:<id>`` before its first
        ``chat:send``; ``chat:send`` without a conversation id creates one too)."""
        principal = await principal_of(gateway, request)
        try:
            conv = await chat.new_conversation(principal, body.agent_id, body.title)
        except ProtocolError as exc:
            raise http_error(503, exc.code, exc.message) from exc
        return await one(conv)

    @router.get("/api/conversations/{conversation_id}", response_model=ConversationOut)
    async def get_conversation(request: Request, conversation_id: Cid) -> ConversationOut:
        """One conversation."""
        _, conv = await owned(request, conversation_id, read=True)
        return await one(conv)

    @router.patch("/api/conversations/{conversation_id}", response_model=ConversationOut)
    async def rename_conversation(
        request: Request, conversation_id: Cid, body: RenameIn
    ) -> ConversationOut:
        """Rename a conversation."""
        _, conv = await owned(request, conversation_id)
        try:
            renamed = await chat.store.rename_conversation(conv.id, body.title, time.time())
        except StoreError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
        if renamed is None:  # pragma: no cover - deleted in between
            raise http_error(404, ErrorCode.NOT_FOUND, f"no conversation {conversation_id!r}")
        return await one(renamed)

    @router.delete("/api/conversations/{conversation_id}", status_code=204)
    async def delete_conversation(request: Request, conversation_id: Cid) -> Response:
        """Delete a conversation and its messages (a running generation is cancelled)."""
        _, conv = await owned(request, conversation_id)
        try:  # on whichever node runs it, and until it ended
            await chat.cancel_anywhere(conv.id, "conversation deleted", wait=True)
        except BrokerError as exc:  # that node is gone: its generation is sealed or not
            logger.warning("deleting %s: its generation not cancelled: %s", conv.id, exc)
        try:
            await chat.store.delete_conversation(conv.id)
            await chat.forget_events(conv.id)
        except StoreError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
        return Response(status_code=204)

    @router.get("/api/conversations/{conversation_id}/messages", response_model=MessagePage)
    async def messages(
        request: Request,
        conversation_id: Cid,
        before: Annotated[int | None, Query(ge=1, description="Messages with id < before.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> MessagePage:
        """Stored messages, oldest first; page back with ``before``."""
        _, conv = await owned(request, conversation_id, read=True)
        try:
            found = await chat.store.messages(conv.id, before, limit + 1)
        except StoreError as exc:
            raise http_error(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
        has_more = len(found) > limit
        found = found[-limit:]
        return MessagePage(
            conversation_id=conv.id,
            messages=[m.to_wire() for m in found],
            has_more=has_more,
            before=found[0].id if has_more and found else None,
        )

    @router.get("/api/agents", response_model=list[AgentOut])
    async def agents(request: Request) -> list[AgentOut]:
        """The agents this server answers with (any authenticated caller)."""
        await principal_of(gateway, request)
        return [
            AgentOut(
                id=agent_id,
                name=str(getattr(agent, "name", type(agent).__name__)),
                model=getattr(agent, "model", None),
                concurrency=getattr(agent, "concurrency", None),
                default=agent_id == chat.default_agent,
            )
            for agent_id, agent in chat.agents.items()
        ]

    @router.get("/api/llm/stats")
    async def llm_stats(request: Request) -> dict[str, Any]:
        """Per upstream and model: generations, time to first token, tokens/s, cancel
        and error rates, queue wait; and each queue's load now (``admin`` only once
        authentication is on: everybody's usage)."""
        await admin_of(gateway, request)
        return {
            "agents": [s.to_dict() for s in chat.stats.values()],
            "queues": [
                {"key": key, "limit": q.limit, "active": q.active, "waiting": q.waiting}
                for key, q in chat.queues.items()
            ],
        }

    @router.get("/api/llm/health")
    async def llm_health(request: Request) -> dict[str, Any]:
        """Health of every LLM upstream in use (agents without one are left out). Sends a
        request to each upstream and shows its URL: ``admin`` only once authentication
        is on."""
        await admin_of(gateway, request)
        found = []
        for agent_id, agent in chat.agents.items():
            upstream = getattr(agent, "upstream", None)
            if upstream is not None and hasattr(upstream, "health"):
                found.append({"agent": agent_id, **(await upstream.health())})
        return {"upstreams": found}

    return router
