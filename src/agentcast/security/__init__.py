"""Authentication: JSON Web Tokens, where clients put them, tickets, refresh.

* :class:`JwtVerifier` checks tokens (PyJWT) with keys and rules fixed by configuration;
* :class:`TokenAuthenticator` / :class:`JwtAuthenticator` find a request's credentials
  (``Authorization: Bearer``, a ``bearer.<token>`` subprotocol, ``?token=``, ``?ticket=``);
* :class:`TicketStore` issues single-use WebSocket tickets;
* :class:`Security` is the feature wiring them into a gateway, with the ``auth`` and
  ``auth:refresh`` commands and ``POST /api/tickets``.

See ``docs/security.md``.
"""

from agentcast.security.authenticator import JwtAuthenticator, TokenAuthenticator
from agentcast.security.credentials import SUBPROTOCOL, select_subprotocol, token_of
from agentcast.security.feature import Security, application_policy
from agentcast.security.jwks import JwksKeys
from agentcast.security.jwt import JwtVerifier, mint_token, principal_of_claims
from agentcast.security.tickets import TicketStore

__all__ = [
    "SUBPROTOCOL",
    "JwksKeys",
    "JwtAuthenticator",
    "JwtVerifier",
    "Security",
    "TicketStore",
    "TokenAuthenticator",
    "application_policy",
    "mint_token",
    "principal_of_claims",
    "select_subprotocol",
    "token_of",
]
