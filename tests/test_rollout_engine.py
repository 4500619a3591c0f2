"""The rollout engine: analysis arithmetic, Knative's gradual plan, and the state machine, all pure."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ferry.rollout.analysis import Criteria, Sample, delta, judge, p99
from ferry.rollout.gradual import GradualPlan, gradual_steps
from ferry.rollout.machine import (
    Rollout,
    RolloutError,
    RolloutSpec,
    abort,
    observe,
    promote,
    resume,
    retry,
    start,
)

INF = math.inf
BOUNDS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, INF)
"""Envoy's default upstream_rq_time buckets (the tail cut short), plus Prometheus' +Inf."""


class Traffic:
    """The candidate's cumulative counters as the gateways would report them."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.counts = [0] * len(BOUNDS)

    def add(self, requests: int, *, errors: int = 0, latency_ms: float = 3.0) -> Sample:
        self.requests += requests
        self.errors += errors
        for i, bound in enumerate(BOUNDS):
            if latency_ms <= bound:
                self.counts[i] += requests
        return self.sample()

    def sample(self) -> Sample:
        return Sample(self.requests, self.errors, tuple(zip(BOUNDS, self.counts, strict=True)))


def run(rollout: Rollout, spec: RolloutSpec, traffic: Traffic, times, **per_second) -> Rollout:
    """Observe once at every time in `times`, adding `per_second` traffic before each observation."""
    for t in times:
        rollout = observe(rollout, spec, now=t, sample=traffic.add(**per_second) if per_second else traffic.sample())
    return rollout


# --- delta -------------------------------------------------------------------------------------------


def test_delta_subtracts_counters_and_matches_buckets_by_bound():
    before = Sample(100, 5, ((10.0, 60), (100.0, 100), (INF, 100)))
    after = Sample(250, 7, ((1.0, 4), (10.0, 150), (100.0, 240), (INF, 250)))
    assert delta(before, after) == Sample(150, 2, ((1.0, 4), (10.0, 90), (100.0, 140), (INF, 150)))


def test_delta_of_equal_samples_is_empty():
    s = Sample(10, 1, ((5.0, 10), (INF, 10)))
    assert delta(s, s) == Sample(0, 0, ((5.0, 0), (INF, 0)))


@pytest.mark.parametrize(
    "after",
    [
        Sample(30, 3, ((10.0, 30), (INF, 30))),  # everything went back: an Envoy restarted
        Sample(1200, 1, ((10.0, 1200), (INF, 1200))),  # only the errors went back
        Sample(1200, 10, ((10.0, 5), (INF, 1200))),  # only a bucket went back
    ],
)
def test_delta_counts_from_zero_after_a_counter_reset(after):
    before = Sample(1000, 5, ((10.0, 900), (INF, 1000)))
    assert delta(before, after) == after


def test_delta_from_empty_sample_is_the_sample():
    after = Sample(7, 1, ((10.0, 7), (INF, 7)))
    assert delta(Sample(), after) == after


# --- p99 ---------------------------------------------------------------------------------------------


def test_p99_interpolates_linearly_inside_its_bucket():
    # 100 observations: 50 in (0, 10], 50 in (10, 20]; rank 99 is 49/50 of the way through (10, 20].
    assert p99(((10.0, 50), (20.0, 100), (INF, 100))) == pytest.approx(19.8)


def test_p99_in_the_first_bucket_starts_from_zero():
    assert p99(((100.0, 100), (INF, 100))) == pytest.approx(99.0)
    # 1000 observations, 990 at or below 5 ms: rank 990 is exactly the top of (1, 5].
    assert p99(((1.0, 500), (5.0, 990), (10.0, 1000), (INF, 1000))) == pytest.approx(5.0)


def test_p99_in_the_inf_bucket_is_the_highest_finite_bound():
    assert p99(((10.0, 90), (20.0, 95), (INF, 100))) == 20.0


def test_p99_without_an_inf_bucket_takes_the_last_bucket_as_total():
    assert p99(((5.0, 0), (10.0, 100))) == pytest.approx(9.95)


def test_p99_without_observations_is_none():
    assert p99(()) is None
    assert p99(((10.0, 0), (INF, 0))) is None
    assert p99(((INF, 5),)) is None  # all above an unknown bound: nothing finite to say


