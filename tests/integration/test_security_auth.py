"""JWT authentication over real sockets, on both transports: every forged, stale or
misdirected credential is refused with its documented HTTP status or close code, and the
legitimate ways in (header, subprotocol, query, ticket, first `auth` message, refresh)
work."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcast.codes import CloseCode
from agentcast.security import Security
from tests.conftest import UNIT, RunningServer, start_server, stop_server
from tests.integration.wsutil import recv, send, subscribe

SECRET = "s3cret-" + "x" * 40
AUD, ISS = "agentcast-tests", "https://issuer.test"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "alice", ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + int(ttl), "aud": AUD, "iss": ISS, **extra}


def hs(payload: dict[str, Any] | None = None, secret: str | bytes = SECRET, **headers: Any) -> str:
    return jwt.encode(payload or claims(), secret, algorithm="HS256", headers=headers or None)


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token with any header, signed (or not) by hand."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    return f"{head}.{body}.{b64(signature)}"


def hmac_forge(
    header: dict[str, Any], payload: dict[str, Any], key: bytes, digest: Any = hashlib.sha256
) -> str:
    unsigned = forge(header, payload).rsplit(".", 1)[0]
    mac = hmac.new(key, unsigned.encode(), digest).digest()
    return f"{unsigned}.{b64(mac)}"


async def handshake_status(url: str, **options: Any) -> int:
    """The HTTP status of a refused handshake (101 when it opened)."""
    try:
        async with websockets.connect(url, **options):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def close_code(ws: Any, timeout: float = 5 * UNIT) -> int:
    """Read until the server closes; its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed:
        pass
    assert ws.close_code is not None
    return int(ws.close_code)


def bearer(token: str) -> dict[str, dict[str, str]]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


