"""The assembly: which features a gateway gets by default.

The gateway knows no feature (:mod:`agentcast.plugin`); this module is where the CLI,
:func:`agentcast.transports.http.create_app` and the seeds' facades pick the default set:
the store (``store_url``), live runs, replay, seed 001's monitoring and chat, security,
``/metrics`` and the dashboard.

::

    gateway = create_gateway(Settings(store_url=""))          # everything, no run store
    gateway = Gateway(settings, features=[Runs(), Monitoring()])  # only what you want
"""

from __future__ import annotations

from typing import Any

from agentcast.chat.service import Chat
from agentcast.dashboard.feature import Dashboard
from agentcast.gateway import Gateway
from agentcast.metrics import Metrics
from agentcast.monitoring import Monitoring
from agentcast.plugin import Feature
from agentcast.runs.registry import Runs
from agentcast.runs.replay import Replays
from agentcast.security.feature import Security, application_policy
from agentcast.settings import Settings
from agentcast.storage import create_store
from agentcast.storage.feature import Storage

__all__ = ["create_gateway", "default_features"]


def default_features(settings: Settings) -> list[Feature]:
    """Storage (unless ``store_url`` is empty), runs, replay, monitoring and chat, sharing
    one store; security (JWT authentication when the ``jwt_*`` settings configure it);
    ``/metrics``; the dashboard at ``/`` (unless ``settings.dashboard`` is false)."""
    store = create_store(settings.store_url)
    features: list[Feature] = [Storage(store)] if store is not None else []
    features += [Runs(store), Replays(), Monitoring(), Chat(store)]
    features.append(Security.from_settings(settings))
    features.append(Metrics())
    if settings.dashboard:
        features.append(Dashboard())
    return features


def create_gateway(settings: Settings | None = None, **options: Any) -> Gateway:
    """A :class:`Gateway` with :func:`default_features`; ``options`` go to the gateway
    (``broker``, ``authenticator``, ``authorizer``), after the application's policy that
    ``settings.auth`` names (``--auth package.module:factory``; the claims it reads are
    added to ``jwt_claims``)."""
    settings = settings or Settings()
    policy = application_policy(settings)
    wanted = policy.pop("jwt_claims", ())
    if set(wanted) - set(settings.jwt_claims):
        claims = sorted({*settings.jwt_claims, *wanted})
        settings = settings.model_copy(update={"jwt_claims": claims})
    options = {**policy, **options}
    return Gateway(settings, features=default_features(settings), **options)
