"""Chat with agents: conversations over one socket, streamed tokens, stored history.

* :mod:`~agentcast.chat.agents`: the injected :class:`Agent` interface, adapters and the
  built-in offline agent.
* :mod:`~agentcast.chat.text`: token estimates, truncation, chunks, the context window.
* :mod:`~agentcast.chat.llm`: an OpenAI-compatible upstream over httpx (LM Studio,
  Ollama, vLLM, llama.cpp, OpenAI) and the agent that uses it.
* :mod:`~agentcast.chat.queue`: the fair queue in front of each upstream.
* :mod:`~agentcast.chat.service`: the ``chat:*`` commands, generations and their events.
"""

from agentcast.chat.agents import Agent, ChatRequest, OfflineAgent, as_agent, load_agent
from agentcast.chat.text import Turn

__all__ = ["Agent", "ChatRequest", "OfflineAgent", "Turn", "as_agent", "load_agent"]
