"""The live-runs benchmark's peer: seed 000's connection manager fed by the same engine.

    .venv/bin/python benchmarks/runs_peer.py --port 8001

``peers/seed000_fastapi.py`` as is (FastAPI on uvicorn, ``{"action":"subscribe"}``, and
``for ws in connections: await ws.send_json(message)`` per event), plus
``GET /_runs/start?rate=R&events=K&nodes=N``: the same ``WorkflowTracker`` calls at the
same pace as agentcast's (``runs_common.drive``), each event wrapped in the same envelope
(``type``, ``topic``, ``seq``, ``timestamp``, ``data``) and broadcast with the manager. What
a team writes today: no validation, no run state, no snapshot for late joiners, no history,
no storage.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

from runs_common import StampingPublisher, Trigger, serve_trigger  # noqa: E402
from seed000_fastapi import app, websocket_manager  # noqa: E402

_seq = [0]


async def broadcast(topic: str, type: str, data: dict[str, Any]) -> None:
    _seq[0] += 1
    await websocket_manager.broadcast(
        topic,
        {
            "type": type,
            "topic": topic,
            "seq": _seq[0],
            "timestamp": datetime.fromtimestamp(time.time(), UTC).isoformat(
                timespec="microseconds"
            ),
            "data": data,
        },
    )


trigger = Trigger(StampingPublisher(broadcast))


serve_trigger(app, trigger, trigger.status)


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        access_log=False,
        log_level="warning",
        backlog=4096,
        lifespan="off",
    )