@pytest.fixture(params=["native", "asgi"])
async def hs_server(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    """JWT (HS256) with audience and issuer, no leeway, fast sweeps."""
    running, task = await start_server(
        request.param,
        jwt_secret=SECRET,
        jwt_audience=AUD,
        jwt_issuer=ISS,
        jwt_leeway=0,
        auth_timeout=0.5,
        auth_expiry_grace=0.2,
        ping_interval=0.2,
        ping_timeout=0.2,
    )
    try:
        yield running
    finally:
        await stop_server(running, task)


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("keys") / "public.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, path


@pytest.fixture(params=["native", "asgi"])
async def rs_server(
    request: pytest.FixtureRequest, rsa_keys: tuple[rsa.RSAPrivateKey, Path]
) -> AsyncIterator[RunningServer]:
    running, task = await start_server(
        request.param, jwt_public_key_file=str(rsa_keys[1]), jwt_algorithms=["RS256"]
    )
    try:
        yield running
    finally:
        await stop_server(running, task)


# -- the ways in --------------------------------------------------------------------------


async def test_no_token_is_refused_over_http_and_pending_on_the_socket(
    hs_server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=hs_server.url) as http:
        r = await http.get("/api/topics")
        assert r.status_code == 401 and r.json()["detail"]["code"] == "unauthorized"
        r = await http.get("/api/topics", headers={"Authorization": f"Bearer {hs()}"})
        assert r.status_code == 200
    # a feature's socket endpoint has no first-message authentication: 401 at once
    status = await handshake_status(f"ws://127.0.0.1:{hs_server.port}/api/ws/workflow/1")
    assert status == 401


async def test_bearer_header_subprotocol_and_query(hs_server: RunningServer) -> None:
    token = hs(claims(scope="publish admin bogus", topics=["workflow:team-42:*"]))
    async with websockets.connect(hs_server.ws_url, **bearer(token)) as ws:
        assert (await subscribe(ws, "workflow:1"))["type"] == "subscribed"
        (session,) = hs_server.gateway.sessions.values()
        principal = session.principal
        assert principal.subject == "alice"
        assert principal.scopes == {"publish", "admin"}  # unknown scopes are dropped
        assert principal.topics == ("workflow:team-42:*",)
        assert principal.expires_at == jwt.decode(token, options={"verify_signature": False})["exp"]
    # browsers: the token as an offered subprotocol; the answer is agentcast.v1, never it
    offered = ["agentcast.v1", f"bearer.{token}"]
    async with websockets.connect(hs_server.ws_url, subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "agentcast.v1"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "agentcast.v1"
        await send(ws, {"type": "ping", "id": 1})
        assert (await recv(ws))["type"] == "pong"
    bad = ["agentcast.v1", f"bearer.{hs(secret='another-secret-' + 'y' * 32)}"]
    assert await handshake_status(hs_server.ws_url, subprotocols=bad) == 401
    async with websockets.connect(f"{hs_server.ws_url}?token={token}") as ws:
        await send(ws, {"type": "ping", "id": 1})
        assert (await recv(ws))["type"] == "pong"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("alg none", lambda: forge({"alg": "none", "typ": "JWT"}, claims())),
        ("alg None", lambda: forge({"alg": "None"}, claims())),
        ("null signature", lambda: forge({"alg": "HS256", "typ": "JWT"}, claims())),
        ("wrong key", lambda: hs(secret="a-completely-different-secret-of-40-bytes")),
        ("expired", lambda: hs(claims(ttl=-5))),
        ("not yet valid", lambda: hs(claims(nbf=int(time.time()) + 600))),
        ("wrong audience", lambda: hs(claims(aud="someone-else"))),
        ("wrong issuer", lambda: hs(claims(iss="https://evil.test"))),
        ("no exp", lambda: hs({k: v for k, v in claims().items() if k != "exp"})),
        ("no sub", lambda: hs({k: v for k, v in claims().items() if k != "sub"})),
        (
            "kid path, empty key",
            lambda: hmac_forge({"alg": "HS256", "kid": "../../../dev/null"}, claims(), b""),
        ),
        (
            "kid sql",
            lambda: hmac_forge({"alg": "HS256", "kid": "x' UNION SELECT 'k'--"}, claims(), b"k"),
        ),
        (
            "HS512 not pinned",
            lambda: hmac_forge({"alg": "HS512"}, claims(), SECRET.encode(), hashlib.sha512),
        ),
        ("garbage", lambda: "not.a.jwt"),
        ("bad topics claim", lambda: hs(claims(topics="workflow:*"))),
    ],
)
async def test_bad_tokens_are_refused_with_401(
    hs_server: RunningServer, name: str, make: Any
) -> None:
    token = make()
    assert await handshake_status(hs_server.ws_url, **bearer(token)) == 401, name
    async with httpx.AsyncClient(base_url=hs_server.url) as http:
        r = await http.get("/api/topics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name
    assert not hs_server.gateway.sessions


async def test_public_key_attacks_are_refused(
    rs_server: RunningServer, rsa_keys: tuple[rsa.RSAPrivateKey, Path]
) -> None:
    key, pem_path = rsa_keys
    payload = {"sub": "alice", "exp": int(time.time()) + 600}
    good = jwt.encode(payload, key, algorithm="RS256")
    async with websockets.connect(rs_server.ws_url, **bearer(good)) as ws:
        await send(ws, {"type": "ping", "id": 1})
        assert (await recv(ws))["type"] == "pong"
    # RS/HS confusion: HS256 signed with the server's own public key as the secret
    confused = hmac_forge({"alg": "HS256", "typ": "JWT"}, payload, pem_path.read_bytes())
    # the attacker's key, offered in the token itself (jwk) or by URL (jku, x5u)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    fetched: list[bytes] = []

    async def trap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fetched.append(await reader.read(1024))
        writer.close()

    trap_server = await asyncio.start_server(trap, "127.0.0.1", 0)
    trap_url = f"http://127.0.0.1:{trap_server.sockets[0].getsockname()[1]}/keys"
    try:
        forged = [
            confused,
            jwt.encode(payload, attacker, algorithm="RS256", headers={"jwk": attacker_jwk}),
            jwt.encode(payload, attacker, algorithm="RS256", headers={"jku": trap_url}),
            jwt.encode(payload, attacker, algorithm="RS256", headers={"x5u": trap_url}),
            jwt.encode(payload, attacker, algorithm="RS256", headers={"kid": "../../etc/passwd"}),
            jwt.encode(payload, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        ]
        for token in forged:
            assert await handshake_status(rs_server.ws_url, **bearer(token)) == 401
    finally:
        trap_server.close()
        await trap_server.wait_closed()
    assert fetched == []  # no header made the server fetch anything


# -- first-message authentication, refresh, expiry ----------------------------------------


async def test_first_message_auth(hs_server: RunningServer) -> None:
    async with websockets.connect(hs_server.ws_url) as ws:
        await send(ws, {"type": "subscribe", "topic": "workflow:1", "id": "early"})
        refused = await recv(ws)
        assert (refused["type"], refused["data"]["code"], refused["id"]) == (
            "error",
            "unauthorized",
            "early",
        )
        await send(ws, "ping")
        assert (await recv(ws))["data"]["code"] == "unauthorized"
        token = hs(claims(scope="publish", topics=["workflow:*"]))  # workflow:1 is nobody's
        await send(ws, {"type": "auth", "token": token, "id": "a"})
        done = await recv(ws)
        assert (done["type"], done["id"]) == ("authenticated", "a")
        assert done["data"]["subject"] == "alice" and done["data"]["scopes"] == ["publish"]
        assert (await subscribe(ws, "workflow:1"))["type"] == "subscribed"
    async with websockets.connect(hs_server.ws_url) as ws:
        await send(ws, {"type": "auth", "token": hs(claims(ttl=-10))})
        assert await close_code(ws) == CloseCode.UNAUTHORIZED
        assert "expired" in (ws.close_reason or "")


async def test_first_message_timeout_closes_with_4508(hs_server: RunningServer) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with websockets.connect(hs_server.ws_url) as ws:
        assert await close_code(ws) == CloseCode.AUTH_TIMEOUT
    assert 0.5 <= loop.time() - started < 0.5 + 2 * UNIT


async def test_refresh_extends_and_expiry_closes_with_4501(hs_server: RunningServer) -> None:
    short = hs(claims(ttl=2))
    async with (
        websockets.connect(hs_server.ws_url, **bearer(short)) as kept,
        websockets.connect(hs_server.ws_url, **bearer(short)) as lapsing,
    ):
        fresh = claims(ttl=3600)
        await send(kept, {"type": "auth:refresh", "token": hs(fresh), "id": 1})
        reply = await recv(kept)
        assert reply["type"] == "authenticated" and reply["data"]["expires_at"].startswith(
            time.strftime("%Y-%m-%dT", time.gmtime(fresh["exp"]))
        )
        # another subject's token, a bad token: refused, the connection stays
        await send(kept, {"type": "auth:refresh", "token": hs(claims(sub="bob")), "id": 2})
        assert (await recv(kept))["data"]["code"] == "forbidden"
        await send(kept, {"type": "auth:refresh", "token": "nope", "id": 3})
        assert (await recv(kept))["data"]["code"] == "unauthorized"
        assert await close_code(lapsing) == CloseCode.TOKEN_EXPIRED
        assert lapsing.close_reason == "token expired"
        # the same sweep looked at `kept`: still open
        await send(kept, {"type": "ping", "id": 4})
        assert (await recv(kept))["type"] == "pong"


async def test_python_client_passes_the_token_and_stops_on_expiry(
    hs_server: RunningServer,
) -> None:
    from agentcast.client import connect
    from agentcast.errors import ConnectionClosedError

    token = hs(claims(ttl=2, topics=["workflow:*"]))  # workflow:1 is nobody's: the claim
    async with connect(hs_server.url, token=token) as client:
        await client.ping()
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(10 * UNIT):
                async for _ in client.subscribe("workflow:1"):
                    pass
        assert info.value.code == CloseCode.TOKEN_EXPIRED
        assert client.connections == 1  # terminal: no reconnection
    async with connect(hs_server.url, token=hs(claims(ttl=2))) as client:
        reply = await client.refresh_token(hs(claims(ttl=3600)))
        assert reply["type"] == "authenticated"
        assert client.headers["Authorization"].startswith("Bearer ")


# -- tickets ------------------------------------------------------------------------------


async def test_ticket_opens_one_websocket(hs_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=hs_server.url) as http:
        assert (await http.post("/api/tickets")).status_code == 401
        granted = hs(claims(topics=["workflow:*"]))  # workflow:1 is nobody's: the claim grants it
        r = await http.post("/api/tickets", headers={"Authorization": f"Bearer {granted}"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["expires_in"] == 60
    url = f"{hs_server.ws_url}?ticket={answer['ticket']}"
    async with websockets.connect(url) as ws:
        assert (await subscribe(ws, "workflow:1"))["type"] == "subscribed"
        (session,) = hs_server.gateway.sessions.values()
        assert session.principal.subject == "alice"
    assert await handshake_status(url) == 401  # used up
    assert await handshake_status(f"{hs_server.ws_url}?ticket=made-up") == 401


async def test_expired_ticket_is_refused(hs_server: RunningServer) -> None:
    security = hs_server.gateway.feature(Security)
    assert security.tickets is not None
    now = [1000.0]
    security.tickets._clock = lambda: now[0]
    async with httpx.AsyncClient(base_url=hs_server.url) as http:
        r = await http.post("/api/tickets", headers={"Authorization": f"Bearer {hs()}"})
    ticket = r.json()["ticket"]
    now[0] += 60.0  # its whole lifetime
    assert await handshake_status(f"{hs_server.ws_url}?ticket={ticket}") == 401


# -- JWKS ---------------------------------------------------------------------------------


class JwksServer:
    """A real HTTP server on loopback serving a JWKS document; counts its requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        body = json.dumps({"keys": self.keys}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/.well-known/jwks.json"


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    served = JwksServer()
    served.server = await asyncio.start_server(served.handle, "127.0.0.1", 0)
    try:
        yield served
    finally:
        served.server.close()
        await served.server.wait_closed()


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_jwks_rotation_unknown_kid_and_refresh_limit(
    jwks: JwksServer, transport: str
) -> None:
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [jwk_of(k1, "k1")]
    running, task = await start_server(transport, jwt_jwks_url=jwks.url)
    try:
        payload = {"sub": "carol", "exp": int(time.time()) + 600}
        assert jwks.requests == 1  # fetched at start
        t1 = jwt.encode(payload, k1, algorithm="RS256", headers={"kid": "k1"})
        async with websockets.connect(running.ws_url, **bearer(t1)):
            pass
        assert jwks.requests == 1  # from the cache
        verifier = running.gateway.feature(Security).authenticator.verifier  # type: ignore[union-attr]
        assert verifier.jwks is not None
        verifier.jwks.min_refresh = 0.0  # rotation test: allow the refetch at once
        jwks.keys = [jwk_of(k1, "k1"), jwk_of(k2, "k2")]
        t2 = jwt.encode(payload, k2, algorithm="RS256", headers={"kid": "k2"})
        async with websockets.connect(running.ws_url, **bearer(t2)):
            pass
        assert jwks.requests == 2  # an unknown kid: fetched again, found
        verifier.jwks.min_refresh = 3600.0
        for i in range(20):  # random kids cannot make the server hammer the issuer
            bad = jwt.encode(payload, k2, algorithm="RS256", headers={"kid": f"k{i + 3}"})
            assert await handshake_status(running.ws_url, **bearer(bad)) == 401
        assert jwks.requests == 2
    finally:
        await stop_server(running, task)


async def test_jwks_unreachable_is_503() -> None:
    running, task = await start_server(
        "native", jwt_jwks_url="http://127.0.0.1:9/jwks.json", jwt_jwks_timeout=1
    )
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, key, algorithm="RS256")
        assert await handshake_status(running.ws_url, **bearer(token)) == 503
    finally:
        await stop_server(running, task)


# -- logs ---------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logs() -> Iterator[Collect]:
    names = ("uvicorn.error", "uvicorn.access", "agentcast.transport.ws")
    handler = Collect()
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(saved[name])


async def test_tokens_and_tickets_never_reach_the_logs(
    hs_server: RunningServer, logs: Collect
) -> None:
    token = hs()
    async with websockets.connect(f"{hs_server.ws_url}?token={token}") as ws:
        await send(ws, {"type": "ping", "id": 1})
        await recv(ws)
    async with httpx.AsyncClient(base_url=hs_server.url) as http:
        await http.get(f"/api/topics?token={token}")
        ticket = (
            await http.post("/api/tickets", headers={"Authorization": f"Bearer {token}"})
        ).json()["ticket"]
    async with websockets.connect(f"{hs_server.ws_url}?ticket={ticket}"):
        pass
    offered = ["agentcast.v1", f"bearer.{token}"]
    async with websockets.connect(hs_server.ws_url, subprotocols=offered):  # type: ignore[arg-type]
        pass
    text = "\n".join(logs.lines)
    assert logs.lines, "the loggers printed the requests"
    assert "token=[redacted]" in text
    assert token not in text and ticket not in text
    assert token.split(".")[2] not in text


async def test_refresh_with_fewer_rights_ends_those_subscriptions(hs_server: RunningServer) -> None:
    wide = hs(claims(topics=["workflow:*"]))
    async with websockets.connect(hs_server.ws_url, **bearer(wide)) as ws:
        assert (await subscribe(ws, "workflow:1"))["type"] == "subscribed"
        await send(ws, {"type": "auth:refresh", "token": hs(claims()), "id": "r"})
        frames = [await recv(ws), await recv(ws)]
        ended = next(f for f in frames if f["type"] == "unsubscribed")
        assert (ended["topic"], ended["data"]) == ("workflow:1", {"reason": "forbidden"})
        assert any(f["type"] == "authenticated" for f in frames)
        await hs_server.gateway.publish(
            "workflow:1", "node_status", {"node_id": "n", "status": "running"}
        )
        await send(ws, "ping")
        assert (await recv(ws))["type"] == "pong"  # no event of workflow:1 came before it
