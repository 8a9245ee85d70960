"""The chat feature: conversations with agents, the ``chat:*`` commands, generations.

``Gateway(features=[Chat(store), …])``; :class:`Chat` brings the commands, the
conversations HTTP API (:mod:`agentcast.chat.http`) and seed 003's endpoint
(:mod:`agentcast.chat.endpoint`).

Contract of one message (``chat:send`` on ``/ws``, or seed 003's endpoint):

1. The user's message is stored *before* the agent is called, then published as
   ``chat:message`` on ``chat:<conversation_id>``; the sending connection is subscribed
   to that topic first, so it sees every event of the conversation (as does a second tab
   subscribed to it, and a reconnecting client resumes it by seq like any topic).
2. The generation waits in the agent's upstream queue
   (:meth:`~agentcast.cluster.base.ClusterState.queue`: in process, or across the nodes
   on Redis) when its upstream is busy (``chat:queued`` with the position, whenever it
   changes), then streams: one ``chat:streaming`` ``{chunk, done: false}`` per delta, then
   ``{chunk: "", done: true, status}``.
3. The answer is stored (status ``complete``, ``cancelled`` or ``error``, with the
   partial text) and published as ``chat:message``. A failed answer also sends an
   ``error`` frame (upstream codes) to the connection that asked, if it is still there.

A generation belongs to the conversation, not to the socket: when the socket drops, the
answer is still generated and stored. One generation per conversation at a time
(``conflict`` otherwise). ``chat:cancel`` cancels the generation's task: the agent's
stream is closed at once (an upstream HTTP request is closed), or the request leaves the
queue without reaching the upstream. When the gateway drains (shutdown), every generation
is cancelled first: its last events are delivered before the connections close, and its
partial answer is stored.

Across nodes (a Redis cluster state), a generation is owned work in ``cluster.work``
(:mod:`agentcast.cluster.work`, kind ``chat``, key the conversation id): ``conflict``
holds across the nodes, ``chat:cancel`` and deletion reach the owning node, snapshots and
``generating`` flags ask it, and a dead node's generation is sealed by one survivor
(:meth:`Chat._seal_lost`: the partial answer from the topic's history, status ``error``,
the terminal events), each step idempotent; a node whose generation was sealed elsewhere
(taken for dead) drops it without publishing (:meth:`Chat._lost`).

Resume across a restart (with a store): every event of a ``chat:`` topic (deltas too) is
recorded in the store's event log in batches (:class:`~agentcast.storage.recorder.
EventRecorder`, one write per batch, never one per token), chat topics are durable (their
numbering continues after a restart, epoch ``durable``) and the store is their history
source where the broker's history no longer reaches back. Recorded events are kept for
``chat_events_max_age`` (default ``history_max_age``), each topic's last event for as long
as the conversation (it carries the numbering). Late joiners and clients whose history is
lost get a snapshot (:meth:`Chat.snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from agentcast.chat.agents import Agent, ChatRequest, OfflineAgent, as_agent, load_agent
from agentcast.chat.protocol import ChatCancelCommand, ChatHistoryCommand, ChatSendCommand
from agentcast.chat.queue import UpstreamQueue
from agentcast.chat.stats import AgentStats
from agentcast.chat.text import Turn, build_context, estimate_tokens
from agentcast.codes import ErrorCode
from agentcast.core.commands import error_frame
from agentcast.core.envelope import Publication
from agentcast.core.history import HistoryPage
from agentcast.errors import AgentError, BrokerError, CommandError, ConfigError, ProtocolError
from agentcast.plugin import GatewayFeature
from agentcast.security.ownership import Owner, topic_granted
from agentcast.storage import ChatStore, create_chat_store
from agentcast.storage.base import RunStore, StoreError
from agentcast.storage.chat import ChatMessage, Conversation, NewMessage
from agentcast.storage.recorder import EventRecorder, stored_page

if TYPE_CHECKING:
    from agentcast.core.session import Session
    from agentcast.gateway import Gateway
    from agentcast.policy import Principal

__all__ = ["CHAT_PREFIX", "Chat", "Generation"]

logger = logging.getLogger("agentcast.chat")
_dumps = orjson.dumps

CHAT_PREFIX = "chat:"
DEFAULT_AGENT = "default"
_CONTEXT_MESSAGES = 200
"""Most recent stored messages considered for the context window."""
_ANSWER_RESERVE = 512
"""Tokens of a model's context kept free for the answer."""
_WORK = "chat"
"""The kind of a generation in the cluster's owned work (key: the conversation id)."""
_REMOTE_TIMEOUT = 2.0
"""Seconds a node waits for another's answer to a cancel or a progress request."""
_REMOTE_END_TIMEOUT = 10.0
"""Seconds a deletion waits for a generation on another node to end."""


class _Reserved:
    """Marks a conversation whose message is being stored (a generation is about to start)."""


