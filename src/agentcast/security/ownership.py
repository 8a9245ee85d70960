"""Who may read, write and control what: the default authorizer once authentication is on.

A gateway with an authenticator and no explicit authorizer uses :class:`OwnershipPolicy`
(``Gateway.authorizer``; open dev mode keeps :class:`~agentcast.policy.OpenPolicy`, where
everything is allowed). Its rules:

* **read** (subscribe, replay, history, HTTP reads): ``admin`` reads everything; anyone
  reads the topics their ``topics`` claim grants (:func:`topic_granted`); otherwise only
  topics they **own**. Ownership is recorded by the features that create topics: each
  registers an owner lookup for its prefixes in ``gateway.owner_lookups`` (runs:
  ``workflow:`` and ``execution:``; chat: ``chat:``). A topic no lookup knows, and a topic
  that belongs to nobody (made by the server itself, such as the demo's runs,
  ``monitoring``, ``task:*``), is readable by ``admin`` and the ``topics`` claim only. An
  unknown topic and somebody else's are refused alike: the refusal says nothing about
  whether the topic exists.
* **publish** needs the ``publish`` scope (``admin`` implies it). Topics in
  ``gateway.server_prefixes`` (``chat:``) are refused to every client before the
  authorizer is asked.
* **control** (run control, execute) needs the ``control`` scope; the runs feature also
  requires that the principal may read the run (:meth:`OwnershipPolicy.can_subscribe`).

Every answer is per command or request, never per delivered event. The ``topics`` claim
patterns use ``*`` (any characters, ``:`` included) and ``?`` (one character); every other
character, ``[`` included, is literal (unlike :mod:`fnmatch`), so that a store can apply the
same pattern in SQL (:func:`pattern_like`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from agentcast.policy import Principal, resolve

if TYPE_CHECKING:
    from agentcast.gateway import Gateway

__all__ = [
    "Owner",
    "OwnerLookup",
    "OwnershipPolicy",
    "pattern_like",
    "topic_granted",
]


@dataclass(frozen=True, slots=True)
class Owner:
    """A known topic's owner: a principal's subject, or None when it belongs to nobody
    (the server made it)."""

    subject: str | None


OwnerLookup = Callable[[str], "Awaitable[Owner | None] | Owner | None"]
"""``lookup(topic)``: the topic's :class:`Owner`, or None when the topic is unknown."""


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.S)


def topic_granted(principal: Principal, topic: str) -> bool:
    """True when one of ``principal.topics`` matches ``topic`` (``*``, ``?``; the rest
    literal, case-sensitive)."""
    return any(_compiled(p).fullmatch(topic) is not None for p in principal.topics)


def pattern_like(pattern: str) -> str:
    """A ``topics`` claim pattern as a SQL ``LIKE`` pattern with ``\\`` as the escape
    character (matches exactly what :func:`topic_granted` matches, on a case-sensitive
    ``LIKE``)."""
    out = []
    for c in pattern:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


async def owner_of(gateway: Gateway, topic: str) -> Owner | None:
    """The owner the lookup of ``topic``'s prefix reports, None when there is no lookup
    or the topic is unknown."""
    best, best_len = None, -1
    for prefix, lookup in gateway.owner_lookups.items():
        if len(prefix) > best_len and topic.startswith(prefix):
            best, best_len = lookup, len(prefix)
    if best is None:
        return None
    return await resolve(best(topic))


class OwnershipPolicy:
    """The default authorizer with authentication on (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def can_subscribe(self, principal: Principal, topic: str) -> bool:
        """``admin``, the ``topics`` claim, or the topic's recorded owner."""
        if principal.admin or topic_granted(principal, topic):
            return True
        owner = await owner_of(self.gateway, topic)
        if owner is None or owner.subject is None:
            return False
        return owner.subject == principal.subject

    def can_publish(self, principal: Principal, topic: str) -> bool:
        """The ``publish`` scope (or ``admin``)."""
        return principal.has_scope("publish")

    def can_control(self, principal: Principal, topic: str) -> bool:
        """The ``control`` scope (or ``admin``); the runs feature checks the run is
        readable too."""
        return principal.has_scope("control")
