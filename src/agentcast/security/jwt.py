"""JSON Web Tokens (PyJWT): verify a client's token, mint development tokens.

:class:`JwtVerifier` checks a token against keys and rules fixed by configuration, never
by the token: the accepted algorithms (``jwt_algorithms``), the key (an HS256 secret, a
PEM public key, or the issuer's JWKS), ``exp`` (required), ``nbf`` and ``iat`` when
present, ``aud`` and ``iss`` when configured, ``jwt_leeway`` seconds of clock skew.
Headers that try to choose the key (``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored; a
``kid`` only selects among the JWKS's own keys. The claims become a
:class:`~agentcast.policy.Principal` (:func:`principal_of_claims`).
"""

from __future__ import annotations

import functools
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agentcast.errors import ConfigError
from agentcast.policy import SCOPES, AuthenticationError, Principal
from agentcast.security.jwks import JwksKeys

if TYPE_CHECKING:
    from agentcast.settings import Settings

__all__ = ["JwtVerifier", "mint_token", "parse_duration", "principal_of_claims"]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
OKP_ALGORITHMS = frozenset({"EdDSA"})
PUBLIC_KEY_ALGORITHMS = RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS
_MAX_TOKEN_CHARS = 8192
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def principal_of_claims(claims: Mapping[str, Any], keep: Collection[str] = ()) -> Principal:
    """The principal a verified token names: ``sub`` (a non-empty string) is the subject,
    ``scope`` (space-separated) the scopes among :data:`~agentcast.policy.SCOPES` (others
    are ignored), ``topics`` (a list of topic patterns) the extra topics, ``exp`` the
    expiry. ``keep``: the claims copied into :attr:`~agentcast.policy.Principal.claims`
    (``jwt_claims``; ``*`` for all of them; none by default, since a copy of a token's
    claims costs ~700 bytes per connection and nothing in agentcast reads it). Raises
    :class:`~agentcast.policy.AuthenticationError` for malformed claims."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 200:
        raise AuthenticationError("invalid token: `sub` must be a non-empty string")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise AuthenticationError("invalid token: `scope` must be a space-separated string")
    topics = claims.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        raise AuthenticationError("invalid token: `topics` must be a list of topic patterns")
    expires = claims.get("exp")
    kept = _NO_CLAIMS
    if keep:
        kept = MappingProxyType(
            dict(claims) if "*" in keep else {k: claims[k] for k in keep if k in claims}
        )
    return Principal(
        subject=sys.intern(subject),  # one string per user, however many tokens it has
        claims=kept,
        scopes=_scopes(scope),
        topics=_topics(tuple(topics)),
        expires_at=float(expires) if isinstance(expires, int | float) else None,
    )


@functools.lru_cache(maxsize=256)
def _scopes(scope: str) -> frozenset[str]:
    """The known scopes of a ``scope`` claim; one shared set per distinct claim (a set is
    ~200 bytes, and 10,000 connections hold a handful of distinct ones)."""
    return frozenset(scope.split()) & SCOPES


@functools.lru_cache(maxsize=4096)
def _topics(topics: tuple[str, ...]) -> tuple[str, ...]:
    """One shared tuple per distinct ``topics`` claim (see :func:`_scopes`)."""
    return topics


class JwtVerifier:
    """Verifies tokens with a fixed key (``key``: secret bytes or a public key) or a
    JWKS (``jwks``), accepting only ``algorithms``.

    ``claims``: the claims kept on each principal (:func:`principal_of_claims`).

    **One principal per token.** A token verified once is remembered (at most
    ``cache_size`` tokens, least recently used first out) with its principal, until it
    expires (``exp`` + ``leeway``, when PyJWT would refuse it too) or ``cache_seconds``
    after it was verified, whichever comes first (so that a key removed from a JWKS stops
    being accepted within that time). Every connection opened with the same token (a
    user's tabs, a service's pool, a reconnection storm after a restart) then shares one
    :class:`~agentcast.policy.Principal` and skips the signature check. Only valid tokens
    are remembered (an invalid one is verified, and refused, every time), so the cache
    holds at most ``cache_size`` tokens the issuer signed.
    """

    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        key: Any = None,
        jwks: JwksKeys | None = None,
        audience: str = "",
        issuer: str = "",
        leeway: float = 0.0,
        claims: Collection[str] = (),
        cache_size: int = 1024,
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (key is None) == (jwks is None):
            raise ValueError("give exactly one of key and jwks")
        self.algorithms = sorted(set(algorithms))
        self.key = key
        self.jwks = jwks
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway
        required = ["exp", "sub"]
        if self.audience:
            required.append("aud")
        if self.issuer:
            required.append("iss")
        self._options: dict[str, Any] = {"require": required, "verify_aud": bool(audience)}
        self.claims = frozenset(claims)
        self.cache_size = cache_size
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        """Verified tokens: their principal and until when (wall clock) it may be reused."""

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier:
        """The verifier ``settings`` configure; raises :class:`ConfigError` when the key
        cannot be used (unreadable file, an algorithm that does not fit the key, …)."""
        s = settings
        pinned = set(s.jwt_algorithms)
        if "none" in {a.lower() for a in pinned}:
            raise ConfigError("jwt_algorithms: `none` is never accepted")
        unknown = pinned - HMAC_ALGORITHMS - PUBLIC_KEY_ALGORITHMS
        if unknown:
            raise ConfigError(f"jwt_algorithms: unknown algorithm(s) {sorted(unknown)}")
        common: dict[str, Any] = {
            "audience": s.jwt_audience,
            "issuer": s.jwt_issuer,
            "leeway": s.jwt_leeway,
            "claims": s.jwt_claims,
        }
        if s.jwt_secret is not None:
            algorithms = pinned or {"HS256"}
            if not algorithms <= HMAC_ALGORITHMS:
                raise ConfigError(
                    f"jwt_algorithms {sorted(algorithms)}: a jwt_secret verifies HS256, "
                    "HS384 or HS512 only (set jwt_public_key_file for public-key algorithms)"
                )
            secret = s.jwt_secret.get_secret_value().encode()
            needed = max(_HMAC_KEY_BYTES[a] for a in algorithms)
            if len(secret) < needed:
                raise ConfigError(
                    f"jwt_secret is {len(secret)} bytes long: {max(algorithms)} needs at least "
                    f"{needed} (RFC 7518 3.2)"
                )
            return cls(algorithms=algorithms, key=secret, **common)
        if s.jwt_public_key_file:
            key, fitting = _public_key(Path(s.jwt_public_key_file))
            algorithms = pinned or {min(fitting)}  # RS256 / ES256 / EdDSA
            if not algorithms <= fitting:
                raise ConfigError(
                    f"jwt_algorithms {sorted(algorithms)} do not fit the key in "
                    f"{s.jwt_public_key_file} (it verifies {sorted(fitting)})"
                )
            return cls(algorithms=algorithms, key=key, **common)
        if s.jwt_jwks_url:
            algorithms = pinned or {"RS256", "ES256"}
            if not algorithms <= PUBLIC_KEY_ALGORITHMS:
                raise ConfigError(f"jwt_algorithms {sorted(algorithms)}: a JWKS holds public keys")
            if not s.jwt_jwks_url.startswith(("https://", "http://")):
                raise ConfigError(f"jwt_jwks_url {s.jwt_jwks_url!r} is not an http(s) URL")
            jwks = JwksKeys(
                s.jwt_jwks_url,
                algorithms=algorithms,
                timeout=s.jwt_jwks_timeout,
                lifetime=s.jwt_jwks_cache,
            )
            return cls(
                algorithms=algorithms,
                jwks=jwks,
                cache_seconds=min(300.0, s.jwt_jwks_cache),
                **common,
            )
        raise ConfigError(
            "no JWT key configured: set jwt_secret, jwt_public_key_file or jwt_jwks_url"
        )

    def verify(self, token: str) -> Principal | Awaitable[Principal]:
        """The principal of a valid ``token``; raises
        :class:`~agentcast.policy.AuthenticationError` (401) otherwise. Synchronous except
        when the JWKS must be fetched first (an unknown ``kid``, an expired cache): then
        an awaitable."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthenticationError("invalid token: too long")
        cached = self._cache.get(token)
        if cached is not None:
            if self._clock() < cached[1]:
                self._cache.move_to_end(token)
                return cached[0]
            del self._cache[token]
        if self.jwks is None:
            return self._decode(token, self.key)
        kid = self._kid(token)
        key = self.jwks.cached(kid)
        if key is not None:
            return self._decode(token, key)
        return self._verify_fetching(token, kid)

    async def _verify_fetching(self, token: str, kid: str | None) -> Principal:
        assert self.jwks is not None
        return self._decode(token, await self.jwks.get(kid))

    @staticmethod
    def _kid(token: str) -> str | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        kid = header.get("kid")
        if kid is None:
            return None
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise AuthenticationError("invalid token: bad `kid`")
        return kid

    def _decode(self, token: str, key: Any) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("invalid token: expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("invalid token: not yet valid") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid token: {exc}") from None
        principal = principal_of_claims(claims, self.claims)
        self._remember(token, principal)
        return principal

    def _remember(self, token: str, principal: Principal) -> None:
        """Keep ``principal`` for ``token`` (see the class docstring)."""
        if self.cache_size <= 0:
            return
        until = self._clock() + self.cache_seconds
        if principal.expires_at is not None:
            until = min(until, principal.expires_at + self.leeway)
        cache = self._cache
        cache[token] = (principal, until)
        cache.move_to_end(token)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)


