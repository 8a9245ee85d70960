"""The agent interface: what the gateway calls to answer a chat message.

Seed 002's rule holds: the gateway never imports an agent framework; agents are injected.
An :class:`Agent` gets a :class:`ChatRequest` (the conversation, its budgeted context and
the new message) and returns an async iterator of text deltas. The answer is the
concatenation of the deltas; raising ends it with an error (:class:`~agentcast.errors.AgentError`
carries a client-facing message, anything else is reported as an internal agent error).
Cancellation is the iterator being closed: the gateway cancels the task that iterates it,
so an agent's ``finally`` blocks and ``async with`` exits run (an HTTP stream upstream is
closed at once).

Three shapes are accepted by :func:`as_agent`:

* an :class:`Agent` (has ``stream(request)``);
* an object with ``async def chat(self, message: str) -> str`` (seed 002's ``QAAgent``):
  the whole answer arrives as one delta;
* an async generator function ``f(request) -> AsyncIterator[str]`` (or ``f(message)``).

Optional attributes an agent may have: ``name`` (shown to users), ``queue_key`` (agents
that share one upstream share one fair queue) and ``concurrency`` (the upstream's limit
of generations at once; ``None`` means no limit and no queue). An agent may also offer
``async def stream_to(self, request, on_delta) -> None``, the same answer *pushed*: it
calls ``on_delta(text)`` for each delta as it gets it (synchronously, e.g. from a socket's
read callback) and returns when the answer is whole. The gateway prefers it when its broker
publishes synchronously, saving a task switch per token; the LLM upstream agent has it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentcast.chat.text import Turn

__all__ = [
    "Agent",
    "ChatRequest",
    "GeneratorAgent",
    "OfflineAgent",
    "QAAgentAdapter",
    "as_agent",
    "load_agent",
]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What an agent answers: ``message`` in conversation ``conversation_id``.

    ``messages`` is the prompt the gateway built: the system prompt, the recent history
    that fits the context budget and the new user message last (possibly cut, with a note).
    """

    conversation_id: str
    agent_id: str
    user: str
    message: str
    messages: Sequence[Turn]
    context: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Agent(Protocol):
    """Streams the answer to one chat request as text deltas."""

    def stream(self, request: ChatRequest) -> AsyncIterator[str]: ...


