"""The KPA decision: how many instances a revision wants, ported from Knative's autoscaler.

Two layers, split the way Knative splits them:

* `decide` is Knative's `autoscaler.Scale` (pkg/autoscaler/scaling/autoscaler.go): from the
  stable- and panic-window averages of the revision's total load it computes the wanted scale
  and the excess burst capacity. It knows nothing about min/max scale; Knative does not apply
  them there either.
* `reconcile_scale` is the part of the KPA reconciler (pkg/reconciler/autoscaling/kpa/scaler.go)
  that turns that want into the scale actually applied: min/max bounds, initial scale, and the
  scale-to-zero grace period.

Both are pure: time and every observation are arguments, the decider's memory (panic mode and
the scale-down-delay window) is an immutable `DeciderState` passed in and returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

from ..routing.fields import (
    TARGET_MIN,  # the smallest per-instance target (Knative's TargetMin)
)

TICK_INTERVAL = 2.0
"""Seconds between decisions in Knative; the scale-down-delay window has one slot per tick."""

_DEFAULT_TARGET = {"concurrency": 100.0, "rps": 200.0}


@dataclass(frozen=True)
class Settings:
    """A revision's autoscaling knobs, with Knative's defaults and validation ranges."""

    metric: Literal["concurrency", "rps"] = "concurrency"
    target: float | None = None
    """Per-instance load the revision is sized for (Knative's `target` annotation, the 'total');
    None means the metric's default, 100 concurrent requests or 200 requests per second."""
    utilization: float = 0.7
    stable_window: int = 60
    panic_window_percent: float = 10.0
    panic_threshold: float = 2.0
    """Panic when the panic window asks for this many times the ready instances (200 %)."""
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    activation_scale: int = 1
    scale_down_delay: float = 0.0
    target_burst_capacity: float = 211.0
    """Spare load to keep absorbable without the activator; 0 never needs it, -1 always keeps it."""
    min_scale: int = 0
    max_scale: int = 0
    """0 means unbounded."""
    initial_scale: int = 1
    scale_to_zero_grace: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if self.metric not in _DEFAULT_TARGET:
            problems.append(f"metric must be concurrency or rps, got {self.metric!r}")
        if self.target is not None and self.target < TARGET_MIN:
            problems.append(f"target must be at least {TARGET_MIN}, got {self.target}")
        numbers = {k: v for k, v in vars(self).items() if isinstance(v, (int, float))}
        problems += [f"{k} must be a finite number, got {v}" for k, v in numbers.items() if not math.isfinite(v)]
        if not 0.01 <= self.utilization <= 1:
            problems.append(f"utilization must be in [0.01, 1] (1 %..100 %), got {self.utilization}")
        if not 6 <= self.stable_window <= 3600:
            problems.append(f"stable window must be 6..3600 s, got {self.stable_window}")
        if not 1 <= self.panic_window_percent <= 100:
            problems.append(f"panic window percent must be 1..100, got {self.panic_window_percent}")
        if not 1.1 <= self.panic_threshold <= 10:
            problems.append(f"panic threshold must be 1.1..10 (110 %..1000 %), got {self.panic_threshold}")
        if self.max_scale_up_rate <= 1 or self.max_scale_down_rate <= 1:
            problems.append("max scale up and down rates must be greater than 1")
        if self.activation_scale < 1:
            problems.append(f"activation scale must be at least 1, got {self.activation_scale}")
        if self.scale_down_delay < 0 or self.scale_to_zero_grace < 0:
            problems.append("scale-down delay and scale-to-zero grace cannot be negative")
        if self.target_burst_capacity < 0 and self.target_burst_capacity != -1:
            problems.append(f"target burst capacity must be >= 0 or -1, got {self.target_burst_capacity}")
        if self.min_scale < 0 or self.max_scale < 0 or self.initial_scale < 0:
            problems.append("min, max and initial scale cannot be negative")
        if 0 < self.max_scale < self.min_scale:
            problems.append(f"min scale {self.min_scale} exceeds max scale {self.max_scale}")
        if problems:
            raise ValueError("; ".join(problems))

    @cached_property  # read at every tick of every revision; a frozen Settings never changes it
    def total(self) -> float:
        """What one instance may carry; the excess burst capacity is measured against it."""
        return _DEFAULT_TARGET[self.metric] if self.target is None else self.target

    @cached_property
    def target_value(self) -> float:
        """What one instance should carry: total * utilization, leaving headroom for bursts."""
        return max(TARGET_MIN, self.total * self.utilization)

    @property
    def panic_window(self) -> int:
        """Panic window in whole seconds, at least one bucket (Knative's MakeMetric)."""
        return max(1, math.floor(self.stable_window * self.panic_window_percent / 100 + 0.5))


@dataclass(frozen=True)
class DeciderState:
    """What the decider remembers between ticks."""

    panic_since: float | None = None
    """Time of the last tick over the panic threshold; None when not panicking."""
    max_panic_pods: int = 0
    """Highest want seen in this panic: panic mode never scales down."""
    delay_window: tuple[tuple[int, int], ...] = ()
    """(tick, want) pairs still able to be the maximum over the scale-down delay, oldest first."""


def initial_state(now: float, ready: int) -> DeciderState:
    """A new decider for a revision already running `ready` instances.

    With more than one instance it starts in panic holding them all: a restarted autoscaler has
    lost its metric history and must not scale down on the thin data of its first ticks.
    """
    return DeciderState(panic_since=now if ready > 1 else None, max_panic_pods=ready)


class Decision(NamedTuple):
    desired: int
    excess_burst_capacity: int
    """Negative: the instances cannot absorb the target burst, keep the activator in the path.
    -1 also when the burst capacity is unlimited."""
    state: DeciderState
    why: tuple
    """(mode, pods needed, window, metric, window value, target, notes...): `reason` formats it on
    demand, since most ticks' reasons are never read."""

    @property
    def reason(self) -> str:
        mode, needed, window, metric, value, target, *notes = self.why
        head = f"{mode}: {needed} pods needed for {window}-window {metric} {round(value, 3)} at target {round(target, 3)}"
        return "".join((head, *notes))


def decide(
    now: float,
    stable: float,
    panic: float,
    ready: int,
    settings: Settings,
    state: DeciderState,
    *,
    reachable: bool = True,
) -> Decision:
    """One autoscaler tick, Knative's Scale: the wanted scale for the observed stable/panic load.

    `stable` and `panic` are the window averages of the revision's total load (all instances
    and the activator together); `ready` is the number of ready instances. An unreachable
    revision (no route sends it traffic) may drop straight to its want, without rate limit or
    scale-down delay.
    """
    capacity = max(1, ready)
    target = settings.target_value
    max_up = math.ceil(settings.max_scale_up_rate * capacity)
    max_down = math.floor(capacity / settings.max_scale_down_rate) if reachable else 0

    stable_pods = math.ceil(stable / target)
    panic_pods = math.ceil(panic / target)
    want_stable = _activated(min(max(stable_pods, max_down), max_up), stable_pods, settings)
    want_panic = _activated(min(max(panic_pods, max_down), max_up), panic_pods, settings)

    over_threshold = panic_pods / capacity >= settings.panic_threshold
    panic_since, max_panic_pods = state.panic_since, state.max_panic_pods
    if over_threshold:
        panic_since = now
    elif panic_since is not None and now > panic_since + settings.stable_window:
        panic_since, max_panic_pods = None, 0

    if panic_since is None:
        desired, needed, mode = want_stable, stable_pods, "stable"
    else:
        max_panic_pods = max(want_stable, want_panic, max_panic_pods)
        desired, needed, mode = max_panic_pods, max(stable_pods, panic_pods), "panic"
    window, value = ("panic", panic) if mode == "panic" and needed == panic_pods else ("stable", stable)
    why: tuple = (mode, needed, window, settings.metric, value, target)
    if mode == "panic" and desired > max(want_stable, want_panic):
        why += (f"; holding {desired}, panic mode never scales down",)
    elif desired != needed:
        why += (f"; scale rates allow {max_down}..{max_up}",)
        if settings.activation_scale > 1:
            why += (f", activation scale {settings.activation_scale}",)

    delay_window = state.delay_window
    if reachable and settings.scale_down_delay > 0:
        delay_window = _record_max(delay_window, now, desired, settings.scale_down_delay)
        delayed = delay_window[0][1]
        if delayed != desired:
            why += (f"; scale-down delay keeps {delayed} instead of {desired}",)
            desired = delayed

    return Decision(
        desired=desired,
        excess_burst_capacity=_excess_burst_capacity(ready, panic, settings),
        state=state if (panic_since is state.panic_since and max_panic_pods == state.max_panic_pods
                        and delay_window is state.delay_window) else DeciderState(panic_since, max_panic_pods,
                                                                                  delay_window),
        why=why,
    )


def _activated(want: int, needed: int, settings: Settings) -> int:
    """Any need at all is met with at least the activation scale."""
    return max(want, settings.activation_scale) if needed > 0 else want


def _record_max(
    window: tuple[tuple[int, int], ...], now: float, want: int, delay: float
) -> tuple[tuple[int, int], ...]:
    """Add `want` to the max-over-delay window and drop what can no longer be its maximum.

    Entries older than the delay and entries not above the new want are gone for good (a newer,
    at least as large value outlives them), so the first entry is always the current maximum.
    """
    slots = math.ceil(delay / TICK_INTERVAL)
    tick = math.floor(now) // int(TICK_INTERVAL)
    kept = tuple((t, w) for t, w in window if tick - t < slots and w > want)
    return kept + ((tick, want),)


def _excess_burst_capacity(ready: int, panic: float, settings: Settings) -> int:
    """Capacity of the ready instances left after the panic load and the target burst."""
    burst = settings.target_burst_capacity
    if burst == 0:
        return 0
    if burst < 0:
        return -1
    return math.floor(ready * settings.total - burst - panic)


class Applied(NamedTuple):
    scale: int | None
    """The scale to apply now, or None to leave the current scale as it is for now."""
    deactivate: bool
    """True when the revision has idled a full stable window: put the activator in its path."""
    reason: str


def reconcile_scale(
    desired: int,
    now: float,
    settings: Settings,
    *,
    reachable: bool = True,
    initialized: bool = True,
    active_since: float | None,
    proxied_since: float | None,
) -> Applied:
    """The reconciler's side of a decision, Knative's scaler.scale and handleScaleToZero.

    Bounds: min scale applies only to reachable revisions (an unrouted one may go to zero);
    until the revision first reached its initial scale (`initialized` False) that scale acts as
    a floor; max scale 0 is unbounded.

    Zero: `active_since` is when the revision last became active (None once deactivated) and
    `proxied_since` when the activator entered its path (None if it is not there). An active
    revision wanting zero keeps one instance until it has idled a full stable window, then is
    deactivated; a deactivated one reaches zero once the activator has fronted it for the grace
    period, so requests arriving meanwhile find a path. Not ported: Knative's activation
    timeout for revisions stuck activating, and the pod-retention period.
    """
    floor = settings.min_scale if reachable else 0
    if settings.initial_scale > 1 and not initialized and reachable:
        floor = max(floor, settings.initial_scale)
    bounded = max(desired, floor)
    if settings.max_scale:
        bounded = min(bounded, settings.max_scale)
    if bounded != 0:
        if bounded == desired:
            return Applied(bounded, False, f"scale {bounded}")
        ceiling = settings.max_scale or "unbounded"
        return Applied(bounded, False, f"scale {bounded}: wanted {desired}, bounds {floor}..{ceiling}")
    if active_since is not None:
        idle_left = active_since + settings.stable_window - now
        if idle_left > 0:
            return Applied(1, False, f"idle: keeping 1 instance {idle_left:.1f}s more before deactivating")
        return Applied(None, True, "idle for a stable window: deactivate, put the activator in the path")
    if proxied_since is None:
        return Applied(None, False, "waiting for the activator to front the revision before zero")
    grace_left = proxied_since + settings.scale_to_zero_grace - now
    if grace_left > 0:
        return Applied(None, False, f"activator in path; zero in {grace_left:.1f}s (grace period)")
    return Applied(0, False, "scale to zero: activator has fronted the revision for the grace period")