def test_p99_irons_out_non_monotonic_counts():
    # A sum over gateways read a moment apart can dip; Prometheus takes the running maximum.
    assert p99(((10.0, 50), (20.0, 40), (30.0, 100), (INF, 100))) == p99(((10.0, 50), (20.0, 50), (30.0, 100), (INF, 100)))


# --- judge -------------------------------------------------------------------------------------------


def window(requests: int, errors: int = 0, latency_ms: float = 3.0) -> Sample:
    return Traffic().add(requests, errors=errors, latency_ms=latency_ms)


def test_judge_is_inconclusive_below_min_requests_even_when_all_fail():
    v = judge(window(49, errors=49), Criteria(min_requests=50), final=True)
    assert v.outcome == "inconclusive"
    assert v.requests == 49 and v.success_rate == 0.0
    assert "49 of 50" in v.message


def test_judge_never_passes_on_no_data_even_with_min_requests_zero():
    assert judge(Sample(), Criteria(min_requests=0), final=True).outcome == "inconclusive"
    assert judge(Sample(), Criteria(min_requests=0), final=True).success_rate is None


def test_judge_fails_on_success_rate():
    v = judge(window(500, errors=100), Criteria(), final=False)
    assert (v.outcome, v.metric, v.observed, v.threshold) == ("fail", "successRate", 80.0, 99.0)
    assert v.message == "success rate 80.0% < 99% over 500 requests"


def test_judge_success_rate_at_the_threshold_passes_and_just_below_fails_without_rounding_up():
    assert judge(window(100, errors=1), Criteria(), final=True).outcome == "pass"
    v = judge(window(10000, errors=104), Criteria(), final=True)
    assert v.outcome == "fail" and v.message.startswith("success rate 98.9% < 99%")


def test_judge_4xx_are_not_errors():
    # errors count 5xx only; a 4xx is a completed request like any other.
    assert judge(Sample(requests=100, errors=0), Criteria(), final=True).outcome == "pass"


def test_judge_fails_on_latency():
    v = judge(window(100, latency_ms=700), Criteria(max_latency_p99_ms=250), final=False)
    assert (v.outcome, v.metric, v.threshold) == ("fail", "maxLatencyP99", 250)
    assert v.observed == pytest.approx(995.0)  # (500, 1000] bucket, 99/100 of the way
    assert v.message == "p99 latency 995.0 ms > 250 ms over 100 requests"


def test_judge_not_final_never_passes():
    v = judge(window(10000), Criteria(max_latency_p99_ms=250), final=False)
    assert v.outcome == "inconclusive" and v.message.endswith("so far")
    assert judge(window(10000), Criteria(max_latency_p99_ms=250), final=True).outcome == "pass"


def test_judge_latency_criterion_without_histogram_is_inconclusive():
    v = judge(Sample(requests=100), Criteria(max_latency_p99_ms=250), final=True)
    assert v.outcome == "inconclusive"


def test_criteria_validation():
    with pytest.raises(ValueError):
        Criteria(success_rate=101)
    with pytest.raises(ValueError):
        Criteria(min_requests=-1)
    with pytest.raises(ValueError):
        Criteria(max_latency_p99_ms=0)


# --- canary ------------------------------------------------------------------------------------------

CANARY = RolloutSpec(strategy="canary", steps=(5, 25, 50, 100), interval_s=30)


def test_canary_walks_every_step_to_promotion():
    traffic = Traffic()
    r = start(CANARY, service="shop", stable="shop-1", candidate="shop-2", now=0)
    assert (r.phase, r.step, r.weight, r.active, r.preview) == ("progressing", 0, 5, True, False)
    weights = []
    for t in range(1, 200):
        r = observe(r, CANARY, now=t, sample=traffic.add(10))
        weights.append(r.weight)
        if not r.active:
            break
    assert r.phase == "promoted" and r.weight == 100 and not r.active
    assert sorted(set(weights)) == [5, 25, 50, 100]
    events = [(h.event, h.step, h.weight) for h in r.history]
    assert events == [
        ("started", 0, 5), ("passed", 0, 5), ("passed", 1, 25), ("passed", 2, 50), ("promoted", 3, 100),
    ]
    # Each step held its interval: started at 0, baseline at 1, then 30 s per step.
    assert [h.at for h in r.history] == [0, 30, 60, 90, 120]
    assert all(h.verdict.outcome == "pass" for h in r.history[1:])
    assert r.reason == "all 4 canary steps passed"


