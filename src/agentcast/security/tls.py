"""TLS: serve ``https://`` and ``wss://`` from a certificate chain and its private key.

uvicorn terminates TLS (settings ``tls_certfile``, ``tls_keyfile``; ``agentcast serve
--tls-cert … --tls-key …``) with Python's server defaults (TLS 1.2 at least). Both the
native WebSocket path and the ASGI routes run over it unchanged. :func:`check_tls` loads
the pair once at start so that a missing file, a file that is not PEM or a key that does
not match the certificate stops the server with one clear line.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from agentcast.errors import ConfigError
from agentcast.settings import Settings

__all__ = ["check_tls"]


def check_tls(settings: Settings) -> bool:
    """True when ``settings`` ask for TLS and its files load; False without TLS; raises
    :class:`~agentcast.errors.ConfigError` naming the file and the reason otherwise."""
    if not settings.tls_certfile:
        return False
    for path in (settings.tls_certfile, settings.tls_keyfile):
        if not Path(path).is_file():
            raise ConfigError(f"TLS: {path!r} does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"TLS: cannot load certificate {settings.tls_certfile!r} with key "
            f"{settings.tls_keyfile!r}: {exc}"
        ) from None
    return True