class QAAgentAdapter:
    """An object with ``async def chat(message) -> str`` as an :class:`Agent`."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.name = getattr(target, "name", type(target).__name__)
        self.concurrency: int | None = getattr(target, "concurrency", None)
        self.queue_key: str = getattr(target, "queue_key", f"agent:{id(target)}")

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        answer = await self.target.chat(request.message)
        if not isinstance(answer, str):
            raise TypeError(f"{self.name}.chat() returned {type(answer).__name__}, not str")
        yield answer


class GeneratorAgent:
    """An async generator function of the request (or of the message text) as an Agent."""

    def __init__(self, fn: Callable[..., AsyncIterator[str]]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "agent")
        self.concurrency: int | None = None
        self.queue_key = f"agent:{id(fn)}"
        params = list(inspect.signature(fn).parameters.values())
        annotation = params[0].annotation if params else None
        self._wants_text = annotation in (str, "str")

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        return self.fn(request.message if self._wants_text else request)


def as_agent(obj: Any) -> Agent:
    """Coerce one of the accepted shapes (module docstring) into an :class:`Agent`."""
    if isinstance(obj, Agent) and not inspect.isfunction(obj):
        return obj
    if inspect.isasyncgenfunction(obj):
        return GeneratorAgent(obj)
    chat = getattr(obj, "chat", None)
    if chat is not None and inspect.iscoroutinefunction(chat):
        return QAAgentAdapter(obj)
    raise TypeError(
        f"{obj!r} is not an agent: give an object with stream(request), an object with "
        "`async def chat(message) -> str`, or an async generator function"
    )


def load_agent(spec: str) -> Agent:
    """Load ``package.module:factory`` (``agentcast serve --agent``).

    The attribute may be an agent, a class or zero-argument factory returning one, or an
    async generator function. Raises ValueError for a bad spec, ImportError when the
    module cannot be imported and TypeError when the result is no agent.
    """
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--agent wants 'package.module:factory', got {spec!r}")
    module = importlib.import_module(module_name)
    try:
        target: Any = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    if inspect.isasyncgenfunction(target):
        return GeneratorAgent(target)
    if inspect.isclass(target) or (
        callable(target) and not isinstance(target, Agent) and not hasattr(target, "chat")
    ):
        target = target()
    return as_agent(target)


# -- the built-in offline agent -----------------------------------------------------------

_TOPICS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("abend", "erro", "error", "fail", "falha"),
        "Jobs in ABEND state found:\n- Data Processing (ID: JOB002) on workstation "
        "TWS_AGENT2\n\nI recommend checking the job log and its dependencies.",
    ),
    (
        ("status", "workstation", "estado"),
        "Current environment status:\n\nWorkstations:\n- TWS_MASTER: ONLINE\n"
        "- TWS_AGENT1: ONLINE\n- TWS_AGENT2: OFFLINE\n\nJobs:\n- Daily Backup: SUCC "
        "(TWS_AGENT1)\n- Data Processing: ABEND (TWS_AGENT2)\n- Report Generation: SUCC "
        "(TWS_AGENT1)",
    ),
    (
        ("obrigad", "valeu", "thank", "thanks", "gracias"),
        "Glad to help! Ask again whenever you need more information.",
    ),
    (
        ("hello", "hi", "olá", "ola", "hola", "bom dia"),
        "Hello! I am the offline demo agent of agentcast. Ask me anything.",
    ),
)

_OPENERS = (
    "Here is what I can tell you",
    "Good question",
    "Let me think about that",
    "In short",
    "From what I know",
    "Briefly",
)
_FACTS = (
    "agentcast numbers every event of a topic, so a client that reconnects resumes "
    "without gaps or duplicates.",
    "long answers are streamed token by token, and a generation can be cancelled at any moment.",
    "every message of this conversation is stored, so you can page back through it from "
    "any device.",
    "a fair queue sits in front of the language model, so no user can starve another.",
    "this answer comes from the built-in offline agent; configure --llm-url to use a real model.",
    "dashboards that join late first receive a snapshot of the current state.",
)


class OfflineAgent:
    """The built-in agent: deterministic answers, streamed word by word, no LLM needed.

    The same question always gets the same answer and different questions get different
    answers (keyword rules as in seed 003, otherwise sentences chosen by a hash of the
    question, which is quoted back). ``tokens_per_second`` paces the stream like a real
    model (0: as fast as possible). It remembers the conversation: a follow-up says so.
    """

    name = "offline"

    def __init__(self, *, tokens_per_second: float = 40.0, concurrency: int | None = None) -> None:
        self.tokens_per_second = tokens_per_second
        self.concurrency = concurrency
        self.queue_key = "offline"

    def answer(self, request: ChatRequest) -> str:
        """The full answer to ``request`` (deterministic)."""
        message = request.message.strip()
        lower = message.lower()
        earlier = sum(1 for t in request.messages[:-1] if t.role == "user")
        words = set(re.findall(r"\w+", lower))
        for keywords, text in _TOPICS:
            if any(k in words or (len(k) > 3 and k in lower) for k in keywords):
                answer = text
                break
        else:
            digest = hashlib.sha256(message.encode()).digest()
            opener = _OPENERS[digest[0] % len(_OPENERS)]
            first = _FACTS[digest[1] % len(_FACTS)]
            second = _FACTS[(digest[1] + 1 + digest[2] % (len(_FACTS) - 1)) % len(_FACTS)]
            quoted = message if len(message) <= 200 else message[:197] + "..."
            answer = (
                f'{opener}: you asked "{quoted}". As agent {request.agent_id}, I can say '
                f"that {first} Also, {second}"
            )
        if earlier:
            answer += f" (Follow-up noted: {earlier} earlier question(s) in this conversation.)"
        return answer

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        answer = self.answer(request)
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        words = answer.split(" ")
        for i, word in enumerate(words):
            if delay:
                wait = start + i * delay - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            yield word if i == 0 else " " + word
