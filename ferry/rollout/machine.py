"""A rollout as a pure state machine: the candidate's counters in, the next state and its weight out.

A service with a rollout block moves its main traffic from the stable revision to a candidate:

* canary: through fixed weights (5, 25, 50, 100 %), each held for an interval and judged before the next;
* blue-green: the candidate is judged on its preview host only, then takes all traffic at once;
* gradual: Knative's time-driven ramp (gradual.py), 1 % first and then equal steps, rolled back as soon
  as the analysis fails.

Like the autoscaler's scaler.py, every function takes the time and the observation as arguments and
returns a new immutable `Rollout`; the I/O loop calls `observe` about once a second, stores the state
(`to_json`) and publishes `weight`. Nothing here reads a clock or the network.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from .analysis import Criteria, Sample, Verdict, delta, judge
from .gradual import gradual_steps

Strategy = Literal["canary", "blue-green", "gradual"]
Phase = Literal["progressing", "awaiting-promotion", "promoted", "rolled-back", "aborted"]
Event = Literal[
    "started", "planned", "passed", "stepped", "failed", "awaiting-promotion",
    "promoted", "rolled-back", "aborted", "retried", "resumed",
]

STRATEGIES = ("canary", "blue-green", "gradual")
ACTIVE: tuple[Phase, ...] = ("progressing", "awaiting-promotion")
ENDED: tuple[Phase, ...] = ("promoted", "rolled-back", "aborted")

GRADUAL_FIRST_WEIGHT = 1
"""Knative moves 1 % first and times the rest of the ramp on how long that took to become ready."""

_TICK_SLACK_S = 1e-6
"""A step due at 120 s computed as a float sum (1 + 99 * 1.2020202...) must not slip to the next tick."""

JSON_VERSION = 1


class RolloutError(ValueError):
    """A command that does not apply to the rollout's phase (promote a rolled-back rollout, ...)."""


