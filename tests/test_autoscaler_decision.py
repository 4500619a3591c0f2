"""The KPA decision and its windows, checked against Knative's own test vectors.

Vectors named Test*/Autoscaler* come from pkg/autoscaler/scaling/autoscaler_test.go, window
cases from pkg/autoscaler/aggregation/bucketing_test.go and max/timewindow_test.go. Knative's
harness sizes a revision with total = target / 0.75 at 75 % utilization, panic threshold 2,
scale rates 10 and a 60 s stable window; `harness` below builds the same settings.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import pytest

from ferry.autoscaler.decision import (
    DeciderState,
    Settings,
    decide,
    initial_state,
    reconcile_scale,
)
from ferry.autoscaler.windows import Window, stable_and_panic


def harness(target: float, burst: float, **overrides) -> Settings:
    """Knative's newTestAutoscaler settings: `target` is the per-instance target value."""
    knative = Settings(
        target=target / 0.75,
        utilization=0.75,
        target_burst_capacity=burst,
        panic_threshold=2.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=10.0,
        stable_window=60,
    )
    return replace(knative, **overrides)


def ebc(target: float, burst: float, panic: float, ready: int) -> int:
    """Knative's expectedEBC."""
    return math.floor(target / 0.75 * ready - burst - panic)


# --- the reference notes' worked cases, with their literal numbers -------------------------------


@pytest.mark.parametrize(
    "target, burst, stable, panic, ready, overrides, want, want_ebc",
    [
        (10, 100, 50, 50, 1, {}, 5, -137),
        (10, 84, 50, 100, 1, {}, 10, -171),
        (1, 1982, 3, 3.1, 2, {"max_scale_up_rate": 1.1}, 3, ebc(1, 1982, 3.1, 2)),
        (10, 0, 50, 49, 1, {}, 5, 0),
        (181, -1, 21, 26, 1, {}, 1, -1),
    ],
)
def test_reference_worked_cases(target, burst, stable, panic, ready, overrides, want, want_ebc):
    settings = harness(target, burst, **overrides)
    decision = decide(0.0, stable, panic, ready, settings, initial_state(0.0, 1))
    assert (decision.desired, decision.excess_burst_capacity) == (want, want_ebc)


def test_reference_first_case_enters_panic():
    decision = decide(7.0, 50, 50, 1, harness(10, 100), initial_state(0.0, 1))
    assert decision.state.panic_since == 7.0
    assert decision.reason.startswith("panic: 5 pods needed for panic-window concurrency 50")


# --- TestAutoscalerScale: one tick from a fresh decider ------------------------------------------

PANICKING_FOR_5S = DeciderState(panic_since=-5.0, max_panic_pods=5)


@pytest.mark.parametrize(
    "label, target, burst, stable, panic, ready, overrides, state, reachable, want, want_ebc",
    [
        ("AutoscalerNoDataAtZeroNoAutoscale", 10, 100, 0, 0, 1, {}, None, True, 0, ebc(10, 100, 0, 1)),
        ("AutoscalerNoDataAtZeroNoAutoscaleWithExplicitEPs", 10, 100, 0, 0, 1, {}, None, True, 0,
         ebc(10, 100, 0, 1)),
        ("AutoscalerStableModeUnlimitedTBC", 181, -1, 21, 26, 1, {}, None, True, 1, -1),
        ("Autoscaler0TBC", 10, 0, 50, 49, 1, {}, None, True, 5, 0),
        ("AutoscalerStableModeNoChange", 10, 100, 50, 50, 1, {}, None, True, 5, ebc(10, 100, 50, 1)),
        ("AutoscalerPanicStableLargerThanPanic", 1, 100, 50, 30, 5, {}, PANICKING_FOR_5S, True, 50,
         ebc(1, 100, 30, 5)),
        ("AutoscalerPanicStableLessThanPanic", 1, 100, 20, 30, 5, {}, PANICKING_FOR_5S, True, 30,
         ebc(1, 100, 30, 5)),
        ("AutoscalerStableModeNoChangeAlreadyScaled", 10, 100, 50, 50, 5, {}, None, True, 5,
         ebc(10, 100, 50, 5)),
        ("AutoscalerStableModeIncreaseWithSmallScaleUpRate", 1, 1982, 3, 3.1, 2,
         {"max_scale_up_rate": 1.1}, None, True, 3, ebc(1, 1982, 3.1, 2)),
        ("AutoscalerStableModeDecreaseWithSmallScaleDownRate", 10, 1982, 1, 1, 100,
         {"max_scale_down_rate": 1.1}, None, True, 90, ebc(10, 1982, 1, 100)),
        ("AutoscalerStableModeDecreaseNonReachable", 10, 1982, 1, 1, 100,
         {"max_scale_down_rate": 1.1}, None, False, 1, ebc(10, 1982, 1, 100)),
        ("AutoscalerPanicModeDoublePodCount", 10, 84, 50, 100, 1, {}, None, True, 10, ebc(10, 84, 100, 1)),
        ("AutoscalerUseOnePodAsMinimumIfEndpointsNotFound", 10, 81, 1000, 888, 0, {}, None, True, 10,
         ebc(10, 81, 888, 0)),
    ],
)
def test_knative_scale_table(label, target, burst, stable, panic, ready, overrides, state, reachable,
                             want, want_ebc):
    settings = harness(target, burst, **overrides)
    state = state or initial_state(-10.0, 1)  # Knative's harness creates the decider at 1 ready
    decision = decide(0.0, stable, panic, ready, settings, state, reachable=reachable)
    assert (decision.desired, decision.excess_burst_capacity) == (want, want_ebc), decision.reason


