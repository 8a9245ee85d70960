"""Test helpers shipped with agentcast: a fake OpenAI-compatible server
(:mod:`agentcast.testing.openai_server`) for testing agents and setups without a model."""
