"""Rollout analysis: is the candidate revision healthy, judged from Envoy's counters alone?

Envoy counts every answer of a revision's cluster by class and keeps its latency histogram; both are
cumulative since the gateway started. The engine keeps the counters at the start of an analysis window
(its baseline), `delta` turns baseline and now into what happened inside the window, and `judge` holds
that against the service's criteria. Pure functions of their arguments, like the autoscaler's decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Buckets = tuple[tuple[float, int], ...]
"""A cumulative histogram: (upper bound in ms, observations at or below it), ascending bounds."""

QUANTILE = 0.99


@dataclass(frozen=True)
class Criteria:
    """What a candidate must show before it gets more traffic."""

    min_requests: int = 50
    """Below this many requests in a window nothing is decided: a verdict on three requests is noise."""
    success_rate: float = 99.0
    """Percent of answers that are not 5xx (4xx are the client's doing, not the revision's)."""
    max_latency_p99_ms: float | None = None
    """None: latency is not judged."""

    def __post_init__(self) -> None:
        problems = []
        if self.min_requests < 0:
            problems.append(f"min requests cannot be negative, got {self.min_requests}")
        if not 0 <= self.success_rate <= 100:
            problems.append(f"success rate must be 0..100 percent, got {self.success_rate}")
        if self.max_latency_p99_ms is not None and not 0 < self.max_latency_p99_ms < math.inf:
            problems.append(f"max p99 latency must be a positive number of ms, got {self.max_latency_p99_ms}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Sample:
    """Cumulative counters of the candidate's cluster (summed over gateways) at one moment."""

    requests: int = 0
    """Completed requests: the sum of Envoy's upstream_rq_1xx..5xx."""
    errors: int = 0
    """upstream_rq_5xx."""
    latency_buckets: Buckets = ()
    """Envoy's upstream_rq_time histogram, cumulative; may end with math.inf."""


def delta(before: Sample, after: Sample) -> Sample:
    """What happened between two samples of the same cumulative counters.

    A counter that went backwards means an Envoy restarted and its stats began again at zero; Envoy
    resets all of a cluster's stats together, so then every counter counts from zero: the answer is
    `after` itself. Buckets are matched by upper bound; a bound `before` lacks counted zero there.
    """
    requests = after.requests - before.requests
    errors = after.errors - before.errors
    previous = dict(before.latency_buckets)
    buckets = tuple((bound, count - previous.get(bound, 0)) for bound, count in after.latency_buckets)
    if requests < 0 or errors < 0 or any(count < 0 for _, count in buckets):
        return after
    return Sample(requests, errors, buckets)


def p99(buckets: Buckets) -> float | None:
    """The 99th percentile of a cumulative histogram, as Prometheus' histogram_quantile(0.99) computes it."""
    return quantile(QUANTILE, buckets)


def quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' bucketQuantile: find the bucket holding rank q * total and interpolate linearly in it,
    the first bucket starting at 0. In the +Inf bucket the answer is the highest finite bound (all that is
    known is "more than that"). Without an +Inf bucket the last bucket's count is taken as the total, since
    Envoy's admin JSON lists only finite bounds. None when there are no observations.
    """
    if all(a[0] < b[0] for a, b in zip(buckets, buckets[1:])):
        ordered = buckets  # one reading's buckets, already in order (the history's every 5 s, per revision)
    else:
        merged: dict[float, int] = {}
        for bound, count in buckets:
            merged[bound] = max(merged.get(bound, 0), count)
        ordered = sorted(merged.items())
    # Cumulative counts cannot fall; sums over gateways read at slightly different moments can (Prometheus' ensureMonotonic).
    running = 0
    fixed: list[tuple[float, int]] = []
    for bound, count in ordered:
        running = max(running, count)
        fixed.append((bound, running))
    if not fixed or fixed[-1][1] <= 0:
        return None
    rank = q * fixed[-1][1]
    b = next(i for i, (_, count) in enumerate(fixed) if count >= rank)
    upper, count = fixed[b]
    if math.isinf(upper):
        finite = [bound for bound, _ in fixed if not math.isinf(bound)]
        return finite[-1] if finite else None
    if b == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0) if b == 0 else fixed[b - 1]
    return lower + (upper - lower) * (rank - below) / (count - below)


@dataclass(frozen=True)
class Verdict:
    """One judgement of an analysis window, with the numbers behind it for the status and the history."""

    outcome: Literal["pass", "fail", "inconclusive"]
    requests: int
    success_rate: float | None
    """Percent; None without requests."""
    latency_p99_ms: float | None
    metric: str | None = None
    """On fail: "successRate" or "maxLatencyP99"."""
    observed: float | None = None
    threshold: float | None = None
    message: str = ""


def judge(window: Sample, criteria: Criteria, *, final: bool) -> Verdict:
    """Hold one window's counters against the criteria.

    Nothing is decided below min_requests (and never anything on zero requests): no data is not a pass.
    A failure counts as soon as it shows, but a pass only when `final` (the step's interval is over):
    a window that looks fine after five seconds may not after thirty.
    """
    requests = max(0, window.requests)
    errors = min(max(0, window.errors), requests)
    rate = 100.0 * (requests - errors) / requests if requests else None
    latency = p99(window.latency_buckets)
    seen = dict(requests=requests, success_rate=rate, latency_p99_ms=latency)
    needed = max(1, criteria.min_requests)
    if requests < needed:
        return Verdict("inconclusive", **seen, message=f"{requests} of {needed} requests needed for a verdict")
    if rate < criteria.success_rate:
        return Verdict(
            "fail",
            **seen,
            metric="successRate",
            observed=rate,
            threshold=criteria.success_rate,
            message=f"success rate {_down(rate)}% < {criteria.success_rate:g}% over {requests} requests",
        )
    limit = criteria.max_latency_p99_ms
    if limit is not None and latency is not None and latency > limit:
        return Verdict(
            "fail",
            **seen,
            metric="maxLatencyP99",
            observed=latency,
            threshold=limit,
            message=f"p99 latency {_up(latency)} ms > {limit:g} ms over {requests} requests",
        )
    summary = f"success rate {_down(rate)}% >= {criteria.success_rate:g}%"
    if limit is not None:
        if latency is None:
            return Verdict("inconclusive", **seen, message=f"{summary}, but no latency observations yet")
        summary += f", p99 latency {_up(latency)} ms <= {limit:g} ms"
    summary += f" over {requests} requests"
    if not final:
        return Verdict("inconclusive", **seen, message=f"{summary} so far")
    return Verdict("pass", **seen, message=summary)


def _down(value: float) -> str:
    """One decimal, rounded down: 98.96% must not print as 99.0% beside a 99% threshold it missed."""
    return f"{math.floor(value * 10 + 1e-9) / 10:.1f}"


def _up(value: float) -> str:
    """One decimal, rounded up, for the same reason on the other side of a maximum."""
    return f"{math.ceil(value * 10 - 1e-9) / 10:.1f}"
