"""Secret settings: which they are, and URLs shown without their password.

A setting typed :class:`pydantic.SecretStr` (``llm_api_key``, ``jwt_secret``, any added
later) is a secret: its repr and every settings dump show ``**********``; the code that
needs it calls ``.get_secret_value()`` at that one place. No HTTP answer, log line or
error message contains one (``tests/integration/test_secrets.py`` runs a server with a
marker in every such setting and searches its output and answers for it). URLs that may
carry a password (``broker_url``, ``store_url``) are shown through :func:`redact_url`.
"""

from __future__ import annotations

from typing import get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from agentcast.settings import Settings

__all__ = ["redact_url", "secret_settings"]


def secret_settings() -> list[str]:
    """The names of the settings typed ``SecretStr`` (or ``SecretStr | None``)."""
    return sorted(
        name
        for name, info in Settings.model_fields.items()
        if SecretStr in (info.annotation, *get_args(info.annotation))
    )


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``
    (``redis://:pw@host`` -> ``redis://:***@host``); other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
