"""The security package without sockets: settings, key configuration, claims, tickets,
durations, log redaction, and the session's credential decisions."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentcast.core.outbox import Outbox
from agentcast.core.session import Credentials, Session
from agentcast.errors import ConfigError
from agentcast.policy import AuthenticationError, ConnectionRequest, Principal
from agentcast.security import JwtVerifier, TicketStore, mint_token, token_of
from agentcast.security.credentials import RedactingFilter
from agentcast.security.jwt import parse_duration, principal_of_claims
from agentcast.settings import Settings, load_settings

SECRET = "u" * 32


def test_secret_settings_are_checked_and_never_printed() -> None:
    for value, message in [("", "blank"), (" \t", "blank"), ("x" * 31, "31 bytes")]:
        with pytest.raises(ConfigError, match=message):
            load_settings(jwt_secret=value)
    settings = load_settings(jwt_secret=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert settings.jwt_configured and not Settings().jwt_configured
    with pytest.raises(ConfigError, match="set one of"):
        load_settings(jwt_secret=SECRET, jwt_jwks_url="https://issuer.test/jwks")


def test_algorithms_are_pinned_by_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HS256, HS384 or HS512 only"):
        JwtVerifier.from_settings(Settings(jwt_secret=SECRET, jwt_algorithms=["RS256"]))
    with pytest.raises(ConfigError, match="never accepted"):
        JwtVerifier.from_settings(Settings(jwt_secret=SECRET, jwt_algorithms=["none"]))
    with pytest.raises(ConfigError, match="HS512 needs at least 64"):
        JwtVerifier.from_settings(Settings(jwt_secret=SECRET, jwt_algorithms=["HS512"]))
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "ec.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = JwtVerifier.from_settings(Settings(jwt_public_key_file=str(pem)))
    assert verifier.algorithms == ["ES256"]
    with pytest.raises(ConfigError, match="do not fit the key"):
        JwtVerifier.from_settings(Settings(jwt_public_key_file=str(pem), jwt_algorithms=["RS256"]))
    with pytest.raises(ConfigError, match="No such file"):
        JwtVerifier.from_settings(Settings(jwt_public_key_file=str(tmp_path / "missing.pem")))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="no PEM public key"):
        JwtVerifier.from_settings(Settings(jwt_public_key_file=str(tmp_path / "junk.pem")))
    token = jwt.encode({"sub": "e", "exp": time.time() + 60}, key, algorithm="ES256")
    principal = verifier.verify(token)
    assert isinstance(principal, Principal) and principal.subject == "e"


def test_claims_to_principal() -> None:
    p = principal_of_claims(
        {"sub": "alice", "scope": "publish control root", "topics": ["a:*"], "exp": 5}
    )
    assert (p.subject, p.scopes, p.topics, p.expires_at) == (
        "alice",
        frozenset({"publish", "control"}),
        ("a:*",),
        5.0,
    )
    assert dict(p.claims) == {}  # nothing kept unless asked for (jwt_claims)
    kept = principal_of_claims({"sub": "alice", "org": "o-1", "exp": 5}, keep=("org", "x"))
    assert dict(kept.claims) == {"org": "o-1"}
    every = principal_of_claims({"sub": "alice", "org": "o-1", "exp": 5}, keep=("*",))
    assert dict(every.claims) == {"sub": "alice", "org": "o-1", "exp": 5}
    for bad in (
        {"sub": ""},
        {"sub": 7},
        {"sub": "a", "scope": ["admin"]},
        {"sub": "a", "topics": [1]},
    ):
        with pytest.raises(AuthenticationError):
            principal_of_claims(bad)


def test_minted_tokens_verify() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_audience="aud", jwt_issuer="iss")
    token = mint_token(settings, "bob", 60, scopes=["admin"], topics=["x:*"])
    principal = JwtVerifier.from_settings(settings).verify(token)
    assert isinstance(principal, Principal)
    assert principal.admin and principal.topics == ("x:*",)
    with pytest.raises(ConfigError):
        mint_token(Settings(), "bob", 60)


def test_one_principal_per_token_until_it_expires() -> None:
    """Connections with the same token share one principal (memory per connection), for
    as long as the token is valid and at most ``cache_seconds``; invalid tokens are never
    remembered; the cache holds at most ``cache_size`` tokens."""
    now = [time.time()]  # the cache's clock; PyJWT checks `exp` with the real one
    verifier = JwtVerifier(
        algorithms=["HS256"],
        key=SECRET.encode(),
        leeway=5,
        cache_size=2,
        cache_seconds=60,
        clock=lambda: now[0],
    )

    def token(sub: str, ttl: float) -> str:
        return jwt.encode({"sub": sub, "exp": int(now[0] + ttl)}, SECRET, algorithm="HS256")

    alice = token("alice", 30)
    first = verifier.verify(alice)
    assert verifier.verify(alice) is first  # shared: no second copy, no second decode
    bob = token("bob", 3600)
    assert verifier.verify(bob) is verifier.verify(bob)
    now[0] += 34  # alice's exp + leeway is 35 s away: still valid (PyJWT agrees)
    assert verifier.verify(alice) is first
    now[0] += 2  # past exp + leeway (by the cache's clock): verified again, not reused
    assert verifier.verify(alice) is not first
    now[0] += 30  # bob verified 66 s ago: past cache_seconds, verified again
    again = verifier.verify(bob)
    assert again is not None and again.subject == "bob"
    # bounded: two tokens at most, least recently used out first
    carol, dave, erin = token("carol", 3600), token("dave", 3600), token("erin", 3600)
    c = verifier.verify(carol)
    verifier.verify(dave)
    verifier.verify(erin)
    assert len(verifier._cache) == 2 and carol not in verifier._cache
    assert verifier.verify(carol) is not c  # verified again after its eviction
    forged = jwt.encode({"sub": "eve", "exp": int(now[0] + 60)}, "x" * 32, algorithm="HS256")
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="Signature"):
            verifier.verify(forged)
    assert forged not in verifier._cache
    tampered = alice[:-2] + ("AA" if not alice.endswith("AA") else "BB")
    with pytest.raises(AuthenticationError):
        verifier.verify(tampered)


def test_jwt_claims_setting_keeps_claims() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_claims=["org"])
    token = jwt.encode(
        {"sub": "a", "org": "o-7", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    principal = JwtVerifier.from_settings(settings).verify(token)
    assert isinstance(principal, Principal) and dict(principal.claims) == {"org": "o-7"}
    principal = JwtVerifier.from_settings(Settings(jwt_secret=SECRET)).verify(token)
    assert isinstance(principal, Principal) and dict(principal.claims) == {}


def test_tickets_are_single_use_and_expire() -> None:
    now = [0.0]
    store = TicketStore(60.0, max_tickets=3, clock=lambda: now[0])
    alice = Principal(subject="alice")
    ticket = store.issue(alice)
    assert store.redeem(ticket) is alice
    with pytest.raises(AuthenticationError, match="already used"):
        store.redeem(ticket)
    late = store.issue(alice)
    now[0] = 60.0
    with pytest.raises(AuthenticationError, match="expired"):
        store.redeem(late)
    tickets = [store.issue(alice) for _ in range(5)]
    assert len(store) == 3  # bounded: the oldest are forgotten
    with pytest.raises(AuthenticationError):
        store.redeem(tickets[0])
    assert store.redeem(tickets[-1]) is alice


def test_where_tokens_are_found() -> None:
    def req(
        headers: dict[str, str] | None = None, query: dict[str, str] | None = None
    ) -> ConnectionRequest:
        return ConnectionRequest(path="/ws", query=query or {}, headers=headers or {})

    assert token_of(req({"authorization": "Bearer abc"})) == "abc"
    assert token_of(req({"authorization": "bearer  abc "})) == "abc"
    assert token_of(req({"authorization": "Basic abc"})) is None
    assert token_of(req({"sec-websocket-protocol": "agentcast.v1, bearer.x.y.z"})) == "x.y.z"
    assert token_of(req({"sec-websocket-protocol": "agentcast.v1"})) is None
    assert token_of(req(query={"token": "q"})) == "q"
    assert token_of(req()) is None


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "1h", "2d")] == [
        90,
        90,
        900,
        3600,
        172800,
    ]
    for bad in ("", "h", "-1h", "0", "soon"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_redaction() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1,
        '%s - "GET %s HTTP/1.1" %d', ("1.2.3.4", "/ws?a=1&token=eyJ.x.y&ticket=T0k", 101), None,
    )  # fmt: skip
    assert RedactingFilter().filter(record)
    assert record.getMessage() == (
        '1.2.3.4 - "GET /ws?a=1&token=[redacted]&ticket=[redacted] HTTP/1.1" 101'
    )


class _Writer:
    def write_frames(self, frames: list[bytes]) -> None: ...
    def send_ping(self) -> None: ...
    def hold_reading(self, seconds: float) -> None: ...
    def close(self, code: object, reason: str) -> None: ...


def test_session_credential_decisions() -> None:
    session = Session(1, Principal("a", expires_at=100.0), _Writer(), Outbox(4096, 16), 0.0)
    assert session.credentials(0.0, 99.0, 5.0) is Credentials.VALID
    assert session.credentials(0.0, 104.9, 5.0) is Credentials.VALID
    assert session.credentials(0.0, 105.0, 5.0) is Credentials.CLOSE_EXPIRED
    session.authenticated(Principal("a", expires_at=1000.0))
    assert session.credentials(0.0, 105.0, 5.0) is Credentials.VALID
    session.auth_deadline = 10.0
    assert session.authenticating
    assert session.credentials(9.9, 0.0, 0.0) is Credentials.PENDING
    assert session.credentials(10.0, 0.0, 0.0) is Credentials.CLOSE_AUTH_TIMEOUT
    session.authenticated(Principal("a"))
    assert not session.authenticating
    assert session.credentials(1e9, 1e12, 0.0) is Credentials.VALID
