"""Live runs: agent-team executions (seed 000) and workflow graph runs (seed 004).

* ``vocabulary.py``: the seeds' event types as typed models, validated on publish.
* ``state.py``: folding a run's events into its current state (for snapshots).
"""
