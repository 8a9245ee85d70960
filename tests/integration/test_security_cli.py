"""The CLI with authentication: `agentcast token`, `serve` with a JWT secret (also on a
non-loopback address, without --insecure) or with `--auth module:factory`, bad secrets
refused at start, and the client commands' `--token`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from tests.conftest import UNIT, ServerProcess, free_port

SECRET = "cli-secret-" + "z" * 32
AGENTCAST = [sys.executable, "-m", "agentcast.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTCAST, *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        env={**os.environ, **(env or {})},
    )


def test_token_mints_a_development_token() -> None:
    result = run(
        "token", "--sub", "alice", "--ttl", "1h", "--scope", "publish",
        "--topics", "workflow:team-42:*",
        env={"AGENTCAST_JWT_SECRET": SECRET},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["scope"] == "publish"
    assert claims["topics"] == ["workflow:team-42:*"]
    assert 3590 <= claims["exp"] - time.time() <= 3600


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--sub", "a"], {"AGENTCAST_JWT_SECRET": ""}, "jwt_secret is blank"),
        (["--sub", "a"], {}, "minting needs jwt_secret"),
        (["--sub", "a", "--ttl", "soon"], {"AGENTCAST_JWT_SECRET": SECRET}, "--ttl"),
        (["--sub", "a", "--scope", "root"], {"AGENTCAST_JWT_SECRET": SECRET}, "unknown scope"),
    ],
)
def test_token_refuses_bad_input(args: list[str], env: dict[str, str], message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k != "AGENTCAST_JWT_SECRET"}
    result = subprocess.run(
        [*AGENTCAST, "token", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        env={**clean, **env},
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("secret", "message"),
    [("", "jwt_secret is blank"), ("   ", "jwt_secret is blank"), ("short", "5 bytes long")],
)
def test_serve_refuses_a_blank_or_short_secret(secret: str, message: str) -> None:
    result = run("serve", "--port", str(free_port()), env={"AGENTCAST_JWT_SECRET": secret})
    assert result.returncode == 2
    assert message in result.stderr
    assert secret.strip() == "" or secret not in result.stderr.replace(message, "")


def test_serve_refuses_a_secret_in_yaml_that_is_short(tmp_path: object) -> None:
    from pathlib import Path

    config = Path(str(tmp_path)) / "agentcast.yaml"
    config.write_text("jwt_secret: tooshort\n")
    result = run("serve", "--port", str(free_port()), "--config", str(config))
    assert result.returncode == 2
    assert "jwt_secret" in result.stderr and "8 bytes long" in result.stderr


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[ServerProcess]:
    server = ServerProcess(free_port(), "--host", "0.0.0.0", env={"AGENTCAST_JWT_SECRET": SECRET})
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.log.close()


def test_serve_with_a_secret_binds_any_address_without_insecure(
    jwt_server: ServerProcess,
) -> None:
    assert httpx.get(f"{jwt_server.url}/healthz").json()["mode"] == "auth"
    assert "OPEN DEV MODE" not in jwt_server.output()
    assert SECRET not in jwt_server.output()


def test_client_commands_take_a_token(jwt_server: ServerProcess) -> None:
    token = run(
        "token", "--sub", "alice", "--scope", "publish", env={"AGENTCAST_JWT_SECRET": SECRET}
    ).stdout.strip()  # publishing needs `publish`; the first publisher owns workflow:7
    env = {"AGENTCAST_URL": jwt_server.url}
    denied = run("publish", "workflow:7", "node_status", '{"node_id": "n1"}', env=env)
    assert denied.returncode == 1 and "401" in denied.stderr
    ok = run(
        "publish", "workflow:7", "node_status", '{"node_id": "n1", "status": "running"}',
        env={**env, "AGENTCAST_TOKEN": token},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().isdigit()
    tailed = run("tail", "workflow:7", "--since", "0", "--count", "1", "--token", token, env=env)
    assert tailed.returncode == 0, tailed.stderr
    assert "node_status" in tailed.stdout
    # a refused token is terminal: no reconnection loop, a prompt exit
    started = time.monotonic()
    refused = run("tail", "workflow:7", "--token", "not-a-token", env=env)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "retrying" not in refused.stderr
    assert time.monotonic() - started < 20 * UNIT
    replayed = run("replay", "workflow:7", "--speed", "0", "--token", "bad", env=env)
    assert replayed.returncode == 1 and "401" in replayed.stderr


def test_serve_loads_the_applications_own_policy() -> None:
    server = ServerProcess(free_port(), "--auth", "tests.integration.authapp:make")
    server.start()
    try:
        assert "OPEN DEV MODE" not in server.output()
        with httpx.Client(base_url=server.url, timeout=10 * UNIT) as http:
            body = {"type": "progress_update", "data": {"progress": 10}}
            assert http.post("/api/topics/execution:ann-1/events", json=body).status_code == 401
            mine = http.post(
                "/api/topics/execution:ann-1/events", json=body, headers={"X-User": "ann"}
            )
            assert mine.status_code == 200, mine.text
            theirs = http.post(
                "/api/topics/execution:bob-1/events", json=body, headers={"X-User": "ann"}
            )
            assert theirs.status_code == 403
    finally:
        server.stop()
        server.log.close()
    bad = run("serve", "--port", str(free_port()), "--auth", "no.such.module:make")
    assert bad.returncode == 2 and "cannot load it" in bad.stderr


def test_chat_takes_a_token(jwt_server: ServerProcess) -> None:
    env = {"AGENTCAST_URL": jwt_server.url}
    refused = run("chat", "helper", "-m", "hello", env=env)
    assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
    token = run("token", "--sub", "carol", env={"AGENTCAST_JWT_SECRET": SECRET}).stdout.strip()
    answered = run("chat", "helper", "-m", "hello", "--token", token, env=env)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip(), "no answer streamed"
