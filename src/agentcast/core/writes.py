"""When to write dirty outboxes before the loop iteration ends: a decision on the loop's load.

Within one event-loop iteration the gateway writes a dirty outbox early, before the
iteration's final flush, once ``group`` outboxes are dirty (up to a budget per iteration;
see ``gateway.py``). The group trades latency for CPU:

* **at once** (``group`` 1): each event leaves with its own write as it is published.
  Nothing waits for the events published after it (W5, paced unicast: p99 0.24 vs 0.33 ms
  with groups of 8), but a write per frame costs a client wake-up per frame: +30 % server
  CPU at 20,000 events/s, and with the core saturated that extra CPU is queueing delay
  for everything else (the chat benchmark's p99 at 400 × 50 was 3× worse).
* **in groups** (8): a frame waits for up to 7 more events' publish work (~0.1 ms), the
  writes go back to back.

:class:`WriteGrouping` picks between them from how busy the process is: writing at once
while it used less than ``at_once_below`` of a core over the last ``window`` seconds, in
groups once it used more than ``grouped_above``; in between it keeps its choice
(hysteresis: the extra CPU that writing at once costs must not flip the choice back at the
next window). It starts grouped; an idle spell counts as an idle window.
The caller feeds it the loop's clock and the process's CPU time; this module reads
neither (``core/`` does no I/O and reads no clock).
"""

from __future__ import annotations

__all__ = ["AT_ONCE", "GROUPED", "WriteGrouping"]

AT_ONCE = 1
"""Group size: write each dirty outbox at once."""
GROUPED = 8
"""Group size: write when this many outboxes are dirty (else at the iteration's end)."""


class WriteGrouping:
    """The early-write group size, from the process's CPU use (see the module docstring)."""

    __slots__ = (
        "_cpu0",
        "_t0",
        "at_once_below",
        "group",
        "grouped_above",
        "next_at",
        "window",
    )

    def __init__(
        self,
        *,
        window: float = 0.1,
        at_once_below: float = 0.6,
        grouped_above: float = 0.85,
    ) -> None:
        if not 0 < at_once_below <= grouped_above:
            raise ValueError("need 0 < at_once_below <= grouped_above")
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.at_once_below = at_once_below
        self.grouped_above = grouped_above
        self.group = GROUPED
        """The group size to use now."""
        self.next_at = 0.0
        """Loop time from which :meth:`observe` decides again (callers skip it before)."""
        self._t0: float | None = None
        self._cpu0 = 0.0

    def observe(self, now: float, cpu: float) -> int:
        """Feed the loop time ``now`` and the process CPU time ``cpu`` (seconds, both
        monotonic); returns the group size. Decides once per ``window``: the share of a
        core used since the previous decision against the two thresholds."""
        t0 = self._t0
        if t0 is None or now < t0:  # the first call, or a clock that went back: restart
            self._t0, self._cpu0, self.next_at = now, cpu, now + self.window
            return self.group
        if now < self.next_at:
            return self.group
        busy = (cpu - self._cpu0) / (now - t0)
        if busy < self.at_once_below:
            self.group = AT_ONCE
        elif busy > self.grouped_above:
            self.group = GROUPED
        self._t0, self._cpu0, self.next_at = now, cpu, now + self.window
        return self.group
