"""Settings of the security layer: origins, TLS, secrets, and seed 002's names.

``tests/data/seed002.yaml`` is seed 002's "Configuración YAML" block copied as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr

from agentcast.errors import ConfigError
from agentcast.security.secrets import redact_url, secret_settings
from agentcast.settings import Settings, load_settings

SEED002 = Path(__file__).resolve().parents[1] / "data" / "seed002.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WEBSOCKET_HOST", "WEBSOCKET_PORT", "WEBSOCKET_SECRET_KEY", "WEBSOCKET_ENABLED"):
        monkeypatch.delenv(name, raising=False)


def test_seed002_file_as_written_maps_onto_flat_settings() -> None:
    s = load_settings(SEED002)
    assert (s.host, s.port, s.max_connections) == ("localhost", 8765, 100)
    assert (s.auth_required, s.token_expiry) == (True, 3600.0)
    assert s.origins == ["http://localhost:3000"]
    assert s.rate_limit_chat_per_minute == 60


def test_seed002_environment_and_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSOCKET_HOST", "127.0.0.2")
    monkeypatch.setenv("WEBSOCKET_PORT", "8766")
    monkeypatch.setenv("WEBSOCKET_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("WEBSOCKET_ENABLED", "true")  # accepted, not used
    s = load_settings(SEED002)
    assert (s.host, s.port) == ("127.0.0.2", 8766)  # WEBSOCKET_* over the file
    assert s.jwt_secret.get_secret_value() == "s" * 40
    monkeypatch.setenv("AGENTCAST_PORT", "8767")
    assert load_settings(SEED002).port == 8767  # AGENTCAST_* over WEBSOCKET_*
    assert load_settings(SEED002, port=8768).port == 8768  # flags over everything
    assert load_settings().port == 8767  # without a file too


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("websocket:\n  server:\n    hots: x\n", "unknown key websocket.server.hots"),
        ("websocket:\n  security:\n    csrf: {}\n", "unknown key websocket.security.csrf"),
        ("websocket:\n  colour: blue\n", "unknown key websocket.colour"),
        ("websocket:\n  server: 8765\n", "websocket.server: must be a mapping"),
        (
            "websocket:\n  security:\n    cors:\n      enabled: maybe\n",
            "websocket.security.cors.enabled: must be true or false",
        ),
        ("port: 1\nwebsocket:\n  server:\n    port: 2\n", "port is set twice"),
        ("websocket:\n  server:\n    port: 99999\n", "port"),
        ("nonsense_key: 1\n", "nonsense_key"),
        ("- a list\n", "not a mapping"),
    ],
)
def test_seed002_section_errors_are_clear(tmp_path: Path, yaml: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_seed002_disabled_switches(tmp_path: Path) -> None:
    path = tmp_path / "off.yaml"
    path.write_text(
        "websocket:\n  security:\n    authentication:\n      enabled: false\n"
        "    cors:\n      enabled: false\n      origins: ['http://localhost:3000']\n"
        "    rate_limiting:\n      enabled: false\n      max_requests_per_minute: 10\n"
        "log_level: debug\n"
    )
    s = load_settings(path)
    assert (s.auth_required, s.origins, s.rate_limit_chat_per_minute, s.log_level) == (
        False,
        [],
        0,
        "debug",
    )
    path.write_text("websocket:\n  security:\n    rate_limiting:\n      enabled: true\n")
    assert load_settings(path).rate_limit_chat_per_minute == 60  # seed 002's figure


def test_origins_from_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().origins == []
    assert load_settings(origins=["HTTP://LocalHost:3000"]).origins == ["http://localhost:3000"]
    monkeypatch.setenv("AGENTCAST_ORIGINS", "http://a.example, https://b.example:443")
    assert load_settings().origins == ["http://a.example", "https://b.example"]
    monkeypatch.setenv("AGENTCAST_ORIGINS", json.dumps(["http://c.example:8080"]))
    assert load_settings().origins == ["http://c.example:8080"]
    monkeypatch.setenv("AGENTCAST_ORIGINS", "*")
    with pytest.raises(ConfigError, match=r"origins.*wildcards are not supported"):
        load_settings()
    monkeypatch.delenv("AGENTCAST_ORIGINS")
    path = tmp_path / "o.yaml"
    path.write_text("origins: ['http://localhost:3000/']\n")
    with pytest.raises(ConfigError, match=r"origins.*has no path"):
        load_settings(path)


def test_tls_files_go_together() -> None:
    with pytest.raises(ConfigError, match="tls_certfile and tls_keyfile go together"):
        load_settings(tls_certfile="cert.pem")


def test_secret_settings_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"llm_api_key", "jwt_secret"} <= set(secret_settings())
    for name in secret_settings():
        monkeypatch.setenv(f"AGENTCAST_{name.upper()}", f"MARKER-{name}-{'x' * 32}")
    s = load_settings()
    assert s.llm_api_key.get_secret_value() == f"MARKER-llm_api_key-{'x' * 32}"
    shown = [repr(s), str(s), str(s.model_dump()), s.model_dump_json(), repr(s.llm_api_key)]
    assert not any("MARKER" in text for text in shown)
    # nor in a validation error about another field
    monkeypatch.setenv("AGENTCAST_PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "MARKER" not in str(info.value)
    assert all(
        SecretStr in (info.annotation, *get_args(info.annotation))
        for n, info in Settings.model_fields.items()
        if n in secret_settings()
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://app:hunter2@db/test", "postgresql://app:***@db/test"),
        ("postgresql://app@db/test", "postgresql://app@db/test"),
        ("memory://", "memory://"),
        ("sqlite:///agentcast.db", "sqlite:///agentcast.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