def test_canary_with_20_percent_500s_rolls_back_at_the_first_step():
    traffic = Traffic()
    r = start(CANARY, service="shop", stable="shop-1", candidate="shop-2", now=0)
    r = observe(r, CANARY, now=1, sample=traffic.sample())
    for t in range(2, 30):
        r = observe(r, CANARY, now=t, sample=traffic.add(10, errors=2))
        if not r.active:
            break
    assert r.phase == "rolled-back" and r.weight == 0 and r.step == 0
    assert t == 6  # fails fast: at the 50th request, long before the 30 s interval
    last = r.history[-1]
    assert (last.event, last.step, last.weight) == ("rolled-back", 0, 5)
    assert (last.verdict.metric, last.verdict.observed, last.verdict.threshold) == ("successRate", 80.0, 99.0)
    assert "successRate" in r.reason and "80" in r.reason and "99" in r.reason
    assert r.reason.endswith("success rate 80.0% < 99% over 50 requests")
    assert observe(r, CANARY, now=100, sample=traffic.add(1000)) is r  # ended: observations ignored


def test_slow_candidate_rolls_back_on_p99():
    spec = dataclasses.replace(CANARY, criteria=Criteria(max_latency_p99_ms=250))
    traffic = Traffic()
    r = start(spec, service="shop", stable="shop-1", candidate="shop-2", now=0)
    r = observe(r, spec, now=1, sample=traffic.sample())
    r = run(r, spec, traffic, range(2, 12), requests=10, latency_ms=800)
    assert r.phase == "rolled-back" and r.weight == 0
    v = r.history[-1].verdict
    assert v.metric == "maxLatencyP99" and v.threshold == 250 and v.observed == pytest.approx(995.0)
    assert "maxLatencyP99" in r.reason and "250" in r.reason


def test_canary_without_traffic_waits_at_step_zero_forever():
    traffic = Traffic()
    r = start(CANARY, service="shop", stable="shop-1", candidate="shop-2", now=0)
    first = observe(r, CANARY, now=1, sample=traffic.sample())
    r = first
    for t in range(2, 3600):
        r = observe(r, CANARY, now=t, sample=traffic.add(1) if t % 600 == 0 else traffic.sample())
    assert r is first  # an inconclusive window changes nothing: the loop has nothing to store
    assert (r.phase, r.step, r.weight, len(r.history)) == ("progressing", 0, 5, 1)
    # Once traffic comes, the grown window counts from the baseline and passes (interval long over).
    r = observe(r, CANARY, now=3600, sample=traffic.add(50))
    assert (r.step, r.weight) == (1, 25)
    assert r.history[-1].verdict.requests == 55


def test_failure_limit_two_retries_the_step_once():
    spec = dataclasses.replace(CANARY, failure_limit=2)
    traffic = Traffic()
    r = start(spec, service="shop", stable="shop-1", candidate="shop-2", now=0)
    r = observe(r, spec, now=1, sample=traffic.sample())
    r = run(r, spec, traffic, range(2, 7), requests=10, errors=5)
    assert (r.phase, r.step, r.weight, r.failures) == ("progressing", 0, 5, 1)
    assert r.history[-1].event == "failed" and r.history[-1].note == "failure 1 of 2"
    assert r.step_started_at == 6 and r.baseline == traffic.sample()  # fresh window at the same step
    # The candidate recovers: the new window passes after its full interval.
    r = run(r, spec, traffic, range(7, 36), requests=10)
    assert (r.step, r.weight) == (0, 5)
    r = run(r, spec, traffic, [36], requests=10)
    assert (r.step, r.weight, r.failures) == (1, 25, 1)
    # A second failure, at any step, reaches the limit.
    r = run(r, spec, traffic, range(37, 45), requests=10, errors=5)
    assert (r.phase, r.weight, r.failures) == ("rolled-back", 0, 2)
    assert r.history[-1].step == 1 and r.history[-1].weight == 25


def test_canary_steps_without_100_still_end_at_100():
    spec = RolloutSpec(strategy="canary", steps=(10, 50), interval_s=10)
    r = start(spec, service="s", stable="a", candidate="b", now=0)
    r = run(r, spec, Traffic(), range(1, 40), requests=10)
    assert (r.phase, r.weight) == ("promoted", 100)