@dataclass(eq=False)
class Generation:
    """One answer being generated for a conversation."""

    conversation: Conversation
    agent_id: str
    agent: Agent
    user: str
    message: ChatMessage
    session: Session | None = None
    command_id: Any = None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    queue_user: str | None = None
    """Whose turn it is in the upstream queue (default :attr:`user`); an anonymous
    subject is per process, so across nodes it is qualified with the node id."""
    parts: list[str] = field(default_factory=list)
    """The answer's deltas published so far (chunk ``i`` is ``parts[i]``)."""
    position: int | None = None
    """The queue position last published (None: not waiting)."""
    lost: bool = False
    """Another node sealed it (this node was taken for dead): drop it, publish nothing."""
    finishing: bool = False
    """Streaming ended: the answer is being stored and published."""
    held: list[bytes] = field(default_factory=list)
    """Deltas not published yet: this node's heartbeat was late (see ``OwnedWork.fresh``)."""
    done: asyncio.Future[ChatMessage] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def topic(self) -> str:
        return CHAT_PREFIX + self.conversation.id

    def progress(self) -> dict[str, Any]:
        """The answer so far: the ``streaming`` part of a chat snapshot."""
        return {
            "reply_to": self.message.id,
            "index": len(self.parts),
            "text": "".join(self.parts),
            "position": self.position,
        }


