"""The activator's Prometheus metrics, cheap on the hot path and bounded at 1,000 revisions.

Knative users cannot see how long the activator held their requests; `ferry_activator_queue_seconds` says it.
It has no revision label on purpose: 1,000 revisions x 16 buckets would dwarf everything else ferry exports.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class ActivatorMetrics:
    def __init__(self, registry: CollectorRegistry, queued_now: Callable[[], int]):
        self._registry = registry
        self.requests = Counter("ferry_activator_requests", "Requests the activator answered, by revision and status",
                                ["revision", "code"], registry=registry)
        self.queue_seconds = Histogram("ferry_activator_queue_seconds",
                                       "Time a request was held by the activator before it was proxied",
                                       buckets=QUEUE_BUCKETS, registry=registry)
        self.queued = Gauge("ferry_activator_queued", "Requests waiting in the activator for an instance",
                            registry=registry)
        self.queued.set_function(queued_now)  # read at scrape time: nothing to update per request
        self._counters: dict[tuple[str, int], object] = {}

    def count(self, revision: str, code: int) -> None:
        counter = self._counters.get((revision, code))
        if counter is None:
            counter = self._counters[(revision, code)] = self.requests.labels(revision, str(code))
        counter.inc()

    def forget(self, revision: str) -> None:
        """Drop a removed revision's series, so revisions coming and going do not grow the registry forever."""
        for key in [key for key in self._counters if key[0] == revision]:
            del self._counters[key]
            self.requests.remove(revision, str(key[1]))

    def unregister(self) -> None:
        for collector in (self.requests, self.queue_seconds, self.queued):
            self._registry.unregister(collector)