# --- blue-green --------------------------------------------------------------------------------------


def test_blue_green_previews_then_auto_promotes():
    spec = RolloutSpec(strategy="blue-green", interval_s=20)
    traffic = Traffic()
    r = start(spec, service="s", stable="a", candidate="b", now=0)
    assert (r.weight, r.preview) == (0, True)
    r = run(r, spec, traffic, range(1, 20), requests=10)
    assert (r.phase, r.weight, r.preview) == ("progressing", 0, True)
    r = run(r, spec, traffic, [20], requests=10)
    assert (r.phase, r.weight, r.preview) == ("promoted", 100, False)
    assert r.history[-1].verdict.outcome == "pass"


def test_blue_green_manual_promotion_waits_for_promote():
    spec = RolloutSpec(strategy="blue-green", interval_s=20, auto_promote=False)
    traffic = Traffic()
    r = start(spec, service="s", stable="a", candidate="b", now=0)
    r = run(r, spec, traffic, range(1, 21), requests=10)
    assert (r.phase, r.weight, r.active, r.preview) == ("awaiting-promotion", 0, True, True)
    waiting = r
    r = run(r, spec, traffic, range(21, 100), requests=10, errors=10)
    assert r is waiting  # waiting is not judging
    r = promote(r, spec, now=100)
    assert (r.phase, r.weight, r.reason) == ("promoted", 100, "promoted manually")


def test_blue_green_failing_preview_rolls_back():
    spec = RolloutSpec(strategy="blue-green", interval_s=20)
    r = start(spec, service="s", stable="a", candidate="b", now=0)
    r = run(r, spec, Traffic(), range(1, 20), requests=20, errors=20)
    assert (r.phase, r.weight, r.preview) == ("rolled-back", 0, False)
    assert r.history[-1].verdict.metric == "successRate"


# --- gradual -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "percent, duration, ready_after, step_size, step_ns",
    [
        # Knative's TestObserveReady, rollout_test.go (120 s duration; readiness times in seconds).
        (100, 120.0, 1982e-9, 1, 1202020202),  # "step-begin < 1s": 99 steps of 1%, (120-1)/99 s
        (100, 120.0, 2.400252014, 3, 3_000_000_000),  # "step-begin > 1s": ceil -> 3 s, 39 steps
        (75, 120.0, 2.400252014, 2, 3_000_000_000),  # "step size round up": round(74/39) = 2
        (50, 120.0, 2.400252014, 1, 3_000_000_000),  # "Percent not 100%": round(49/39) = 1
        (13, 120.0, 200.605170208, 12, 1_000_000_000),  # "días antiguos": one final 1 s step
        # Go's math.Round takes halves away from zero: 99/6 = 16.5 -> 17 (Python's round() says 16).
        (100, 7.0, 1.0, 17, 1_000_000_000),
        # Fractional step count, as in Go's float64 arithmetic: 7 s / 3 s = 2.33 steps of 42%.
        (100, 10.0, 3.0, 42, 3_000_000_000),
    ],
)
def test_gradual_steps_match_knative(percent, duration, ready_after, step_size, step_ns):
    plan = gradual_steps(percent, duration, ready_after)
    assert plan.step_size == step_size
    assert round(plan.step_duration_s * 1e9) == step_ns


def test_gradual_steps_observe_ready_case():
    assert gradual_steps(100, 120, 1) == GradualPlan(step_size=1, step_duration_s=1.202020202, steps=99.0)
    assert round(gradual_steps(100, 120, 1).step_duration_s, 5) == 1.20202


def test_gradual_steps_rejects_nonsense():
    with pytest.raises(ValueError):
        gradual_steps(1, 120, 1)
    with pytest.raises(ValueError):
        gradual_steps(100, math.nan, 1)


GRADUAL = RolloutSpec(strategy="gradual", duration_s=120)


