"""Adapters between the network and the gateway.

* ``native.py``: the fast path, a uvicorn ``ws`` protocol class (``/ws``).
* ``asgi.py``: the same protocol as an ASGI WebSocket route, for any FastAPI/Starlette app.
* ``http.py``: the HTTP API (publish, history, topics, health) as a FastAPI router.
* ``server.py``: one port for both, on uvicorn, with graceful shutdown.
"""
