"""A service's `rollout:` block (routes.yaml) as the engine's RolloutSpec."""

from __future__ import annotations

from ..routing.schema import Rollout as RolloutBlock
from .analysis import Criteria
from .machine import RolloutSpec

DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_DURATION_S = 120.0


def rollout_spec(block: RolloutBlock) -> RolloutSpec:
    analysis = block.analysis
    return RolloutSpec(
        strategy=block.strategy,
        steps=tuple(block.steps) if block.steps else DEFAULT_STEPS,
        interval_s=block.interval,
        duration_s=block.duration if block.duration is not None else DEFAULT_DURATION_S,
        criteria=Criteria(
            min_requests=analysis.minRequests,
            success_rate=analysis.successRate,
            max_latency_p99_ms=analysis.maxLatencyP99 * 1000 if analysis.maxLatencyP99 is not None else None,
        ),
        failure_limit=analysis.failureLimit,
        auto_promote=block.autoPromote,
    )