def test_gradual_ramps_one_percent_every_1_2_seconds_and_promotes_at_120_s():
    traffic = Traffic()
    r = start(GRADUAL, service="s", stable="a", candidate="b", now=0)
    assert (r.weight, r.step_size) == (1, None)
    r = observe(r, GRADUAL, now=1, sample=traffic.add(5))  # the 1% is ready after 1 s: plan
    assert (r.weight, r.step_size, r.step_duration_s) == (1, 1, 1.202020202)
    assert r.history[-1].event == "planned"
    weights = {}
    for t in range(2, 121):
        r = observe(r, GRADUAL, now=t, sample=traffic.add(5))
        weights[t] = r.weight
    assert weights[2] == 1 and weights[3] == 2 and weights[60] == 50 and weights[119] == 99
    assert all(weights[t] == 1 + math.floor((t - 1) / 1.202020202) for t in range(2, 120))
    assert (r.phase, r.weight, weights[120]) == ("promoted", 100, 100)
    assert sum(h.event == "stepped" for h in r.history) == 98


def test_gradual_coarse_plan_caps_at_100():
    spec = RolloutSpec(strategy="gradual", duration_s=10)
    r = start(spec, service="s", stable="a", candidate="b", now=0)
    traffic = Traffic()
    r = observe(r, spec, now=3, sample=traffic.sample())  # ready after 3 s: 42% every 3 s
    seen = []
    for t in range(4, 13):
        r = observe(r, spec, now=t, sample=traffic.sample())
        seen.append(r.weight)
    assert seen == [1, 1, 43, 43, 43, 85, 85, 85, 100]
    assert r.phase == "promoted"


def test_gradual_after_a_stall_steps_from_now_instead_of_bursting():
    r = start(GRADUAL, service="s", stable="a", candidate="b", now=0)
    traffic = Traffic()
    r = observe(r, GRADUAL, now=1, sample=traffic.sample())
    r = observe(r, GRADUAL, now=30, sample=traffic.sample())
    assert (r.weight, r.step_started_at) == (2, 30)
    r = observe(r, GRADUAL, now=31, sample=traffic.sample())
    assert r.weight == 2
    r = observe(r, GRADUAL, now=32, sample=traffic.sample())
    assert r.weight == 3


def test_gradual_rolls_back_as_soon_as_analysis_fails():
    traffic = Traffic()
    r = start(GRADUAL, service="s", stable="a", candidate="b", now=0)
    r = observe(r, GRADUAL, now=1, sample=traffic.sample())
    r = run(r, GRADUAL, traffic, range(2, 20), requests=20)
    assert r.weight > 1 and r.active
    r = run(r, GRADUAL, traffic, range(20, 30), requests=20, errors=20)
    # The window runs from the start: 360 good, then 20 bad per second; 99% fails once errors pass 1%.
    assert (r.phase, r.weight) == ("rolled-back", 0)
    assert r.history[-1].at == 20 and r.history[-1].verdict.metric == "successRate"


def test_gradual_resumed_before_its_plan_times_readiness_from_the_resume():
    r = start(GRADUAL, service="s", stable="a", candidate="b", now=0)
    assert resume(r, now=500).step_started_at == 500  # restart before the plan: readiness timed from now
    r = observe(resume(r, now=500), GRADUAL, now=501, sample=Sample())
    assert (r.step_size, r.step_duration_s, r.weight) == (1, 1.202020202, 1)


# --- commands ----------------------------------------------------------------------------------------


def test_manual_promote_of_a_canary_jumps_to_100():
    r = start(CANARY, service="s", stable="a", candidate="b", now=0)
    r = promote(r, CANARY, now=5)
    assert (r.phase, r.weight, r.history[-1].event, r.history[-1].weight) == ("promoted", 100, "promoted", 5)
    with pytest.raises(RolloutError):
        promote(r, CANARY, now=6)
    with pytest.raises(RolloutError):
        abort(r, now=6, reason="alice")


def test_abort_then_retry_starts_over_with_the_same_revisions():
    traffic = Traffic()
    r = start(CANARY, service="s", stable="a", candidate="b", now=0)
    r = run(r, CANARY, traffic, range(1, 40), requests=10)
    assert r.step == 1
    r = abort(r, now=40, reason="aborted by alice via the API")
    assert (r.phase, r.weight, r.reason, r.active) == ("aborted", 0, "aborted by alice via the API", False)
    assert resume(r, now=41) is r  # an ended rollout has nothing to resume
    with pytest.raises(RolloutError):
        retry(start(CANARY, service="s", stable="a", candidate="b", now=0), CANARY, now=41)  # still running
    r = retry(r, CANARY, now=50)
    assert (r.phase, r.step, r.weight, r.failures, r.reason, r.baseline) == ("progressing", 0, 5, 0, None, None)
    assert (r.stable, r.candidate, r.started_at, r.step_started_at) == ("a", "b", 50, 50)
    assert [h.event for h in r.history] == ["started", "passed", "aborted", "retried"]
    r = run(r, CANARY, traffic, range(51, 82), requests=10)
    assert r.step == 1


