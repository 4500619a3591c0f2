"""The last 15 minutes of each revision's traffic, for the dashboard's charts: request rate, error rate (5xx share)
and p99 latency, sampled every EVERY_S from cumulative counters summed over gateways.

It reads an injected `snapshot()` returning revision -> an object shaped like reconcile/observe.py's
RevisionTraffic (service, revision, tag, requests: {"2xx": n, ...} cumulative, duration_ms: ((upper_ms,
cumulative_count), ...) or None, in_flight); the daemon passes the real one (daemon/roles.py, "WIRING").

Bounded at any number of services: a point is kept only for a sample in which the revision answered or held
requests; points live in fixed rings of compact arrays (180 points of 4 floats, ~4.3 KB a revision), at most
MAX_SERIES revisions (the least recently busy go first); the previous counters are kept for the revisions of
the last snapshot only. A pass hands the event loop back every SLICE items.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from ..rollout.analysis import quantile

log = logging.getLogger("ferry.ui")

EVERY_S = 5.0
WINDOW_S = 900.0
MAX_SERIES = 2000
SLICE = 200  # revisions per step of a pass, between two hand-backs of the event loop
FIELDS = 4  # rps, error percent (NaN: no answers), p99 ms (NaN: unknown), in flight


class RevisionTrafficLike(Protocol):
    service: str
    revision: str
    tag: str | None
    requests: Mapping[str, int]
    duration_ms: tuple[tuple[float, int], ...] | None
    in_flight: int


Snapshot = Callable[[], Mapping[str, Any]]


def no_traffic() -> Mapping[str, Any]:
    return {}


NAN = float("nan")


class Series:
    """A ring of SLOTS points; a slot is a sample time // every_s."""

    __slots__ = ("service", "revision", "tag", "slots", "values", "last")

    def __init__(self, service: str, revision: str, tag: str | None, size: int):
        self.service, self.revision, self.tag = service, revision, tag
        self.slots = array("q", [-1]) * size
        self.values = array("f", [0.0]) * (size * FIELDS)
        self.last = -1  # the newest slot written

    def put(self, slot: int, point: tuple[float, float, float, float]) -> None:
        at = slot % len(self.slots)
        self.slots[at] = slot
        self.values[at * FIELDS:(at + 1) * FIELDS] = array("f", point)
        self.last = slot

    def points(self, oldest: int) -> list[tuple[int, float, float, float, float]]:
        found = []
        for at, slot in enumerate(self.slots):
            if slot >= oldest:
                found.append((slot, *self.values[at * FIELDS:(at + 1) * FIELDS]))
        found.sort()
        return found


def _counts(requests: Mapping[str, int]) -> tuple[int, int]:
    """(answers, 5xx answers)."""
    return sum(requests.values()), requests.get("5xx", 0)