@dataclass(frozen=True)
class RolloutSpec:
    """The service's rollout block."""

    strategy: Strategy
    steps: tuple[int, ...] = (5, 25, 50, 100)
    """Canary: percent of main traffic to the candidate at each step; after the last, 100 %."""
    interval_s: float = 30.0
    """Canary and blue-green: how long each step is judged before it may pass."""
    duration_s: float = 120.0
    """Gradual: the whole ramp from 1 % to 100 % (Knative's rollout-duration)."""
    criteria: Criteria = Criteria()
    failure_limit: int = 1
    """Failed checks that roll back; below it a failed check only restarts the step's window."""
    auto_promote: bool = True
    """Blue-green: take all traffic when the analysis passes; False waits for promote()."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "canary":
            if not self.steps:
                problems.append("a canary needs at least one step")
            elif any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 100 for s in self.steps):
                problems.append(f"canary steps must be whole percents 1..100, got {list(self.steps)}")
            elif any(a >= b for a, b in pairwise(self.steps)):
                problems.append(f"canary steps must increase, got {list(self.steps)}")
        if not 0 < self.interval_s < math.inf:
            problems.append(f"interval must be a positive number of seconds, got {self.interval_s}")
        if not 0 < self.duration_s < math.inf:
            problems.append(f"duration must be a positive number of seconds, got {self.duration_s}")
        if self.failure_limit < 1:
            problems.append(f"failure limit must be at least 1, got {self.failure_limit}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class StepRecord:
    """One transition, kept for the status: what happened, at which step and weight, and why.

    `step` and `weight` are those the event concerns: the step judged or left (passed, failed,
    rolled-back, aborted, promoted, awaiting-promotion) or the one entered (started, planned, stepped,
    retried, resumed).
    """

    at: float
    event: Event
    step: int
    weight: int
    verdict: Verdict | None = None
    note: str = ""


@dataclass(frozen=True)
class Rollout:
    service: str
    stable: str
    candidate: str
    strategy: Strategy
    phase: Phase
    step: int
    """Index into the plan: the canary's steps; blue-green 0; gradual, steps taken since 1 %."""
    weight: int
    """Percent of main traffic to the candidate now (blue-green: 0 until promoted, then 100)."""
    started_at: float
    step_started_at: float
    """Canary and blue-green: start of the analysis window's interval. Gradual: when the current
    weight took effect (before the plan exists: when the 1 % started, to time its readiness)."""
    baseline: Sample | None = None
    """Counters at the start of the analysis window; None: the next sample becomes it."""
    failures: int = 0
    history: tuple[StepRecord, ...] = ()
    reason: str | None = None
    """Why it ended: the failed metric with observed value and threshold, who aborted, how it promoted."""
    step_size: int | None = None
    """Gradual: percent per step, planned on the first observation; None before."""
    step_duration_s: float | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def preview(self) -> bool:
        """Blue-green before promotion: the candidate is served on the preview host only."""
        return self.strategy == "blue-green" and self.active

    def to_json(self) -> str:
        data = {"version": JSON_VERSION, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        data["baseline"] = _sample_out(self.baseline)
        data["history"] = [_record_out(r) for r in self.history]
        return json.dumps(data, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        data = json.loads(text)
        if data.pop("version", None) != JSON_VERSION:
            raise ValueError(f"not a version {JSON_VERSION} rollout state")
        data["baseline"] = _sample_in(data["baseline"])
        data["history"] = tuple(_record_in(r) for r in data["history"])
        return cls(**data)


def start(spec: RolloutSpec, *, service: str, stable: str, candidate: str, now: float) -> Rollout:
    """A new rollout of `candidate`, with `stable` keeping the rest of the main traffic."""
    if stable == candidate:
        raise RolloutError(f"{service}: candidate {candidate} is already the stable revision")
    weight = _first_weight(spec)
    return Rollout(
        service=service,
        stable=stable,
        candidate=candidate,
        strategy=spec.strategy,
        phase="progressing",
        step=0,
        weight=weight,
        started_at=now,
        step_started_at=now,
        history=(StepRecord(now, "started", 0, weight),),
    )


def observe(rollout: Rollout, spec: RolloutSpec, *, now: float, sample: Sample) -> Rollout:
    """One observation of the candidate's cumulative counters; returns `rollout` itself when nothing changed.

    Only a progressing rollout listens: an ended one, or a blue-green one waiting for its promotion, is
    left as it is.
    """
    if rollout.phase != "progressing":
        return rollout
    if rollout.strategy == "gradual":
        return _observe_gradual(rollout, spec, now, sample)
    if rollout.baseline is None:
        return _replace(rollout, baseline=sample)
    final = now - rollout.step_started_at >= spec.interval_s
    verdict = judge(delta(rollout.baseline, sample), spec.criteria, final=final)
    if verdict.outcome == "fail":
        return _failed(rollout, spec, now, sample, verdict, restart_clock=True)
    if verdict.outcome == "inconclusive":
        return rollout  # keep the window growing: no data is no pass, and no reason to give up
    if rollout.strategy == "blue-green":
        if spec.auto_promote:
            return _promoted(rollout, now, verdict, "analysis passed on the preview host")
        record = StepRecord(now, "awaiting-promotion", rollout.step, rollout.weight, verdict)
        return _replace(rollout, phase="awaiting-promotion", baseline=None, history=rollout.history + (record,))
    following = rollout.step + 1
    if following >= len(spec.steps):
        return _promoted(rollout, now, verdict, f"all {len(spec.steps)} canary steps passed")
    record = StepRecord(now, "passed", rollout.step, rollout.weight, verdict)
    return _replace(
        rollout,
        step=following,
        weight=spec.steps[following],
        baseline=sample,
        step_started_at=now,
        history=rollout.history + (record,),
    )


def _observe_gradual(rollout: Rollout, spec: RolloutSpec, now: float, sample: Sample) -> Rollout:
    """Knative's ramp: plan on the first observation (the 1 % is ready), then a step whenever one is due.
    The analysis watches one window from the start and only ever fails; time alone promotes."""
    if rollout.step_size is None:
        plan = gradual_steps(100, spec.duration_s, now - rollout.step_started_at)
        record = StepRecord(
            now, "planned", rollout.step, rollout.weight,
            note=f"{plan.step_size}% every {plan.step_duration_s:g} s",
        )
        return _replace(
            rollout,
            step_size=plan.step_size,
            step_duration_s=plan.step_duration_s,
            step_started_at=now,
            baseline=rollout.baseline or sample,
            history=rollout.history + (record,),
        )
    if rollout.baseline is None:
        rollout = _replace(rollout, baseline=sample)
    else:
        verdict = judge(delta(rollout.baseline, sample), spec.criteria, final=False)
        if verdict.outcome == "fail":
            rollout = _failed(rollout, spec, now, sample, verdict, restart_clock=False)
            if rollout.phase != "progressing":
                return rollout
    assert rollout.step_duration_s is not None
    due = rollout.step_started_at + rollout.step_duration_s
    if now + _TICK_SLACK_S < due:
        return rollout
    weight = min(100, rollout.weight + rollout.step_size)
    if weight >= 100:
        return _promoted(_replace(rollout, step=rollout.step + 1, weight=100), now, None, "gradual rollout reached 100%")
    # Keep to the schedule while on time; after a stall (more than a whole step late) step from now instead
    # of catching up in a burst.
    anchor = due if now - due < rollout.step_duration_s else now
    record = StepRecord(now, "stepped", rollout.step + 1, weight)
    return _replace(
        rollout, step=rollout.step + 1, weight=weight, step_started_at=anchor, history=rollout.history + (record,)
    )


def promote(rollout: Rollout, spec: RolloutSpec, *, now: float) -> Rollout:
    """Manual promotion: all main traffic to the candidate now, whatever the step or the analysis."""
    _require_active(rollout, "promote")
    return _promoted(rollout, now, None, "promoted manually")


def abort(rollout: Rollout, *, now: float, reason: str) -> Rollout:
    """Manual abort: all traffic back to the stable revision; `reason` says who and why."""
    _require_active(rollout, "abort")
    record = StepRecord(now, "aborted", rollout.step, rollout.weight, note=reason)
    return _replace(rollout, phase="aborted", weight=0, baseline=None, reason=reason, history=rollout.history + (record,))


def retry(rollout: Rollout, spec: RolloutSpec, *, now: float) -> Rollout:
    """A rolled-back or aborted rollout starts again from the first step with the same two revisions."""
    if rollout.phase not in ("rolled-back", "aborted"):
        raise RolloutError(f"{rollout.service}: only a rolled-back or aborted rollout can be retried, this one is {rollout.phase}")
    if spec.strategy != rollout.strategy:
        raise RolloutError(f"{rollout.service}: the rollout is {rollout.strategy}, the spec {spec.strategy}; start a new one")
    weight = _first_weight(spec)
    record = StepRecord(now, "retried", 0, weight)
    return _replace(
        rollout,
        phase="progressing",
        step=0,
        weight=weight,
        started_at=now,
        step_started_at=now,
        baseline=None,
        failures=0,
        reason=None,
        step_size=None,
        step_duration_s=None,
        history=rollout.history + (record,),
    )


def resume(rollout: Rollout, *, now: float) -> Rollout:
    """After a ferry restart: same step and weight, but a fresh analysis window, since the gateways'
    counters restarted with them. An ended rollout is returned as it is."""
    if not rollout.active:
        return rollout
    record = StepRecord(now, "resumed", rollout.step, rollout.weight)
    return _replace(rollout, baseline=None, step_started_at=now, history=rollout.history + (record,))


def _first_weight(spec: RolloutSpec) -> int:
    if spec.strategy == "canary":
        return spec.steps[0]
    if spec.strategy == "gradual":
        return GRADUAL_FIRST_WEIGHT
    return 0


def _failed(
    rollout: Rollout, spec: RolloutSpec, now: float, sample: Sample, verdict: Verdict, *, restart_clock: bool
) -> Rollout:
    """A failed check: roll back at the failure limit, else judge the same step afresh from here."""
    failures = rollout.failures + 1
    if failures >= spec.failure_limit:
        reason = (
            f"{verdict.metric} {verdict.observed:g} breached threshold {verdict.threshold:g} "
            f"at step {rollout.step} ({rollout.weight}%): {verdict.message}"
        )
        record = StepRecord(now, "rolled-back", rollout.step, rollout.weight, verdict)
        return _replace(
            rollout,
            phase="rolled-back",
            weight=0,
            failures=failures,
            baseline=None,
            reason=reason,
            history=rollout.history + (record,),
        )
    record = StepRecord(now, "failed", rollout.step, rollout.weight, verdict, note=f"failure {failures} of {spec.failure_limit}")
    return _replace(
        rollout,
        failures=failures,
        baseline=sample,
        step_started_at=now if restart_clock else rollout.step_started_at,
        history=rollout.history + (record,),
    )


def _promoted(rollout: Rollout, now: float, verdict: Verdict | None, reason: str) -> Rollout:
    record = StepRecord(now, "promoted", rollout.step, rollout.weight, verdict, note=reason)
    return _replace(rollout, phase="promoted", weight=100, baseline=None, reason=reason, history=rollout.history + (record,))


def _require_active(rollout: Rollout, command: str) -> None:
    if not rollout.active:
        raise RolloutError(f"{rollout.service}: cannot {command} a rollout that is {rollout.phase}")


def _replace(rollout: Rollout, **changes: Any) -> Rollout:
    return dataclasses.replace(rollout, **changes)


# JSON: math.inf (Envoy's last latency bucket) is no JSON number; it travels as "+Inf", as in Prometheus.


def _bound_out(bound: float) -> float | str:
    return "+Inf" if bound == math.inf else float(bound)


def _bound_in(bound: float | str) -> float:
    return math.inf if bound == "+Inf" else float(bound)


def _sample_out(sample: Sample | None) -> dict | None:
    if sample is None:
        return None
    return {
        "requests": sample.requests,
        "errors": sample.errors,
        "latency_buckets": [[_bound_out(b), c] for b, c in sample.latency_buckets],
    }


def _sample_in(data: dict | None) -> Sample | None:
    if data is None:
        return None
    buckets = tuple((_bound_in(b), int(c)) for b, c in data["latency_buckets"])
    return Sample(requests=int(data["requests"]), errors=int(data["errors"]), latency_buckets=buckets)


def _record_out(record: StepRecord) -> dict:
    return dataclasses.asdict(record)


def _record_in(data: dict) -> StepRecord:
    verdict = data.get("verdict")
    return StepRecord(**{**data, "verdict": None if verdict is None else Verdict(**verdict)})
