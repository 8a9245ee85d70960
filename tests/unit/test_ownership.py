"""The default authorizer's pure parts: the ``topics`` claim patterns and their SQL form,
and the wiring of the default (no sockets)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from agentcast.gateway import Gateway
from agentcast.policy import OpenPolicy, Principal
from agentcast.security.ownership import OwnershipPolicy, pattern_like, topic_granted


def granted(topic: str, *patterns: str) -> bool:
    return topic_granted(Principal("u", topics=patterns), topic)


def test_patterns_star_question_rest_literal() -> None:
    assert granted("workflow:team-42:a", "workflow:team-42:*")
    assert granted("workflow:team-42:a:b", "workflow:team-42:*")
    assert granted("workflow:team-42:", "workflow:team-42:*")
    assert not granted("workflow:team-42", "workflow:team-42:*")
    assert not granted("workflow:TEAM-42:a", "workflow:team-42:*")
    assert not granted("xworkflow:team-42:a", "workflow:team-42:*")
    assert granted("task:7", "task:?") and not granted("task:77", "task:?")
    assert granted("a[b]", "a[b]") and not granted("ab", "a[b]")
    assert granted("a.b", "a.b") and not granted("axb", "a.b")
    assert not granted("anything")  # no claim, nothing granted
    assert granted("news", "x", "news")


def like_to_regex(like: str) -> str:
    out, chars = [], iter(like)
    for c in chars:
        if c == "\\":
            out.append(re.escape(next(chars)))
        else:
            out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
    return "".join(out)


@given(st.text(alphabet="ab*?%_\\[]:", max_size=8), st.text(alphabet="ab*?%_\\[]:", max_size=8))
def test_sql_form_matches_the_same_topics(pattern: str, topic: str) -> None:
    as_sql = re.fullmatch(like_to_regex(pattern_like(pattern)), topic, flags=re.S)
    assert (as_sql is not None) == granted(topic, pattern)


def test_default_authorizer_follows_the_authenticator() -> None:
    gateway = Gateway()
    assert isinstance(gateway.authorizer, OpenPolicy)  # open dev mode

    class Auth:
        def authenticate(self, request: object) -> Principal:
            return Principal("u")

    gateway.authenticator = Auth()
    assert isinstance(gateway.authorizer, OwnershipPolicy)
    assert gateway.authorizer is gateway.authorizer
    explicit = OpenPolicy()
    gateway.authorizer = explicit
    assert gateway.authorizer is explicit
    assert isinstance(Gateway(authenticator=Auth()).authorizer, OwnershipPolicy)


def test_scopes() -> None:
    policy = OwnershipPolicy(Gateway())
    user, producer = Principal("u"), Principal("p", scopes=frozenset({"publish"}))
    admin = Principal("a", scopes=frozenset({"admin"}))
    assert not policy.can_publish(user, "t") and policy.can_publish(producer, "t")
    assert policy.can_publish(admin, "t") and policy.can_control(admin, "t")
    assert not policy.can_control(producer, "t")
