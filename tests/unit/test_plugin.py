"""Installing features: once per gateway, one gateway per feature."""

from __future__ import annotations

import pytest

from agentcast.chat.service import Chat
from agentcast.gateway import Gateway
from agentcast.monitoring import Monitoring
from agentcast.plugin import Feature
from agentcast.runs.registry import Runs
from agentcast.runs.replay import Replays
from agentcast.settings import Settings


@pytest.mark.parametrize("make", [Runs, Replays, Monitoring, Chat], ids=lambda m: m.__name__)
def test_a_feature_serves_one_gateway(make: type[Feature]) -> None:
    """A feature keeps per-gateway state (its observer, its gateway for publishing):
    installing the same instance into a second gateway is refused, not silently
    re-pointed at the second one while the first keeps feeding it."""
    feature = make()
    first = Gateway(Settings(store_url=""), features=[feature])
    with pytest.raises(RuntimeError, match="another gateway"):
        Gateway(Settings(store_url=""), features=[feature])
    assert first.feature(make) is feature


def test_a_feature_name_is_installed_once() -> None:
    with pytest.raises(ValueError, match="installed already"):
        Gateway(Settings(store_url=""), features=[Runs(), Runs()])
