"""One revision's autoscaler as a pure state machine: observations in, scale and activator mode out.

`decision.py` holds Knative's arithmetic; this module holds what the KPA reconciler remembers
between ticks (windows, panic memory, active/inactive, the scale it last asked for) and derives
whether the activator must front the revision. Time and every observation are arguments, and
every call returns a new `ScalerState`, so the I/O loop that drives it stays a thin shell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from .decision import (
    Applied,
    DeciderState,
    Decision,
    Settings,
    decide,
    initial_state,
    reconcile_scale,
)
from .windows import Window, stable_and_panic


class Load(NamedTuple):
    """One second's observation of a revision: requests in flight (queued ones included) and rate."""

    concurrency: float
    rps: float


@dataclass(frozen=True)
class ScalerState:
    settings: Settings
    stable: Window
    panic: Window
    decider: DeciderState
    scale: int
    """The instance count last asked of the backend."""
    initialized: bool
    """Reached its initial scale once: from then on initial scale is no floor."""
    active_since: float | None
    """When it last became active; None while deactivated (the activator fronts it for zero)."""
    inactive_since: float | None
    """When it was deactivated; the scale-to-zero grace period counts from here."""
    recorded_second: int | None = None
    recorded: float = 0.0
    """The windows hold whichever metric the revision scales on. What the current second's bucket already holds, so two observations in one second count once."""
    last_panic: float = 0.0
    """The panic-window load of the last decision: EBC is re-derived from it when instances change."""


def replace(state: ScalerState, **changes) -> ScalerState:
    """dataclasses.replace without its per-call field introspection: the autoscaler records one
    observation per revision per second, and at 1,000 revisions replace() alone took 15 ms of it."""
    new = object.__new__(ScalerState)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


def new_state(settings: Settings, now: float, ready: int = 0, adopted: int | None = None) -> ScalerState:
    """A revision just started at its initial scale (active unless that scale is zero); or, `adopted`, one that
    already runs at that scale (a new leader's): it stays there until a decision moves it, as Knative's
    initial scale applies to new revisions only."""
    scale = settings.initial_scale if adopted is None else adopted
    active = scale > 0
    return ScalerState(
        settings=settings,
        stable=Window(settings.stable_window),
        panic=Window(settings.panic_window),
        decider=initial_state(now, ready),
        scale=scale,
        initialized=adopted is not None or ready >= settings.initial_scale,
        active_since=now if active else None,
        inactive_since=None if active else now,
    )


def with_settings(state: ScalerState, settings: Settings) -> ScalerState:
    """New knobs keep the history when the window lengths allow it (Knative rebuilds its windows then)."""
    if settings == state.settings:
        return state
    stable, panic = state.stable, state.panic
    if settings.stable_window != state.settings.stable_window:
        stable = Window(settings.stable_window)
    if settings.panic_window != state.settings.panic_window:
        panic = Window(settings.panic_window)
    return replace(state, settings=settings, stable=stable, panic=panic)


def record(state: ScalerState, now: float, load: Load) -> ScalerState:
    """Add one observation; a second observation within the same second adds only what it sees beyond
    the first (a wake-up poke and the next scrape must not count the same requests twice)."""
    value = load.rps if state.settings.metric == "rps" else load.concurrency
    second = math.floor(now)
    if second == state.recorded_second:
        extra = value - state.recorded
        if extra <= 0:
            return state
        return replace(
            state,
            stable=state.stable.record(now, extra),
            panic=state.panic.record(now, extra),
            recorded=value,
        )
    return replace(
        state,
        stable=state.stable.record(now, value),
        panic=state.panic.record(now, value),
        recorded_second=second,
        recorded=value,
    )


class Step(NamedTuple):
    state: ScalerState
    scale: int | None
    """Instances to ask the backend for, or None: leave them as they are."""
    activator_in_path: bool
    """Knative's rule: the activator fronts the revision (it holds requests, or the burst needs buffering)."""
    holding: bool
    """The part of that rule that holds requests (see must_hold)."""
    decision: Decision | None = None
    applied: Applied | None = None

    @property
    def reason(self) -> str:
        """Built on demand: a tick over 1,000 revisions should not format 1,000 strings nobody reads."""
        if self.decision is None or self.applied is None:
            return "no metrics yet"
        return f"{self.decision.reason}; {self.applied.reason}"


def tick(state: ScalerState, now: float, *, ready: int, reachable: bool) -> Step:
    """One decision: Knative's Scale, then the reconciler's bounds and scale-to-zero steps."""
    settings = state.settings
    observed = stable_and_panic(state.stable, state.panic, now)
    if observed is None:  # nothing observed yet (Knative: an invalid scale result changes nothing)
        return Step(state, None, in_path_now(state, ready), must_hold(ready, state.scale, state.active_since))
    stable, panic = observed
    decision = decide(now, stable, panic, ready, settings, state.decider, reachable=reachable)
    initialized = state.initialized or ready >= settings.initial_scale
    applied = reconcile_scale(
        decision.desired,
        now,
        settings,
        reachable=reachable,
        initialized=initialized,
        active_since=state.active_since,
        proxied_since=state.inactive_since,
    )
    active_since, inactive_since, scale = state.active_since, state.inactive_since, state.scale
    if applied.deactivate:
        active_since, inactive_since = None, now
    elif applied.scale:
        scale = applied.scale
        if active_since is None:
            active_since, inactive_since = now, None
    elif applied.scale == 0:
        scale = 0
    new = replace(
        state,
        decider=decision.state,
        scale=scale,
        initialized=initialized,
        active_since=active_since,
        inactive_since=inactive_since,
        last_panic=panic,
    )
    in_path = activator_in_path(ready, scale, active_since, decision.excess_burst_capacity)
    holding = must_hold(ready, scale, active_since)
    return Step(new, scale if scale != state.scale else None, in_path, holding, decision, applied)


def activator_in_path(ready: int, scale: int, active_since: float | None, excess_burst_capacity: int) -> bool:
    """Knative's rule (the activator leaves only when want > 0 and EBC >= 0), plus ferry's: with no
    ready instance the activator holds requests rather than Envoy answering 503."""
    return must_hold(ready, scale, active_since) or excess_burst_capacity < 0


def must_hold(ready: int, scale: int, active_since: float | None) -> bool:
    """Whether requests would find no instance to go to: none ready, scaling to zero, or inactive. The part of
    Knative's rule that holds requests, without the part that buffers bursts."""
    return ready == 0 or scale == 0 or active_since is None


def in_path_now(state: ScalerState, ready: int) -> bool:
    """Re-derive the activator mode when the ready instances change between ticks (EBC depends on them)."""
    settings = state.settings
    burst = settings.target_burst_capacity
    if burst == 0:
        ebc = 0
    elif burst < 0:
        ebc = -1
    else:
        ebc = math.floor(ready * settings.total - burst - state.last_panic)
    return activator_in_path(ready, state.scale, state.active_since, ebc)


def wake(state: ScalerState, now: float, held: float) -> ScalerState:
    """The activator holds `held` requests for a revision without ready instances: record them now so
    the immediate decision that follows sees the demand (Knative's activator poke)."""
    return record(state, now, Load(concurrency=held, rps=held))