# --- multi-tick Knative tests: one decider carried through its ticks ------------------------------

KEEP = object()  # a step that does not check the panic clock


class Tick(NamedTuple):
    now: float
    stable: float
    panic: float
    ready: int
    want: int
    want_ebc: int | None = None
    panic_since: object = KEEP
    reachable: bool = True
    settings: Settings | None = None  # Knative's Update(): new settings from this tick on


# Knative's scale-down-delay tests use panic threshold 100 (10000 %) only to stay out of panic;
# 10 is ferry's (and Knative's config's) ceiling and keeps them out of panic just the same.
DELAY = harness(10, 0, panic_threshold=10.0, scale_down_delay=300)

SEQUENCES = {
    "TestAutoscalerScaleDownDelay/simple+gradual": (DELAY, 0, [
        Tick(2, 40, 40, 0, 4, 0),
        Tick(300, 0, 0, 0, 4, 0),  # less than the delay at reduced load
        Tick(302, 0, 0, 0, 0, 0),  # delay passed
        Tick(540, 40, 40, 0, 4),
        Tick(600, 30, 30, 0, 4),  # 4 still dominates
        Tick(660, 0, 0, 0, 4),
        Tick(840, 0, 0, 0, 3),  # 4 scrolls out
        Tick(900, 0, 0, 0, 0),  # everything scrolled out
    ]),
    "TestAutoscalerScaleDownDelayNotReachable": (DELAY, 0, [
        Tick(2, 40, 40, 0, 4),
        Tick(60, 0, 0, 0, 4),
        Tick(2, 0, 0, 0, 0, reachable=False),  # another revision took the traffic
    ]),
    "TestAutoscalerScaleDownDelayZero": (harness(10, 0, panic_threshold=10.0), 0, [
        Tick(0, 40, 40, 0, 4),
        Tick(0.5, 20, 20, 0, 2),  # no delay: down at once, even within the same tick slot
    ]),
    "TestAutoscalerMetrics": (harness(10, 100), 1, [
        Tick(0, 50, 50, 1, 5, ebc(10, 100, 50, 1), panic_since=0),
    ]),
    "TestAutoscalerMetricsWithRPS": (harness(10, 100, metric="rps"), 1, [
        Tick(61, 100, 99, 1, 10, ebc(10, 100, 99, 1), panic_since=61),
    ]),
    "TestAutoscalerStableModeIncreaseWithConcurrencyDefault": (harness(10, 101), 1, [
        Tick(0, 50, 10, 1, 5, ebc(10, 101, 10, 1), panic_since=None),
        Tick(0, 100, 10, 1, 10, ebc(10, 101, 10, 1), panic_since=None),
    ]),
    "TestAutoscalerStableModeIncreaseWithRPS": (harness(10, 101, metric="rps"), 1, [
        Tick(0, 50, 50, 1, 5, ebc(10, 101, 50, 1)),
        Tick(0, 100, 99, 1, 10, ebc(10, 101, 99, 1)),
    ]),
    "TestAutoscalerUnpanicAfterSlowIncrease": (harness(1, 98), 1, [
        Tick(0, 11, 25, 10, 25, ebc(1, 98, 25, 10), panic_since=0),
        Tick(30, 30, 41, 40, 41, ebc(1, 98, 41, 40), panic_since=0),  # panic clock must not move
        Tick(62, 50, 56, 55, 50, ebc(1, 98, 56, 55), panic_since=None),  # a stable window later
    ]),
    "TestAutoscalerExtendPanicWindow": (harness(1, 98), 1, [
        Tick(0, 11, 25, 10, 25, ebc(1, 98, 25, 10), panic_since=0),
        Tick(30, 30, 80, 40, 80, ebc(1, 98, 80, 40), panic_since=30),  # still surging
    ]),
    "TestAutoscalerStableModeDecrease": (harness(10, 98), 1, [
        Tick(0, 100, 100, 8, 10, ebc(10, 98, 100, 8)),
        Tick(0, 50, 50, 8, 5, ebc(10, 98, 50, 8)),
    ]),
    "TestAutoscalerStableModeNoTrafficScaleToZero": (harness(10, 75), 1, [
        Tick(0, 1, 0, 1, 1, ebc(10, 75, 0, 1)),
        Tick(0, 0, 0, 1, 0, ebc(10, 75, 0, 1)),
    ]),
    "TestAutoscalerActivationScale": (harness(10, 75, activation_scale=2), 1, [
        Tick(0, 0, 0, 1, 0, ebc(10, 75, 0, 1)),
        Tick(0, 1, 0, 1, 2, ebc(10, 75, 0, 1)),
    ]),
    "TestAutoscalerPanicModeExponentialTrackAndStabilize": (harness(1, 101), 1, [
        Tick(0, 6, 6, 1, 6, ebc(1, 101, 6, 1)),
        Tick(0, 36, 36, 6, 36, ebc(1, 101, 36, 6), panic_since=0),
        Tick(1, 216, 216, 36, 216, ebc(1, 101, 216, 36), panic_since=1),
        Tick(1, 1296, 1296, 216, 1296, ebc(1, 101, 1296, 216), panic_since=1),
        Tick(2, 1296, 1296, 1296, 1296, ebc(1, 101, 1296, 1296)),
    ]),
    "TestAutoscalerPanicThenUnPanicScaleDown": (harness(10, 93), 1, [
        Tick(0, 100, 100, 1, 10, ebc(10, 93, 100, 1)),
        Tick(0, 100, 1000, 10, 100, ebc(10, 93, 1000, 10)),
        Tick(30, 1, 1, 10, 100, ebc(10, 93, 1, 10)),  # traffic gone, still in panic
        Tick(61, 1, 1, 10, 1, ebc(10, 93, 1, 10), panic_since=None),  # after the stable window
    ]),
    "TestAutoscalerRateLimitScaleUp": (harness(10, 61), 1, [
        Tick(0, 1000, 1001, 1, 10, ebc(10, 61, 1001, 1)),  # needs 100, may only grow x10
        Tick(0, 1000, 1001, 10, 100, ebc(10, 61, 1001, 10)),
    ]),
    "TestAutoscalerRateLimitScaleDown": (harness(10, 61), 1, [
        Tick(0, 1, 1, 100, 10, ebc(10, 61, 1, 100)),  # needs 1, may only shrink /10
        Tick(0, 1, 1, 10, 1, ebc(10, 61, 1, 10)),
    ]),
    "TestAutoscalerUpdateTarget": (harness(10, 77), 1, [
        Tick(0, 100, 101, 1, 10, ebc(10, 77, 101, 1)),
        Tick(0, 100, 101, 10, 100, ebc(1, 71, 101, 10), settings=harness(1, 71)),
    ]),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_knative_sequences(name):
    settings, ready_at_start, ticks = SEQUENCES[name]
    state = initial_state(-10.0, ready_at_start)
    for i, tick in enumerate(ticks):
        settings = tick.settings or settings
        decision = decide(tick.now, tick.stable, tick.panic, tick.ready, settings, state,
                          reachable=tick.reachable)
        assert decision.desired == tick.want, f"tick {i}: {decision.reason}"
        if tick.want_ebc is not None:
            assert decision.excess_burst_capacity == tick.want_ebc, f"tick {i}"
        if tick.panic_since is not KEEP:
            assert decision.state.panic_since == tick.panic_since, f"tick {i}"
        state = decision.state


@pytest.mark.parametrize("ready, panicking", [(0, False), (1, False), (2, True)])
def test_start_in_panic_mode(ready, panicking):
    """TestStartInPanicMode and TestNewFail (a failed count is 0 ready)."""
    state = initial_state(5.0, ready)
    assert (state.panic_since is not None, state.max_panic_pods) == (panicking, ready)


def test_restart_in_panic_holds_current_scale_on_thin_data():
    """Why a decider with ready > 1 starts in panic: no scale-down until a stable window passes."""
    settings = harness(10, 100)
    state = initial_state(0.0, 8)
    held = decide(30.0, 5, 5, 8, settings, state)
    assert held.desired == 8 and "never scales down" in held.reason
    released = decide(61.0, 5, 5, 8, settings, held.state)
    assert released.desired == 1 and released.state.panic_since is None


def test_decision_is_pure():
    settings, state = harness(10, 100), initial_state(0.0, 3)
    first = decide(1.0, 40, 90, 3, settings, state)
    assert decide(1.0, 40, 90, 3, settings, state) == first
    assert state == initial_state(0.0, 3)


def test_unreachable_does_not_feed_the_delay_window():
    state = decide(0.0, 40, 40, 0, DELAY, initial_state(0.0, 0)).state
    unrouted = decide(2.0, 0, 0, 0, DELAY, state, reachable=False)
    assert unrouted.desired == 0 and unrouted.state.delay_window == state.delay_window


# --- Settings -----------------------------------------------------------------------------------


def test_knative_defaults():
    s = Settings()
    assert (s.total, s.target_value, s.stable_window, s.panic_window) == (100, 70, 60, 6)
    assert Settings(metric="rps").total == 200
    assert (s.panic_threshold, s.max_scale_up_rate, s.max_scale_down_rate) == (2.0, 1000, 2)
    assert (s.target_burst_capacity, s.activation_scale, s.scale_down_delay) == (211, 1, 0)
    assert (s.min_scale, s.max_scale, s.initial_scale, s.scale_to_zero_grace) == (0, 0, 1, 30)


def test_panic_window_rounds_to_a_second_and_keeps_one_bucket():
    """MakeMetric: stable * percent, rounded to whole seconds, at least 1 s."""
    assert Settings(stable_window=65, panic_window_percent=10).panic_window == 7  # 6.5 rounds up
    assert Settings(stable_window=6, panic_window_percent=1).panic_window == 1


def test_target_floor():
    assert Settings(target=0.01, utilization=0.5).target_value == 0.01


@pytest.mark.parametrize(
    "bad",
    [{"metric": "cpu"}, {"utilization": 0}, {"stable_window": 5}, {"panic_window_percent": 0.5},
     {"panic_threshold": 1.0}, {"max_scale_down_rate": 1}, {"target_burst_capacity": -2},
     {"min_scale": 5, "max_scale": 3}, {"activation_scale": 0}],
)
def test_settings_validation(bad):
    with pytest.raises(ValueError):
        Settings(**bad)


# --- reconciler side: bounds, initial scale, scale-to-zero grace ---------------------------------

ACTIVE = {"active_since": 0.0, "proxied_since": None}


def test_bounds_apply_min_and_max():
    settings = Settings(min_scale=2, max_scale=5)
    assert reconcile_scale(0, 100.0, settings, **ACTIVE).scale == 2
    assert reconcile_scale(9, 100.0, settings, **ACTIVE).scale == 5
    assert reconcile_scale(3, 100.0, settings, **ACTIVE).scale == 3


def test_unreachable_revision_ignores_min_scale_and_initial_scale():
    settings = Settings(min_scale=2, initial_scale=4)
    applied = reconcile_scale(0, 0.0, settings, reachable=False, initialized=False,
                              active_since=None, proxied_since=0.0)
    assert applied.scale is None  # heads for zero, through the grace period


def test_initial_scale_is_a_floor_until_first_reached():
    settings = Settings(initial_scale=3, min_scale=1)
    assert reconcile_scale(1, 0.0, settings, initialized=False, **ACTIVE).scale == 3
    assert reconcile_scale(1, 0.0, settings, initialized=True, **ACTIVE).scale == 1


def test_zero_waits_a_stable_window_then_the_grace_period():
    settings = Settings()
    assert reconcile_scale(0, 59.0, settings, **ACTIVE).scale == 1
    deactivating = reconcile_scale(0, 60.0, settings, **ACTIVE)
    assert (deactivating.scale, deactivating.deactivate) == (None, True)
    assert reconcile_scale(0, 61.0, settings, active_since=None, proxied_since=None).scale is None
    assert reconcile_scale(0, 89.0, settings, active_since=None, proxied_since=60.0).scale is None
    assert reconcile_scale(0, 90.0, settings, active_since=None, proxied_since=60.0).scale == 0


# --- windows: TimedFloat64Buckets ----------------------------------------------------------------

T0 = 1_000_000.0  # a whole second, like the tests' Truncate(granularity)


def recorded(seconds: int, *writes: tuple[float, float]) -> Window:
    window = Window(seconds)
    for at, value in writes:
        window = window.record(at, value)
    return window


def test_empty_window_has_no_data():
    """TestTimedFloat64BucketsSimple/empty: IsEmpty before any write."""
    assert Window(120).average(T0) is None


def test_same_second_adds():
    """TestTimedFloat64BucketsSimple: two writes in one second share a bucket."""
    window = recorded(120, (T0, 1), (T0 + 0.1, 10), (T0 + 1, 1), (T0 + 3, 1))
    assert window.buckets == ((T0, 11), (T0 + 1, 1), (T0 + 3, 1))
    assert window.average(T0 + 3) == 13 / 4


def test_many_reps():
    """TestTimedFloat64BucketsManyReps: 5 seconds x 5 writes, total 100."""
    window = recorded(60, *[(T0 + 1 + p, p + t) for p in range(5) for t in range(5)])
    assert window.average(T0 + 5) == 100 / 5


def test_many_reps_non_monotonic():
    """TestTimedFloat64BucketsManyRepsWithNonMonotonicalOrder."""
    order = [0, 3, 2, 1, 4]
    window = recorded(60, *[(T0 + order[p], p + t) for p in range(5) for t in range(5)])
    assert window.average(T0 + 4) == 100 / 5


def test_window_average():
    """TestTimedFloat64BucketsWindowAverage, step by step."""
    w = recorded(5, (T0, 1))
    assert w.average(T0) == 1
    for i in range(1, 5):
        w = w.record(T0 + i, i + 1)
    assert w.average(T0 + 4) == 15 / 5
    assert w.average(T0 + 3.6) == 15 / 5  # before the last write reads as the last write
    assert w.average(T0 + 6) == (15 - 1 - 2) / (5 - 2)  # idle seconds shrink the span
    assert w.average(T0 + 10) is None  # Knative: 0 here; nothing in the window is "no data"
    w = w.record(T0 + 6, 91)
    assert w.average(T0 + 6) == (15 - 1 - 2 + 91) / 5

    now = T0 + 60
    w = w.record(now, 1984)  # after a silent window: starts afresh
    assert w.average(now) == 1984
    w = w.record(now - 3, 4)  # a late write widens the span
    assert w.average(now) == (4 + 1984) / 4
    now += 1
    w = w.record(now, 5)
    assert w.average(now) == (4 + 1984 + 5) / 5
    w = w.record(now - 3, 10)
    assert w.average(now) == (4 + 10 + 1984 + 5) / 5
    for too_old in (now - 6, now - 5):
        w = w.record(too_old, 10)
        assert w.average(now) == (4 + 10 + 1984 + 5) / 5
    w = w.record(now + 5, 10)
    assert w.average(now + 5) == 10


def test_descending_record():
    """TestDescendingRecord: writes older than the window are dropped."""
    window = recorded(5, *[(T0 + s, 5) for s in range(8, -1, -1)])
    assert window.average(T0 + 5) == 5


def test_holes_count_as_zero():
    """TestTimedFloat64BucketsHoles: a gap inside the window averages in as zeros."""
    window = recorded(5, *[(T0 + i, i + 1) for i in range(5)])
    assert window.average(T0 + 4) == 15 / 5
    window = window.record(T0 + 8, 2)
    assert window.average(T0 + 8) == (5 + 2) / 5  # seconds 4..8 hold 5, 0, 0, 0, 2


def test_partial_window_averages_over_filled_span():
    window = recorded(60, *[(T0 + i, 30) for i in range(6)])
    assert window.average(T0 + 5) == 30


def test_record_is_pure():
    window = recorded(5, (T0, 1))
    window.record(T0 + 1, 7)
    assert window.average(T0) == 1


def test_stable_and_panic():
    """The collector's StableAndPanicConcurrency, and TestAutoscalerNoDataNoAutoscale."""
    stable, panic = recorded(60, (T0, 120)), recorded(6, (T0, 120))
    assert stable_and_panic(stable, panic, T0) == (120, 120)
    assert stable_and_panic(stable, panic, T0 + 10) == (120, 0)  # panic window ran dry
    assert stable_and_panic(Window(60), Window(6), T0) is None  # scraping, no data: no decision
    assert stable_and_panic(Window(60), Window(6), T0, scraping=False) == (0, 0)  # at zero
