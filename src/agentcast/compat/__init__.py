"""Drop-in facades for the seeds' own APIs: migrate by changing an import.

* ``seed000``: ``websocket_manager.connect / disconnect / broadcast`` (agent-team executions).
* ``seed004``: ``ws_manager``, ``WebSocketHandler.create_*_message``, ``WorkflowEngine``.

Under the facades events go through the hub: they gain sequence numbers, history,
resume, snapshots and slow-consumer protection. Bind a facade to your gateway with
``bind(gateway)``; unbound, it creates and starts a default in-memory gateway on first use.
"""