def test_retry_after_rollback_resets_failures_and_gradual_plan():
    traffic = Traffic()
    r = start(GRADUAL, service="s", stable="a", candidate="b", now=0)
    r = observe(r, GRADUAL, now=1, sample=traffic.sample())
    r = run(r, GRADUAL, traffic, range(2, 10), requests=20, errors=20)
    assert r.phase == "rolled-back" and r.failures == 1
    r = retry(r, GRADUAL, now=100)
    assert (r.phase, r.weight, r.failures, r.step_size, r.step_duration_s) == ("progressing", 1, 0, None, None)
    with pytest.raises(RolloutError):
        retry(r, GRADUAL, now=101)  # still running


def test_resume_keeps_step_and_weight_with_a_fresh_window():
    traffic = Traffic()
    r = start(CANARY, service="s", stable="a", candidate="b", now=0)
    r = run(r, CANARY, traffic, range(1, 45), requests=10)
    assert (r.step, r.weight) == (1, 25)
    r = resume(r, now=1000)
    assert (r.step, r.weight, r.baseline, r.step_started_at) == (1, 25, None, 1000)
    assert r.history[-1].event == "resumed"
    # The restarted gateways count from zero; the first sample after resume is the new baseline.
    fresh = Traffic()
    r = observe(r, CANARY, now=1001, sample=fresh.add(3))
    assert r.baseline == fresh.sample()
    r = run(r, CANARY, fresh, range(1002, 1030), requests=10)
    assert r.step == 1  # a full interval from the resume
    r = run(r, CANARY, fresh, [1030], requests=10)
    assert (r.step, r.weight) == (2, 50)
    ended = abort(r, now=1031, reason="bob")
    assert resume(ended, now=1032) is ended


def test_start_refuses_the_stable_revision_as_candidate():
    with pytest.raises(RolloutError):
        start(CANARY, service="s", stable="a", candidate="a", now=0)


def test_spec_validation():
    for bad in (
        dict(strategy="linear"),
        dict(strategy="canary", steps=()),
        dict(strategy="canary", steps=(50, 25)),
        dict(strategy="canary", steps=(0, 50)),
        dict(strategy="canary", steps=(5, 101)),
        dict(strategy="canary", interval_s=0),
        dict(strategy="gradual", duration_s=math.inf),
        dict(strategy="canary", failure_limit=0),
    ):
        with pytest.raises(ValueError):
            RolloutSpec(**bad)
    assert RolloutSpec(strategy="canary", steps=[5, 50]).steps == (5, 50)


# --- JSON --------------------------------------------------------------------------------------------


def test_json_round_trip_in_every_phase():
    traffic = Traffic()
    states = []
    r = start(CANARY, service="s", stable="a", candidate="b", now=0)
    states.append(r)
    r = run(r, CANARY, traffic, range(1, 40), requests=10)
    states.append(r)  # mid-rollout, baseline with an +Inf bucket, verdicts in history
    states.append(run(r, CANARY, traffic, range(40, 50), requests=10, errors=5))  # rolled back
    states.append(abort(r, now=41, reason="carol"))
    g = start(GRADUAL, service="g", stable="a", candidate="b", now=0)
    states.append(run(g, GRADUAL, Traffic(), range(1, 10), requests=3))  # planned, stepping
    bg = start(RolloutSpec(strategy="blue-green", auto_promote=False), service="bg", stable="a", candidate="b", now=0)
    states.append(run(bg, RolloutSpec(strategy="blue-green", auto_promote=False), Traffic(), range(1, 40), requests=3))
    assert states[-1].phase == "awaiting-promotion"
    for state in states:
        text = state.to_json()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
        back = Rollout.from_json(text)
        assert back == state
        assert back.to_json() == text
    assert '"+Inf"' in states[1].to_json()


def test_from_json_rejects_unknown_versions():
    text = json.loads(start(CANARY, service="s", stable="a", candidate="b", now=0).to_json())
    text["version"] = 99
    with pytest.raises(ValueError):
        Rollout.from_json(json.dumps(text))
