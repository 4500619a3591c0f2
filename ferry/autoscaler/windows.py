"""Sliding metric windows, ported from Knative's TimedFloat64Buckets (pkg/autoscaler/aggregation).

A window keeps one total per whole second for its last `seconds` seconds; values recorded in the
same second add up. Its average divides by the span that actually holds data, so a window that
started filling 6 s ago is averaged over 6 s, not over its full length, and the autoscaler
reacts to a fresh revision at once instead of seeing its load diluted by seconds it never lived.

Knative's KPA uses these plain averages for both its stable and panic windows. Its exponentially
weighted variant (WeightedFloat64Buckets) is used only when a revision opts in with the
`metric-aggregation-algorithm: weightedExponential` annotation, so it is not ported.

Everything here is immutable: `record` returns a new window and time is always passed in, so the
same inputs give the same averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _round6(value: float) -> float:
    """Round half away from zero to 6 digits, as Knative does, so ceil(average / target) is stable."""
    if value >= 0:
        return math.floor(value * 1e6 + 0.5) / 1e6
    return -math.floor(-value * 1e6 + 0.5) / 1e6


@dataclass(frozen=True)
class Window:
    """Per-second totals over the last `seconds` seconds up to the newest write."""

    seconds: int
    first_write: int | None = None
    last_write: int | None = None
    buckets: tuple[tuple[int, float], ...] = ()  # (second, total), oldest first
    total: float = 0.0  # sum of the buckets, kept so averaging 1,000 windows per tick stays cheap

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ValueError(f"a window needs at least one 1 s bucket, got {self.seconds}")

    def record(self, now: float, value: float) -> Window:
        """Add `value` to the bucket of `now`'s second.

        A write after a whole window of silence starts the window afresh (the averaging span
        restarts). A late write still inside the window is added to its own second; an older one
        is dropped, like Knative's ring would. Buckets stay sorted, so the usual write (this second
        or the next) touches only the ends: the autoscaler records one per revision per second.
        """
        second = math.floor(now)
        last = self.last_write
        if last is None or second - last >= self.seconds:
            return _window(self.seconds, second, second, ((second, value),), value)
        buckets = self.buckets
        if second == last:
            _, total = buckets[-1]
            return _window(
                self.seconds, self.first_write, last, buckets[:-1] + ((second, total + value),), self.total + value
            )
        if second > last:
            cutoff = second - self.seconds
            start, dropped = 0, 0.0
            while buckets[start][0] <= cutoff:  # the newest bucket is inside the window: this stops
                dropped += buckets[start][1]
                start += 1
            return _window(
                self.seconds, self.first_write, second, buckets[start:] + ((second, value),),
                self.total - dropped + value,
            )
        if second <= last - self.seconds:
            return self
        totals = dict(buckets)
        totals[second] = totals.get(second, 0.0) + value
        return _window(
            self.seconds, min(self.first_write, second), last, tuple(sorted(totals.items())), sum(totals.values())
        )

    def average(self, now: float) -> float | None:
        """Window total / min(filled span, window); None when nothing was written within the window.

        Seconds after the last write count as zeros but shrink the span they can fill, exactly as
        in Knative: with a 60 s window last written 10 s ago the average is over the 50 s before.
        A `now` before the last write reads as the last write.
        """
        last = self.last_write
        if last is None:
            return None
        idle = math.floor(now) - last
        if idle <= 0:
            idle = 0
        elif idle >= self.seconds:
            return None
        total = self.total
        if idle:
            cutoff = last + idle - self.seconds
            for bucket_second, value in self.buckets:
                if bucket_second > cutoff:
                    break
                total -= value
        span = min(last - self.first_write + 1, self.seconds - idle)
        return _round6(total / span)


def _window(seconds: int, first_write: int | None, last_write: int | None, buckets: tuple, total: float) -> Window:
    """A Window without the frozen dataclass's __init__ (a setattr per field, and the check): `record` makes two
    per revision per second, so at 1,000 revisions this is half of turning a scrape into window entries."""
    new = object.__new__(Window)
    new.__dict__.update(seconds=seconds, first_write=first_write, last_write=last_write, buckets=buckets, total=total)
    return new


def stable_and_panic(
    stable: Window, panic: Window, now: float, *, scraping: bool = True
) -> tuple[float, float] | None:
    """The observed (stable, panic) pair for a decision, or None when there is nothing to decide on.

    As in Knative's metric collector, an empty stable window means "no data yet" only while
    instances are being scraped; with nothing to scrape (scaled to zero) it reads as no load, so
    the decider can still take the revision down to or keep it at zero. An empty panic window
    beside a non-empty stable one reads as 0.
    """
    stable_value = stable.average(now)
    if stable_value is None and scraping:
        return None
    return stable_value or 0.0, panic.average(now) or 0.0
