from __future__ import annotations

from pathlib import Path

import pytest

from agentcast.brokers import create_broker
from agentcast.core.history import HistoryLimits
from agentcast.errors import ConfigError
from agentcast.settings import load_settings


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port, s.ping_interval, s.broker_url) == ("127.0.0.1", 8000, 20.0, "memory://")
    assert s.loopback


def test_precedence_flags_over_env_over_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "agentcast.yaml"
    cfg.write_text("port: 9001\nping_interval: 5\nhistory_max_events: 7\n")
    monkeypatch.setenv("AGENTCAST_PING_INTERVAL", "6")
    s = load_settings(cfg, port=None)
    assert (s.port, s.ping_interval, s.history_max_events) == (9001, 6.0, 7)
    assert load_settings(cfg, port=9002).port == 9002


def test_invalid_values_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(port=70000)
    monkeypatch.setenv("AGENTCAST_PING_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="ping_interval"):
        load_settings()
    monkeypatch.delenv("AGENTCAST_PING_INTERVAL")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_key: 1\n")
    with pytest.raises(ConfigError, match="nonsense_key"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="ping_timeout"):
        load_settings(ping_interval=1, ping_timeout=100)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("example.org", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert load_settings(host=host).loopback is loopback


def test_broker_by_url() -> None:
    assert create_broker("memory://", HistoryLimits()).__class__.__name__ == "MemoryBroker"
    with pytest.raises(ConfigError, match="unknown broker"):
        create_broker("carrier-pigeon://x", HistoryLimits())


def test_llm_transport_is_native_or_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().llm_transport == "auto"
    for kind in ("native", "httpx"):
        monkeypatch.setenv("AGENTCAST_LLM_TRANSPORT", kind)
        assert load_settings().llm_transport == kind
    monkeypatch.setenv("AGENTCAST_LLM_TRANSPORT", "aiohttp")  # a transport that is gone
    with pytest.raises(ConfigError, match="llm_transport"):
        load_settings()