def _public_key(path: Path) -> tuple[Any, frozenset[str]]:
    """The public key in ``path`` and the algorithms it can verify."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"jwt_public_key_file {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(
            f"jwt_public_key_file {str(path)!r} is no PEM public key: {exc}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
        return key, frozenset({{256: "ES256", 384: "ES384", 521: "ES512"}.get(bits, "ES256")})
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, OKP_ALGORITHMS
    raise ConfigError(f"jwt_public_key_file {str(path)!r}: unsupported key type")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h`` or ``7d``; raises ``ValueError``."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    value = float(number) * (unit or 1)
    if not value > 0:
        raise ValueError(f"not a positive duration: {text!r}")
    return value


def mint_token(
    settings: Settings,
    subject: str,
    ttl: float,
    *,
    scopes: Iterable[str] = (),
    topics: Iterable[str] = (),
    now: float | None = None,
) -> str:
    """A development token signed with the configured ``jwt_secret``, valid ``ttl`` seconds,
    with ``aud`` and ``iss`` as configured. Raises :class:`ConfigError` without a secret
    (tokens for public-key setups come from their issuer)."""
    if settings.jwt_secret is None:
        raise ConfigError(
            "minting needs jwt_secret (AGENTCAST_JWT_SECRET or `jwt_secret` in --config): "
            "tokens for public keys and JWKS come from their issuer"
        )
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ConfigError(f"unknown scope(s) {sorted(unknown)}: use {sorted(SCOPES)}")
    algorithm = next((a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + round(ttl)}
    if scopes:
        claims["scope"] = " ".join(sorted(set(scopes)))
    if topics:
        claims["topics"] = list(topics)
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm=algorithm)
