"""The Origin allow-list's rules, without sockets (the socket tests: test_origins.py)."""

from __future__ import annotations

import pytest

from agentcast.policy import AuthenticationError, ConnectionRequest
from agentcast.security.origin import OriginPolicy, normalize_origin, parse_origin_setting

POLICY = OriginPolicy(["http://localhost:3000", "https://app.example.com"])
HOST = "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("http://localhost:3000", "http://localhost:3000"),
        ("HTTP://LocalHost:3000", "http://localhost:3000"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://app.example.com:80", "http://app.example.com"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("chrome-extension://abcdef", "chrome-extension://abcdef"),
        ("null", None),
        ("http://localhost:3000/", None),
        ("http://localhost:3000.evil.com", None),
        ("http://evil.com#localhost:3000", None),
        ("http://user@localhost:3000", None),
        ("http://localhost:99999", None),
        ("http://localhost:0", None),
        ("localhost:3000", None),
        ("", None),
        ("http://", None),
        (" http://localhost:3000", None),
    ],
)
def test_normalize_origin(text: str, normal: str | None) -> None:
    assert normalize_origin(text) == normal


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3000",
        "HTTP://LOCALHOST:3000",  # browsers lower-case; a client that does not is the same
        "https://app.example.com",
        "https://app.example.com:443",
    ],
)
def test_listed_origins_are_allowed(origin: str) -> None:
    assert POLICY.allows(origin, HOST)


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "http://evil.example",
        "http://localhost:3000.evil.com",
        "http://evil.com#localhost:3000",
        "http://evil.com/?http://localhost:3000",
        "http://localhost:3000@evil.com",
        "http://localhost:3001",
        "https://localhost:3000",  # another scheme is another origin
        "http://app.example.com",
        "https://evil-app.example.com",
        "https://app.example.com.evil.com",
        "https://sub.app.example.com",
        "http://localhost",
        "",
        "http://localhost:3000, http://evil.example",
    ],
)
def test_other_origins_are_refused(origin: str) -> None:
    assert not POLICY.allows(origin, HOST)


def test_no_origin_is_allowed() -> None:
    assert POLICY.allows(None, HOST)
    assert OriginPolicy().allows(None, None)


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://127.0.0.1:8000", "127.0.0.1:8000", True),  # scheme not compared
        ("http://Gateway.Example:8000", "gateway.example:8000", True),
        ("https://gateway.example", "gateway.example", True),
        ("https://gateway.example", "gateway.example:443", True),
        ("http://gateway.example", "gateway.example:80", True),
        ("https://gateway.example", "gateway.example:80", False),
        ("http://127.0.0.1:8001", "127.0.0.1:8000", False),
        ("http://127.0.0.1", "127.0.0.1:8000", False),
        ("http://localhost:8000", "127.0.0.1:8000", False),  # names are not resolved
        ("http://127.0.0.1:8000", None, False),
        ("http://127.0.0.1:8000", "127.0.0.1:8000, evil", False),
        ("null", "null", False),
        ("http://[::1]:8000", "[::1]:8000", True),
    ],
)
def test_same_origin(origin: str, host: str | None, same: bool) -> None:
    assert OriginPolicy().allows(origin, host) is same


def test_check_raises_403_with_the_origin() -> None:
    request = ConnectionRequest("/ws", {}, {"origin": "http://evil.example", "host": HOST})
    with pytest.raises(AuthenticationError, match=r"evil\.example") as info:
        OriginPolicy().check(request)
    assert info.value.status == 403
    OriginPolicy().check(ConnectionRequest("/ws", {}, {"host": HOST}))  # no Origin: fine
    long = "http://" + "a" * 500 + ".example"
    with pytest.raises(AuthenticationError) as info:
        OriginPolicy().check(ConnectionRequest("/ws", {}, {"origin": long}))
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("*", "wildcards"),
        ("https://*.example.com", "wildcards"),
        ("null", "never allowed"),
        ("http://localhost:3000/", "has no path"),
        ("http://localhost:3000/app", "has no path"),
        ("localhost:3000", "not an origin"),
        ("http://localhost:3000.evil.com", "not an origin"),
    ],
)
def test_setting_entries_that_are_not_origins_are_refused(entry: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_origin_setting(entry)
    assert parse_origin_setting(" HTTPS://App.Example.com:443 ") == "https://app.example.com"
