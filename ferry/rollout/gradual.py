"""Knative's gradual rollout arithmetic (pkg/reconciler/route/traffic/rollout.go, computeProperties).

Knative first moves 1% to the new revision and waits until it is ready. How long that took is the
smallest step it will ever take: stepping faster than the revision can become ready is pointless. The
rest of the duration is cut into equal steps of at least that length, and at most one step per
remaining percent.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class GradualPlan(NamedTuple):
    step_size: int
    """Percent added to the candidate at every step."""
    step_duration_s: float
    """Seconds between steps, truncated to whole nanoseconds as Knative stores it (int64 ns)."""
    steps: float
    """Knative's numSteps: a float64 there too, fractional when the time does not divide evenly
    (e.g. 7 s left at 3 s a step: 2.33 steps of round(99 / 2.33) = 42%, 3 s apart)."""


def gradual_steps(percent: int, duration_s: float, ready_after_s: float) -> GradualPlan:
    """The step size and interval for moving the remaining `percent - 1` percent over `duration_s`,
    given that the first 1% became ready after `ready_after_s` seconds."""
    if not 2 <= percent <= 100:
        raise ValueError(f"a gradual rollout moves 2..100 percent, got {percent}")
    if not math.isfinite(duration_s) or duration_s < 0 or not math.isfinite(ready_after_s):
        raise ValueError(f"duration and readiness time must be finite, got {duration_s}, {ready_after_s}")
    min_step = max(1.0, math.ceil(ready_after_s))
    # The first 1% already used min_step; if that ate the whole duration, do the rest in one 1 s step.
    duration = max(1.0, duration_s - min_step)
    steps = min(max(1.0, duration / min_step), float(percent - 1))
    step_size = _go_round((percent - 1) / steps)
    step_duration_ns = int(duration / steps * 1e9)
    return GradualPlan(step_size=step_size, step_duration_s=step_duration_ns / 1e9, steps=steps)


def _go_round(x: float) -> int:
    """Go's math.Round: halves away from zero (Python's round() would take 16.5 to 16, Go to 17)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))
