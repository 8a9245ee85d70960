"""Agent adapters, loading agents by spec, and the offline agent."""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator

import pytest

from agentcast.chat.agents import (
    ChatRequest,
    GeneratorAgent,
    OfflineAgent,
    QAAgentAdapter,
    as_agent,
    load_agent,
)
from agentcast.chat.text import Turn


def request(message: str, earlier: int = 0) -> ChatRequest:
    turns = [Turn("user", f"q{i}") for i in range(earlier)] + [Turn("user", message)]
    return ChatRequest("c1", "tws-general", "u", message, turns)


async def collect(it: AsyncIterator[str]) -> list[str]:
    return [x async for x in it]


class QAAgent:  # seed 002's shape
    async def chat(self, message: str) -> str:
        return f"answer to {message}"


async def test_seed002_qa_agent_is_served_through_an_adapter() -> None:
    agent = as_agent(QAAgent())
    assert isinstance(agent, QAAgentAdapter)
    assert await collect(agent.stream(request("why?"))) == ["answer to why?"]


async def test_qa_agent_must_return_text() -> None:
    class Bad:
        async def chat(self, message: str) -> int:
            return 42

    with pytest.raises(TypeError, match="not str"):
        await collect(as_agent(Bad()).stream(request("x")))


async def test_async_generators_of_text_or_request() -> None:
    async def of_text(message: str) -> AsyncIterator[str]:
        for word in message.split():
            yield word.upper()

    async def of_request(req: ChatRequest) -> AsyncIterator[str]:
        yield f"{req.agent_id}:{len(req.messages)}"

    a, b = as_agent(of_text), as_agent(of_request)
    assert isinstance(a, GeneratorAgent) and isinstance(b, GeneratorAgent)
    assert await collect(a.stream(request("hi there"))) == ["HI", "THERE"]
    assert await collect(b.stream(request("x", earlier=2))) == ["tws-general:3"]


def test_not_an_agent() -> None:
    with pytest.raises(TypeError, match="not an agent"):
        as_agent(object())


def test_load_agent_by_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("my_agents")

    async def gen(message: str) -> AsyncIterator[str]:
        yield message

    module.QAAgent = QAAgent  # type: ignore[attr-defined]
    module.instance = QAAgent()  # type: ignore[attr-defined]
    module.factory = lambda: OfflineAgent(tokens_per_second=0)  # type: ignore[attr-defined]
    module.gen = gen  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "my_agents", module)
    assert isinstance(load_agent("my_agents:QAAgent"), QAAgentAdapter)
    assert isinstance(load_agent("my_agents:instance"), QAAgentAdapter)
    assert isinstance(load_agent("my_agents:factory"), OfflineAgent)
    assert isinstance(load_agent("my_agents:gen"), GeneratorAgent)
    with pytest.raises(ValueError, match=r"package\.module:factory"):
        load_agent("my_agents")
    with pytest.raises(ValueError, match="no attribute"):
        load_agent("my_agents:missing")
    with pytest.raises(ImportError):
        load_agent("no_such_module_here:x")


async def test_offline_agent_is_deterministic_and_streams_words() -> None:
    agent = OfflineAgent(tokens_per_second=0)
    one = await collect(agent.stream(request("How does resume work?")))
    again = await collect(agent.stream(request("How does resume work?")))
    other = await collect(agent.stream(request("What is a snapshot?")))
    assert one == again and "".join(one) != "".join(other)
    assert len(one) > 5 and "".join(one) == agent.answer(request("How does resume work?"))
    assert '"How does resume work?"' in "".join(one)
    assert "ABEND" in agent.answer(request("qual job esta em abend?"))
    assert "TWS_AGENT2" in agent.answer(request("status das workstations"))
    assert "earlier question" in agent.answer(request("obrigado", earlier=2))
    assert "earlier question" not in agent.answer(request("obrigado"))
    assert agent.answer(request("hi")).startswith("Hello")
    assert not agent.answer(request("this is about shipping")).startswith("Hello")


async def test_offline_agent_paces_its_tokens() -> None:
    import asyncio

    agent = OfflineAgent(tokens_per_second=200)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    words = await collect(agent.stream(request("pace me please")))
    elapsed = loop.time() - t0
    assert elapsed >= (len(words) - 1) / 200 * 0.9