class Chat(GatewayFeature):
    """The chat feature of one gateway (``gateway.feature(Chat)``).

    ``store`` is the run store whose database also keeps the conversations (in memory
    when None). The default agent comes from the settings (``agent``, ``llm_url``, else
    the offline agent); :meth:`register_agent` adds more, before or after installing.
    """

    name = "chat"

    def __init__(self, store: RunStore | None = None) -> None:
        self.store: ChatStore = create_chat_store(store)
        self.events_store = store
        """The store's event log, where chat topics' events are recorded (None: not kept)."""
        self.recorder: EventRecorder | None = None
        self.agents: dict[str, Agent] = {}
        self.default_agent = DEFAULT_AGENT
        self.generations: dict[str, Generation | _Reserved] = {}
        self.queues: dict[str, UpstreamQueue] = {}
        self.stats: dict[tuple[str, str], AgentStats] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def install(self, gateway: Gateway) -> None:
        from agentcast.chat.endpoint import seed003_router
        from agentcast.chat.http import chat_router

        super().install(gateway)
        self.settings = gateway.settings
        if DEFAULT_AGENT not in self.agents:
            self.agents[DEFAULT_AGENT] = self._default_agent()
        gateway.add_command(ChatSendCommand, "chat:send", handler=self._cmd_send)
        gateway.add_command(ChatHistoryCommand, "chat:history", handler=self._cmd_history)
        gateway.add_command(ChatCancelCommand, "chat:cancel", handler=self._cmd_cancel)
        # seed 002: 60 chat messages a minute, per connection and per user
        gateway.add_rate_limit("chat", self.settings.rate_limit_chat_per_minute, "chat:send")
        gateway.server_prefixes.add(CHAT_PREFIX)
        gateway.subscribe_guards[CHAT_PREFIX] = self._may_subscribe
        gateway.owner_lookups[CHAT_PREFIX] = self.owner_of
        gateway.add_snapshot_provider([CHAT_PREFIX], self.snapshot)
        gateway.add_background(self._stop_on_drain)
        if self.events_store is not None:
            self.recorder = EventRecorder(self.events_store, name="chat")
            gateway.add_history_source([CHAT_PREFIX], self.stored_history)
            gateway.add_startup(self._restore)
            gateway.add_background(self.recorder.run)
            gateway.add_background(self._prune_events)
            gateway.add_shutdown(self.recorder.flush)  # after stop (hooks run in reverse)
        gateway.add_shutdown(self.stop)
        self.work = gateway.cluster.work
        # the handlers once the start-up hooks before this one ran (the store is open): the
        # cluster state starts first, and its first heartbeat may already claim a dead
        # node's generation, which the seal reads from the store
        gateway.add_startup(self._handle_work)
        gateway.add_router(chat_router(gateway, self))
        gateway.add_router(seed003_router(gateway, self))

    async def _handle_work(self) -> None:
        self.work.handle(_WORK, control=self._control, seal=self._seal_lost, lost=self._lost)

    # -- agents --------------------------------------------------------------------

    def _default_agent(self) -> Agent:
        s = self.settings
        if s.agent:
            try:
                return load_agent(s.agent)
            except (ImportError, ValueError, TypeError) as exc:
                raise ConfigError(f"agent {s.agent!r}: {exc}") from exc
        if s.llm_url:
            if not s.llm_model:
                raise ConfigError("llm_url needs llm_model (--model NAME)")
            from agentcast.chat.llm import LLMAgent, OpenAIUpstream, UpstreamConfig

            upstream = OpenAIUpstream(
                UpstreamConfig(
                    base_url=s.llm_url,
                    model=s.llm_model,
                    api_key=s.llm_api_key.get_secret_value() or None,
                    fallback_models=tuple(s.llm_fallback_models),
                    connect_timeout=s.llm_connect_timeout,
                    read_timeout=s.llm_read_timeout,
                    max_retries=s.llm_max_retries,
                    concurrency=s.llm_concurrency,
                    context_tokens=s.llm_context_tokens,
                    transport=s.llm_transport,
                )
            )
            self.gateway.add_shutdown(upstream.aclose)
            return LLMAgent(upstream, system_prompt=s.chat_system_prompt)
        return OfflineAgent(tokens_per_second=s.offline_tokens_per_second)

    def register_agent(self, agent_id: str, agent: Any, *, default: bool = False) -> Agent:
        """Serve ``agent`` (any shape :func:`~agentcast.chat.agents.as_agent` accepts) as
        ``agent_id``; ``default=True`` makes it the agent of unknown ids and new
        conversations without one."""
        coerced = as_agent(agent)
        self.agents[agent_id] = coerced
        if default:
            self.default_agent = agent_id
        return coerced

    def agent_for(self, agent_id: str | None) -> tuple[str, Agent]:
        """The agent serving ``agent_id``: a registered one, else the default agent
        (answering as ``agent_id``, as seed 003's endpoint does for any agent id)."""
        if agent_id is not None and agent_id in self.agents:
            return agent_id, self.agents[agent_id]
        return agent_id or self.default_agent, self.agents[self.default_agent]

    def _queue(self, agent: Agent) -> UpstreamQueue:
        """The agent's upstream queue, from the cluster state: in process, or the whole
        cluster's on Redis (limit: the agent's ``concurrency``, e.g. ``llm_concurrency``)."""
        key = str(getattr(agent, "queue_key", f"agent:{id(agent)}"))
        queue = self.queues.get(key)
        if queue is None:
            limit = getattr(agent, "concurrency", None)
            queue = self.queues[key] = self.gateway.cluster.queue(key, limit)
        return queue

    def _stats(self, agent: Agent) -> AgentStats:
        key = str(getattr(agent, "queue_key", "agent"))
        model = str(getattr(agent, "model", None) or getattr(agent, "name", type(agent).__name__))
        stats = self.stats.get((key, model))
        if stats is None:
            stats = self.stats[(key, model)] = AgentStats(key, model)
        return stats

    # -- ownership -----------------------------------------------------------------

    def owns(self, principal: Principal, conversation: Conversation) -> bool:
        """May ``principal`` use ``conversation`` (send, cancel, rename, delete)? Its owner
        and ``admin`` may; in open dev mode every anonymous connection is its own user,
        so there the (unguessable) conversation id is the capability, which lets a
        reconnecting client or a second tab in."""
        if conversation.user == principal.subject or principal.admin:
            return True
        return principal.anonymous and self.gateway.open_mode

    def reads(self, principal: Principal, conversation: Conversation) -> bool:
        """May ``principal`` read ``conversation`` (subscribe, history, messages)? Who
        :meth:`owns` it, and a ``topics`` claim that grants ``chat:<id>``."""
        return self.owns(principal, conversation) or topic_granted(
            principal, CHAT_PREFIX + conversation.id
        )

    async def _may_subscribe(self, principal: Principal, topic: str) -> bool:
        conv = await self.store.get_conversation(topic[len(CHAT_PREFIX) :])
        return conv is not None and self.reads(principal, conv)

    async def owner_of(self, topic: str) -> Owner | None:
        """The owner lookup of ``chat:`` topics: the conversation's user."""
        try:
            conv = await self.store.get_conversation(topic[len(CHAT_PREFIX) :])
        except StoreError:
            return None
        return Owner(conv.user) if conv is not None else None

    async def conversation(
        self, principal: Principal, conversation_id: str, *, read: bool = False
    ) -> Conversation:
        """The caller's conversation (with ``read``: one they may read); CommandError
        ``not_found`` otherwise: the same answer for a conversation that does not exist
        and for one that is not theirs."""
        try:
            conv = await self.store.get_conversation(conversation_id)
        except StoreError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"store unavailable: {exc}") from exc
        allowed = self.reads if read else self.owns
        if conv is None or not allowed(principal, conv):
            raise CommandError(
                ErrorCode.NOT_FOUND,
                f"no conversation {conversation_id!r}",
                field="data.conversation_id",
            )
        return conv

    async def new_conversation(
        self, principal: Principal, agent_id: str | None, title: str
    ) -> Conversation:
        agent_id, _ = self.agent_for(agent_id)
        now = time.time()
        conv = Conversation(uuid.uuid4().hex, principal.subject, agent_id, title[:200], now, now)
        try:
            return await self.store.create_conversation(conv)
        except StoreError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"store unavailable: {exc}") from exc

    # -- commands ------------------------------------------------------------------

    async def _cmd_send(self, session: Session, command: ChatSendCommand) -> None:
        data = command.data
        if data.conversation_id is not None:
            conv = await self.conversation(session.principal, data.conversation_id)
        else:
            title = data.title or _title(data.message)
            conv = await self.new_conversation(session.principal, data.agent, title)
        await self.submit(
            session.principal, conv, data.message, session=session, command_id=command.id
        )

    async def submit(
        self,
        principal: Principal,
        conversation: Conversation,
        text: str,
        *,
        session: Session | None = None,
        command_id: Any = None,
    ) -> Generation:
        """Store ``text`` as the user's message, publish it and start the answer.

        Raises CommandError (``invalid_field``, ``payload_too_large``, ``conflict``,
        ``unavailable``) without storing anything. With ``session`` the connection is
        subscribed to the conversation first.
        """
        limit = self.settings.chat_max_message_chars
        if not text.strip():
            raise CommandError(ErrorCode.INVALID_FIELD, "data.message: empty", field="data.message")
        if len(text) > limit:
            raise CommandError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"data.message: {len(text)} characters, more than chat_max_message_chars ({limit})",
                field="data.message",
            )
        cid = conversation.id
        if cid in self.generations:
            raise _conflict(cid)
        agent_id, agent = self.agent_for(conversation.agent_id)
        topic = CHAT_PREFIX + cid
        self.generations[cid] = placeholder = _Reserved()
        owned = False
        try:
            last: int | None = None
            if self.work.distributed:  # one generation per conversation across the nodes
                last = (await self.gateway.broker.history(topic, 0, limit=0)).last_seq
                model = getattr(agent, "model", None) or getattr(agent, "name", "agent")
                info = {"since": last, "user": principal.subject, "model": str(model)}
                await self._acquire(cid, info)
                owned = True  # registered, or adopted: given back if the send fails
            if session is not None and topic not in session.topics:
                # from the topic's last seq: the events from now on, without the snapshot
                # a subscription without `since` gets (this connection is sending)
                if last is None:
                    last = (await self.gateway.broker.history(topic, 0, limit=0)).last_seq
                await self.gateway.subscribe(session, topic, last, reply=False)
            now = time.time()
            try:
                stored = await self.store.add_message(
                    NewMessage(
                        cid,
                        "user",
                        text,
                        created_at=now,
                        completed_at=now,
                        prompt_tokens=estimate_tokens(text),
                    )
                )
            except StoreError as exc:
                raise CommandError(ErrorCode.UNAVAILABLE, f"message not stored: {exc}") from exc
        except BaseException:
            if self.generations.get(cid) is placeholder:
                del self.generations[cid]
            if owned:
                await self.work.release(_WORK, cid)
            raise
        gen = Generation(
            conversation, agent_id, agent, principal.subject, stored, session, command_id
        )
        if principal.anonymous and self.gateway.cluster.distributed:
            gen.queue_user = f"{principal.subject}@{self.gateway.cluster.node}"
        self.generations[cid] = gen
        if session is not None:
            if session.meta is None:
                session.meta = {}
            session.meta["chat_last"] = cid
        await self._publish(topic, "chat:message", stored.to_wire())
        if session is not None and command_id is not None:
            self.gateway.reply(
                session,
                "chat:accepted",
                {"conversation_id": cid, "message_id": stored.id, "topic": topic},
                id=command_id,
            )
        gen.task = asyncio.get_running_loop().create_task(self._generate(gen), name=f"chat:{cid}")
        self._tasks.add(gen.task)
        gen.task.add_done_callback(self._tasks.discard)
        return gen

    async def _acquire(self, cid: str, info: dict[str, Any]) -> None:
        """Register this node's generation of ``cid`` in the cluster, or raise
        ``conflict`` when a node runs one. The cluster state unreachable: the generation
        runs anyway (adopted), registered by the next heartbeat that reaches it."""
        for _ in range(2):
            try:
                owner = await self.work.acquire(_WORK, cid, info)
            except BrokerError as exc:
                logger.warning(
                    "generation of %s not registered in the cluster state (%s): runs here; "
                    "registered when it is back",
                    cid,
                    exc,
                )
                self.work.adopt(_WORK, cid, info)
                return
            if owner is None:
                return
            if owner != self.work.node:
                raise _conflict(cid)
            await self.work.release(_WORK, cid)  # this node's own, not running: left over
        raise _conflict(cid)

    async def generating(self, ids: list[str]) -> set[str]:
        """The conversations of ``ids`` with an answer being generated, here or on another
        node (those of other nodes left out when the cluster state is unreachable)."""
        found = {cid for cid in ids if isinstance(self.generations.get(cid), Generation)}
        if self.work.distributed and len(found) < len(ids):
            try:
                owners = await self.work.owners(_WORK, [c for c in ids if c not in found])
            except BrokerError:
                return found
            found.update(cid for cid, node in owners.items() if node != self.work.node)
        return found

    async def cancel_anywhere(self, cid: str, reason: str, *, wait: bool = False) -> bool:
        """Cancel the generation of ``cid`` on whichever node runs it (True if it was still
        running); with ``wait``, return when it ended (its answer stored and published,
        within a bound). Raises BrokerError when the owning node cannot be asked."""
        gen = self.generations.get(cid)
        if isinstance(gen, Generation):
            cancelled = self.cancel(gen, reason)
            if wait:
                await asyncio.shield(gen.done)
            return cancelled
        if not self.work.distributed:
            return False
        owner = await self.work.owner(_WORK, cid)
        if owner is None or owner == self.work.node:
            return False
        within = _REMOTE_END_TIMEOUT if wait else _REMOTE_TIMEOUT
        payload = {"op": "cancel", "reason": reason, "wait": wait}
        reply = await self.work.request(owner, _WORK, cid, payload, within=within)
        return bool(isinstance(reply, dict) and reply.get("cancelled"))

    async def _control(self, cid: str, payload: dict[str, Any]) -> Any:
        """Another node's request about this node's generation of ``cid``: ``cancel``
        (``reason``, ``wait``) → ``{"cancelled": bool}``; ``progress`` → the answer so
        far (:meth:`Generation.progress`) or None."""
        gen = self.generations.get(cid)
        op = payload.get("op")
        if op == "progress":
            return gen.progress() if isinstance(gen, Generation) else None
        if op == "cancel":
            if not isinstance(gen, Generation):
                return {"cancelled": False}
            cancelled = self.cancel(gen, str(payload.get("reason") or "cancelled"))
            if payload.get("wait"):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_REMOTE_END_TIMEOUT - 1):
                        await asyncio.shield(gen.done)
            return {"cancelled": cancelled}
        raise CommandError(ErrorCode.INVALID_FIELD, f"unknown chat control {op!r}")

    def _lost(self, cid: str) -> None:
        """Another node sealed this node's generation of ``cid`` (this node was taken for
        dead): stop it without publishing or storing anything."""
        gen = self.generations.get(cid)
        if isinstance(gen, Generation) and not gen.finishing:
            gen.lost = True
            self.cancel(gen, "sealed by another node")

    async def _seal_lost(self, cid: str, info: dict[str, Any], dead: str) -> None:
        """Finish the generation of ``cid`` whose node ``dead`` died, as its own error path
        would have: the partial answer (the deltas in the topic's history) stored with
        status ``error``, then ``chat:streaming`` done and ``chat:message`` published.
        Idempotent step by step (a second sealer stores and publishes nothing twice);
        raises (StoreError, BrokerError) to be retried."""
        topic = CHAT_PREFIX + cid
        conv = await self.store.get_conversation(cid)
        if conv is None:
            return  # deleted meanwhile
        reply_to: int | None = None
        chunks: dict[int, str] = {}
        done = published = False
        cursor = int(info.get("since") or 0)
        while True:
            page = await self.gateway.history(topic, cursor, limit=1000)
            for pub in page.publications:
                if pub.type not in ("chat:streaming", "chat:message"):
                    continue
                data = orjson.loads(pub.data)
                if pub.type == "chat:message" and data.get("role") == "user":
                    if reply_to is None:
                        reply_to = int(data["id"])
                elif data.get("reply_to") == reply_to and reply_to is not None:
                    if pub.type == "chat:message":
                        published = True
                    elif data.get("done"):
                        done = True
                    else:
                        chunks[int(data["index"])] = str(data["chunk"])
            if not page.publications or page.publications[-1].seq >= page.last_seq:
                break
            cursor = page.publications[-1].seq
        messages = await self.store.messages(cid, None, _CONTEXT_MESSAGES)
        answers = {m.reply_to: m for m in messages if m.role == "assistant"}
        if reply_to is None:  # died before publishing the question: stored, unanswered?
            users = [m for m in messages if m.role == "user"]
            if not users or users[-1].id in answers:
                return  # the question was never stored: nothing to seal
            reply_to = users[-1].id
        answer = answers.get(reply_to)
        if answer is None:
            content = "".join(chunks[i] for i in sorted(chunks))
            now = time.time()
            answer = await self._store_answer(
                NewMessage(
                    cid,
                    "assistant",
                    content,
                    status="error",
                    created_at=now,
                    completed_at=now,
                    reply_to=reply_to,
                    model=str(info.get("model") or "agent"),
                    completion_tokens=estimate_tokens(content),
                    error=f"node lost: {dead} stopped before the answer was complete",
                )
            )
        if not done:
            await self._publish_or_raise(
                topic,
                "chat:streaming",
                {
                    "conversation_id": cid,
                    "reply_to": reply_to,
                    "index": len(chunks),
                    "chunk": "",
                    "done": True,
                    "status": answer.status,
                },
            )
        if not published:
            await self._publish_or_raise(topic, "chat:message", answer.to_wire())
        logger.warning("generation of %s on lost node %s sealed here", cid, dead)

    async def _publish_or_raise(self, topic: str, kind: str, data: dict[str, Any]) -> None:
        pub = await self.gateway.publish(topic, kind, data)
        if self.recorder is not None:
            self.recorder.record(pub)

    async def _cmd_history(self, session: Session, command: ChatHistoryCommand) -> None:
        data = command.data
        limit = data.limit or self.settings.chat_history_limit
        if data.conversation_id is not None:
            conv: Conversation | None = await self.conversation(
                session.principal, data.conversation_id, read=True
            )
        else:
            try:
                found, _ = await self.store.list_conversations(session.principal.subject, 1, 0)
            except StoreError as exc:
                raise CommandError(ErrorCode.UNAVAILABLE, f"store unavailable: {exc}") from exc
            conv = found[0] if found else None
        messages: list[ChatMessage] = []
        if conv is not None:
            try:
                messages = await self.store.messages(conv.id, data.before, limit + 1)
            except StoreError as exc:
                raise CommandError(ErrorCode.UNAVAILABLE, f"store unavailable: {exc}") from exc
        generating = conv is not None and bool(await self.generating([conv.id]))
        self.gateway.reply(
            session, "chat:history", _history_data(conv, messages, limit, generating), id=command.id
        )

    async def _cmd_cancel(self, session: Session, command: ChatCancelCommand) -> None:
        cid = command.data.conversation_id or (session.meta or {}).get("chat_last")
        if cid is None:
            raise CommandError(ErrorCode.NOT_FOUND, "no generation to cancel")
        conv = await self.conversation(session.principal, cid)
        try:
            cancelled = await self.cancel_anywhere(conv.id, "cancelled by the user")
        except BrokerError as exc:
            raise CommandError(ErrorCode.UNAVAILABLE, f"cancel not delivered: {exc}") from exc
        self.gateway.reply(
            session,
            "chat:cancelled",
            {"conversation_id": conv.id, "cancelled": cancelled},
            id=command.id,
        )

    def cancel(self, gen: Generation, reason: str) -> bool:
        """Stop ``gen`` (True if it was still running)."""
        if gen.task is None or gen.task.done() or gen.cancel_reason is not None:
            return False
        gen.cancel_reason = reason
        gen.task.cancel()
        return True

    async def stop(self) -> None:
        """Gateway shutdown: cancel generations; their last events are published and their
        partial answers stored before this returns."""
        for gen in list(self.generations.values()):
            if isinstance(gen, Generation):
                self.cancel(gen, "server shutting down")
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop_on_drain(self) -> None:
        """A background task of the gateway: cancelled when it starts draining, it stops
        the generations then, so that their last events reach the subscribers before the
        connections close (the drain waits for it, up to ``shutdown_timeout``)."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # -- resume and snapshots --------------------------------------------------------

    async def _restore(self) -> None:
        """At start: chat topics are durable; continue their numbering from the store."""
        assert self.events_store is not None
        broker = self.gateway.broker
        await broker.declare_durable([CHAT_PREFIX])
        await broker.continue_numbering(await self.events_store.last_seqs(CHAT_PREFIX))

    @property
    def events_max_age(self) -> float:
        """Seconds recorded chat events are kept (0: until the conversation is deleted)."""
        s = self.settings
        return s.history_max_age if s.chat_events_max_age is None else s.chat_events_max_age

    async def prune(self, now: float) -> int:
        """Delete recorded chat events older than :attr:`events_max_age` at ``now`` (each
        topic's last event stays: it carries the numbering); returns how many."""
        age = self.events_max_age
        if self.events_store is None or age <= 0:
            return 0
        return await self.events_store.prune(CHAT_PREFIX, now - age)

    async def _prune_events(self) -> None:
        age = self.events_max_age
        if age <= 0:
            return
        while True:
            await asyncio.sleep(min(60.0, max(0.05, age / 4)))
            try:
                await self.prune(time.time())
            except StoreError as exc:
                logger.error("pruning chat events failed, will retry: %s", exc)

    async def forget_events(self, conversation_id: str) -> None:
        """Delete the recorded events of a deleted conversation (StoreError on failure)."""
        if self.events_store is not None and self.recorder is not None:
            await self.recorder.flush()
            await self.events_store.delete_events(CHAT_PREFIX + conversation_id)

    async def stored_history(
        self, topic: str, since: int, page: HistoryPage, limit: int | None = None
    ) -> HistoryPage | None:
        """The recorded events of ``topic`` after ``since``, joined to the broker's
        ``page`` (the gateway's history source for chat topics), at most ``limit``. None
        when the store does not reach back to ``since + 1`` either, or is unavailable."""
        if self.events_store is None or self.recorder is None:
            return None
        return await stored_page(self.events_store, self.recorder, topic, since, page, limit)

    async def snapshot(self, topic: str) -> tuple[int, dict[str, Any]] | None:
        """``(seq, state)`` of a conversation for a late joiner or a client whose history
        is lost (the gateway's snapshot provider for ``chat:`` topics).

        ``state`` has the shape of a ``chat:history`` reply (the latest
        ``chat_history_limit`` messages, ``has_more``, ``before``, ``generating``) plus
        ``streaming``: the answer being generated (``reply_to``, ``index`` = the number of
        chunks in ``text``, ``text``, queue ``position``), or None. It reflects every event
        up to ``seq`` and possibly a few after it (the store is read after ``seq`` is
        taken): a ``chat:message`` whose ``id`` the snapshot holds replaces that message,
        a ``chat:streaming`` whose ``index`` is below ``streaming.index`` is already in
        ``text``.
        """
        cid = topic[len(CHAT_PREFIX) :]
        try:
            seq = (await self.gateway.broker.history(topic, 0, limit=0)).last_seq
        except BrokerError:
            return None
        gen = self.generations.get(cid)
        streaming = gen.progress() if isinstance(gen, Generation) else None
        unknown = False  # running on another node that did not tell the answer so far
        if gen is None and self.work.distributed:
            try:
                owner = await self.work.owner(_WORK, cid)
                if owner is not None and owner != self.work.node:
                    unknown = True  # running on another node: ask it for the answer so far
                    progress = {"op": "progress"}
                    found = await self.work.request(
                        owner, _WORK, cid, progress, within=_REMOTE_TIMEOUT
                    )
                    streaming = found if isinstance(found, dict) else None
                    unknown = False
            except BrokerError as exc:
                logger.warning("snapshot of %s without the answer so far: %s", topic, exc)
        limit = self.settings.chat_history_limit
        try:
            conv = await self.store.get_conversation(cid)
            if conv is None:
                return None
            messages = await self.store.messages(cid, None, limit + 1)
        except StoreError as exc:
            logger.warning("no snapshot of %s: %s", topic, exc, extra={"topic": topic})
            return None
        if streaming is not None and any(
            m.role == "assistant" and m.reply_to == streaming["reply_to"] for m in messages
        ):
            streaming = None  # answered meanwhile: the message holds the whole answer
        state = _history_data(conv, messages, limit, streaming is not None or unknown)
        state["streaming"] = streaming
        return seq, state

    # -- generation ----------------------------------------------------------------

    async def _request(self, gen: Generation) -> ChatRequest:
        history = await self.store.messages(gen.conversation.id, gen.message.id, _CONTEXT_MESSAGES)
        turns = [
            Turn(m.role, m.content)
            for m in history
            if m.status == "complete" and m.role in ("user", "assistant")
        ]
        agent = gen.agent
        budget = self.settings.chat_context_tokens
        context = getattr(agent, "context_tokens", None)
        if isinstance(context, int):
            budget = max(64, min(budget, context - _ANSWER_RESERVE))
        system = getattr(agent, "system_prompt", None)
        messages, truncated = build_context(
            system if isinstance(system, str) else None, turns, gen.message.content, budget
        )
        return ChatRequest(
            conversation_id=gen.conversation.id,
            agent_id=gen.agent_id,
            user=gen.user,
            message=gen.message.content,
            messages=messages,
            context={"truncated": truncated, "title": gen.conversation.title},
        )

    async def _generate(self, gen: Generation) -> None:
        loop = asyncio.get_running_loop()
        topic = gen.topic
        reply_to = gen.message.id
        parts = gen.parts
        status, error, code = "complete", None, None
        ttft: float | None = None
        prompt_tokens = 0
        t0 = loop.time()
        started = t0

        def on_position(position: int) -> None:
            gen.position = position
            self._publish_soon(
                topic,
                "chat:queued",
                {
                    "conversation_id": gen.conversation.id,
                    "reply_to": reply_to,
                    "position": position,
                },
            )

        # every chunk's data, pre-encoded: {"conversation_id", "reply_to", "index", "chunk", "done"}
        head = b'{"conversation_id":%b,"reply_to":%b,"index":' % (
            _dumps(gen.conversation.id),
            _dumps(reply_to),
        )
        gateway = self.gateway

        def chunk(delta: str) -> bytes:
            """Count one non-empty delta (time to first token, the answer's parts) and
            encode its chunk's data."""
            nonlocal ttft
            if ttft is None:
                ttft = (loop.time() - started) * 1000
            parts.append(delta)
            return b'%b%d,"chunk":%b,"done":false}' % (head, len(parts) - 1, _dumps(delta))

        # a delta costs no task switch and no round trip of its own: published at once on
        # a broker that publishes synchronously, else queued into the loop iteration's
        # batch (the final awaited publish keeps the order and reports a broken broker);
        # with a store, its publication joins the recorder's next batch (a list append)
        record = self.recorder.record if self.recorder is not None else None
        publish_delta: Callable[[bytes], object]
        if gateway.publishes_now:
            publish_now = gateway.publish_now
            if record is None:
                publish_delta = functools.partial(publish_now, topic, "chat:streaming")
            else:

                def publish_delta(data: bytes) -> object:
                    record(publish_now(topic, "chat:streaming", data))
                    return None
        else:
            publish_nowait = gateway.publish_nowait

            def publish_delta(data: bytes) -> object:
                future = publish_nowait(topic, "chat:streaming", data)
                if record is not None:
                    future.add_done_callback(self._record_done)
                return future

        # across nodes: while this node's heartbeat is late enough for another node to take
        # it for dead (a stalled process), deltas are held until a heartbeat tells whether
        # the generation is still its own (then they go out, in order) or was sealed
        fresh = self.work.fresh if self.work.distributed else None
        held = gen.held

        def on_delta(delta: str) -> None:
            """One delta, pushed by the agent or read from its stream."""
            if not delta or gen.lost:
                return
            data = chunk(delta)
            if fresh is not None and not fresh():
                held.append(data)
                return
            try:
                if held:
                    for early in held:
                        publish_delta(early)
                    held.clear()
                publish_delta(data)
            except (BrokerError, ProtocolError) as exc:
                logger.error(
                    "chat:streaming on %s not published: %s", topic, exc, extra={"topic": topic}
                )

        try:
            async with self._queue(gen.agent).slot(gen.queue_user or gen.user, on_position):
                started = loop.time()
                request = await self._request(gen)
                prompt_tokens = sum(estimate_tokens(t.content) for t in request.messages)
                push = getattr(gen.agent, "stream_to", None)
                if push is not None:
                    await push(request, on_delta)
                else:
                    async with _closing(gen.agent.stream(request)) as deltas:
                        async for delta in deltas:
                            if not delta:
                                continue
                            if gateway.publishes_now and fresh is None:  # yields now and then
                                await self._publish(topic, "chat:streaming", chunk(delta))
                            else:
                                on_delta(delta)  # into the iteration's batch
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            status, code = "cancelled", ErrorCode.CANCELLED
            error = gen.cancel_reason or "cancelled"
        except AgentError as exc:
            status, code, error = "error", exc.code, exc.message
        except StoreError as exc:
            status, code, error = "error", ErrorCode.UNAVAILABLE, f"store unavailable: {exc}"
        except Exception as exc:
            logger.exception("agent %s failed", gen.agent_id)
            status, code = "error", ErrorCode.AGENT_ERROR
            error = f"agent {gen.agent_id!r} failed: {type(exc).__name__}: {exc}"
        gen.finishing = True
        if gen.lost or (
            self.work.distributed and not await self.work.finish(_WORK, gen.conversation.id)
        ):  # this node was taken for dead: another node sealed this generation
            self._drop(gen)
            return
        if held:  # its own after all (or the cluster state unreachable: failing open)
            on_delta_flush = held[:]
            held.clear()
            for data in on_delta_flush:
                try:
                    publish_delta(data)
                except (BrokerError, ProtocolError) as exc:
                    logger.error("chat:streaming on %s not published: %s", topic, exc)
        end = loop.time()
        stream_s = end - started - (ttft or 0) / 1000
        self._stats(gen.agent).record(status, len(parts), ttft, stream_s, (started - t0) * 1000)
        await self._publish(
            topic,
            "chat:streaming",
            {
                "conversation_id": gen.conversation.id,
                "reply_to": reply_to,
                "index": len(parts),
                "chunk": "",
                "done": True,
                "status": status,
            },
        )
        content = "".join(parts)
        now = time.time()
        answer_row = NewMessage(
            gen.conversation.id,
            "assistant",
            content,
            status=status,
            created_at=now - (end - t0),
            completed_at=now,
            reply_to=reply_to,
            model=str(getattr(gen.agent, "model", None) or getattr(gen.agent, "name", "agent")),
            prompt_tokens=prompt_tokens,
            completion_tokens=estimate_tokens(content),
            ttft_ms=ttft,
            duration_ms=(end - t0) * 1000,
            error=error,
        )
        try:
            answer = await self._store_answer(answer_row)
        except StoreError as exc:
            logger.error("answer in %s not stored: %s", gen.conversation.id, exc)
            answer = ChatMessage.of(0, answer_row)
            code, error = ErrorCode.UNAVAILABLE, f"answer not stored: {exc}"
        await self._publish(topic, "chat:message", answer.to_wire())
        session = gen.session
        if code is not None and code is not ErrorCode.CANCELLED and session is not None:
            exc_ = ProtocolError(code, error or status)
            self.gateway.send(session, error_frame(exc_, self.gateway.now_iso(), id=gen.command_id))
        if self.generations.get(gen.conversation.id) is gen:
            del self.generations[gen.conversation.id]
        if not gen.done.done():
            gen.done.set_result(answer)

    def _drop(self, gen: Generation) -> None:
        """Forget ``gen`` without storing or publishing anything (sealed elsewhere)."""
        logger.warning("generation of %s dropped: sealed by another node", gen.conversation.id)
        if self.generations.get(gen.conversation.id) is gen:
            del self.generations[gen.conversation.id]
        if not gen.done.done():
            row = NewMessage(
                gen.conversation.id,
                "assistant",
                "".join(gen.parts),
                status="error",
                reply_to=gen.message.id,
                error="sealed by another node",
            )
            gen.done.set_result(ChatMessage.of(0, row))

    async def _store_answer(self, row: NewMessage) -> ChatMessage:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(StoreError),
            reraise=True,
        ):
            with attempt:
                return await self.store.add_message(row)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _publish(self, topic: str, kind: str, data: dict[str, Any] | bytes) -> None:
        try:
            pub = await self.gateway.publish(topic, kind, data)
        except (BrokerError, ProtocolError) as exc:
            logger.error("%s on %s not published: %s", kind, topic, exc, extra={"topic": topic})
            return
        if self.recorder is not None:
            self.recorder.record(pub)

    def _record_done(self, future: asyncio.Future[Publication]) -> None:
        """Record a delta published through the loop iteration's batch."""
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            logger.error("chat:streaming not published: %s", exc)
        elif self.recorder is not None:
            self.recorder.record(future.result())

    def _publish_soon(self, topic: str, kind: str, data: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(topic, kind, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _history_data(
    conv: Conversation | None, messages: list[ChatMessage], limit: int, generating: bool
) -> dict[str, Any]:
    """The data of a ``chat:history`` reply (and of a chat snapshot) from the ``limit + 1``
    latest messages (one more than shown tells whether older ones exist)."""
    has_more = len(messages) > limit
    messages = messages[-limit:]
    return {
        "conversation_id": conv.id if conv else None,
        "conversation": conv.to_wire() if conv else None,
        "messages": [m.to_wire() for m in messages],
        "has_more": has_more,
        "before": messages[0].id if has_more and messages else None,
        "generating": generating,
    }


def _conflict(cid: str) -> CommandError:
    return CommandError(
        ErrorCode.CONFLICT,
        f"conversation {cid!r} is answering a message: wait for it or chat:cancel",
        field="data.conversation_id",
    )


def _title(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= 60 else line[:57] + "..."


class _closing:
    """``async with`` that closes an async iterator (``aclose``) on the way out."""

    def __init__(self, iterator: AsyncIterator[str]) -> None:
        self.iterator = iterator

    async def __aenter__(self) -> AsyncIterator[str]:
        return self.iterator

    async def __aexit__(self, *exc: object) -> None:
        close: Callable[[], Any] | None = getattr(self.iterator, "aclose", None)
        if close is not None:
            await close()
