"""agentcast for the live-runs benchmark: ``agentcast serve`` plus an engine driving one run.

    AGENTCAST_STORE_URL= .venv/bin/python benchmarks/runs_server.py --port 8000

The server is assembled as ``agentcast serve`` assembles it (``load_settings`` with the
environment, ``Gateway``, ``create_app``, ``build_server``; src/ untouched); the app gets
one more route, ``GET /_runs/start?rate=R&events=K&nodes=N``, which starts the engine of
``runs_common.drive`` in this process: a real ``WorkflowTracker`` publishing through
``Gateway.publish`` (validated against seed 004's models, folded into the run state,
recorded when a store is configured, fanned out to ``workflow:bench``'s subscribers).
``GET /_runs/status`` tells how far it got.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from agentcast.app import create_gateway
from agentcast.runs.registry import Runs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runs_common import StampingPublisher, Trigger, serve_trigger


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args()

    from agentcast.settings import load_settings
    from agentcast.transports.http import create_app
    from agentcast.transports.server import build_server

    settings = load_settings(None, host=args.host, port=args.port, log_level=args.log_level)
    gateway = create_gateway(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s: %(name)s %(message)s"
    )
    logging.getLogger("agentcast.transport.ws").setLevel(logging.WARNING)
    app = create_app(gateway)
    # count the writes (one per dirty connection per flush) to report frames per write
    flush, hub, writes = gateway._flush, gateway.hub, [0]

    def counting_flush() -> None:
        writes[0] += len(hub.dirty)
        flush()

    gateway._flush = counting_flush  # type: ignore[method-assign]
    trigger = Trigger(StampingPublisher(gateway.publish, gateway.feature(Runs).renew))

    def status() -> dict[str, Any]:
        return {
            **trigger.status(),
            "store": settings.store_url,
            "flushes": gateway.stats.flushes,
            "frames": gateway.stats.frames_written,
            "writes": writes[0],
            "recorded": gateway.feature(Runs).recorder.written
            if gateway.feature(Runs).recorder
            else None,
            "pending": len(gateway.feature(Runs).recorder.pending)
            if gateway.feature(Runs).recorder
            else None,
        }

    serve_trigger(app, trigger, status)

    print(f"runs_server on {args.host}:{args.port}, store {settings.store_url!r}", flush=True)
    build_server(gateway, app).run()


if __name__ == "__main__":
    main()
