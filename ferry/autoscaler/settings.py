"""A revision's template -> the autoscaler's Settings, the way Knative resolves a PodAutoscaler's annotations.

The routes file writes Knative's annotation units (percentages, durations); Settings holds what the decision
uses (fractions, seconds). The schema (ferry.routing.schema.Scale) has already checked every range, so every
valid template converts without error.
"""

from __future__ import annotations

from ..routing.schema import Template
from .decision import Settings

__all__ = ["settings_for"]


def settings_for(template: Template) -> Settings:
    """The autoscaling settings of a revision: its scale block, and its concurrency for the target.

    Knative's ResolveMetricTarget: with the concurrency metric, a target above the revision's
    containerConcurrency (`concurrency`, when not 0 = unlimited) is capped at it, since no instance
    can carry more than that at once.
    """
    scale = template.scale
    target = scale.target  # always filled in by the schema (100 or 200 by metric); None only if built unvalidated
    if scale.metric == "concurrency" and template.concurrency > 0:
        target = min(target if target is not None else 100.0, float(template.concurrency))
    return Settings(
        metric=scale.metric,
        target=target,
        utilization=scale.utilization / 100,
        stable_window=int(scale.stableWindow),
        panic_window_percent=scale.panicWindowPercent,
        panic_threshold=scale.panicThreshold / 100,
        max_scale_up_rate=scale.maxScaleUpRate,
        max_scale_down_rate=scale.maxScaleDownRate,
        activation_scale=scale.activation,
        scale_down_delay=scale.scaleDownDelay,
        target_burst_capacity=scale.burstCapacity,
        min_scale=scale.min,
        max_scale=scale.max,
        initial_scale=scale.initial,
        scale_to_zero_grace=scale.zeroGracePeriod,
    )