class TrafficHistory:
    def __init__(self, snapshot: Snapshot = no_traffic, *, every_s: float = EVERY_S, window_s: float = WINDOW_S,
                 max_series: int = MAX_SERIES, clock: Callable[[], float] = time.time):
        self.snapshot = snapshot
        self.every_s = every_s
        self.window_s = window_s
        self.size = max(1, round(window_s / every_s))
        self.max_series = max_series
        self.clock = clock
        self._previous: dict[str, tuple[float, int, int, Any]] = {}  # revision -> (at, answers, 5xx, buckets)
        self._series: dict[str, Series] = {}  # least recently busy first
        self._by_service: dict[str, set[str]] = {}

    # -- sampling ---------------------------------------------------------------------------------------

    def observe(self, now: float, items: Iterable[Any], previous: dict | None = None) -> dict:
        """Fold one step of a snapshot in: the revisions' counters at `now`. Returns the counters kept for the
        next pass (`previous` is that mapping being built; a whole pass is `finish(now, observe(now, all))`)."""
        kept = {} if previous is None else previous
        slot = int(now // self.every_s)
        last = self._previous
        for traffic in items:
            answers, errors = _counts(traffic.requests)
            buckets = traffic.duration_ms or ()
            name = traffic.revision
            kept[name] = (now, answers, errors, buckets)
            before = last.get(name)
            if before is None:
                continue  # a baseline: the first counters say nothing about the last interval
            was_at, was_answers, was_errors, was_buckets = before
            delta = answers - was_answers
            if delta < 0 or errors < was_errors:  # the gateway restarted: its counters began again
                delta, was_errors, was_buckets = answers, 0, ()
            in_flight = traffic.in_flight
            if delta <= 0 and in_flight <= 0:
                continue
            elapsed = max(now - was_at, 1e-3)
            error_pct = 100.0 * (errors - was_errors) / delta if delta > 0 else NAN
            p99 = _p99(was_buckets, buckets) if delta > 0 else None
            self._point(traffic, slot, (delta / elapsed, error_pct, NAN if p99 is None else p99, float(in_flight)))
        return kept

    def finish(self, now: float, kept: dict) -> None:
        """End a pass: its counters replace the last ones; series quiet for the whole window are dropped."""
        self._previous = kept
        oldest = int(now // self.every_s) - self.size + 1
        for name in [n for n, s in self._series.items() if s.last < oldest]:
            self._drop(name)

    def sample(self, now: float | None = None) -> None:
        """A whole pass at once (tests, small installs)."""
        now = self.clock() if now is None else now
        self.finish(now, self.observe(now, list(self.snapshot().values())))

    async def run(self) -> None:
        """Sample every `every_s` until cancelled, SLICE revisions at a time."""
        while True:
            try:
                now = self.clock()
                items = list(self.snapshot().values())
                kept: dict = {}
                for at in range(0, len(items), SLICE):
                    self.observe(now, items[at:at + SLICE], kept)
                    await asyncio.sleep(0)
                self.finish(now, kept)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad snapshot must not end the history
                log.exception("traffic history: sampling failed")
            await asyncio.sleep(self.every_s)

    def _point(self, traffic: Any, slot: int, point: tuple[float, float, float, float]) -> None:
        name = traffic.revision
        series = self._series.pop(name, None)  # re-inserted last: most recently busy
        if series is None:
            while len(self._series) >= self.max_series:
                self._drop(next(iter(self._series)))
            series = Series(traffic.service, name, traffic.tag, self.size)
            self._by_service.setdefault(traffic.service, set()).add(name)
        series.tag = traffic.tag
        series.put(slot, point)
        self._series[name] = series

    def _drop(self, name: str) -> None:
        series = self._series.pop(name)
        names = self._by_service.get(series.service)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_service[series.service]

    # -- reading ----------------------------------------------------------------------------------------

    def for_service(self, service: str, now: float | None = None) -> dict:
        """The service's revisions that carried requests in the window: revision -> {tag, points: [[unix time,
        rps, error %, p99 ms, in flight], ...]} (null for an error % with no answers or an unknown p99)."""
        now = self.clock() if now is None else now
        oldest = int(now // self.every_s) - self.size + 1
        found = {}
        for name in sorted(self._by_service.get(service, ())):
            series = self._series[name]
            points = [[slot * self.every_s, _round(rps), _round(err), _round(p99), int(flight)]
                      for slot, rps, err, p99, flight in series.points(oldest)]
            if points:
                found[name] = {"tag": series.tag, "points": points}
        return {"every_s": self.every_s, "window_s": self.window_s, "revisions": found}

    def tracked(self) -> int:
        return len(self._series)


def _p99(before: Any, after: Any) -> float | None:
    """The p99 of what the histogram counted between two cumulative readings (Prometheus' histogram_quantile, the
    rollout checks' `quantile`)."""
    if not after:
        return None
    previous = dict(before)
    return quantile(0.99, tuple((bound, count - previous.get(bound, 0)) for bound, count in after))


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)  # NaN -> None
