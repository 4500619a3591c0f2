"""When to ask ferry to wake a revision: once per wake-up, never a thundering herd.

Knative's activator pokes the autoscaler as soon as a request arrives for a revision at zero, so 0 -> 1
does not wait for the next autoscaler tick. A burst of 1,000 requests must still be one poke, not 1,000.
If that poke was lost (or the start failed), requests would wait forever, so while requests are still
waiting with no instance, the poke repeats every REPOKE_INTERVAL_S.
"""

from __future__ import annotations

REPOKE_INTERVAL_S = 2.0


def poke_due(last_poke: float | None, now: float, *, has_endpoints: bool, waiting: int,
             repoke_interval_s: float = REPOKE_INTERVAL_S) -> bool:
    """True when a poke should be sent now.

    `last_poke` is when the last poke was sent in this wake-up (None: none since the revision last had
    endpoints); `waiting` counts the requests held for the revision, including the one arriving now."""
    if has_endpoints or waiting <= 0:
        return False
    return last_poke is None or now - last_poke >= repoke_interval_s
