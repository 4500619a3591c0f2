"""Per-revision traffic: read from the gateways, summed over them, shown as Prometheus series on ferry's /metrics and
as a read API (`traffic_snapshot`) for views of ferry's own.

Every READ_EVERY_S ferry reads every gateway's revision clusters (`/stats/prometheus?usedonly`, one filtered query,
apart from the autoscaler's per-second one so that counts exist when nothing is autoscaled): answers by code class,
the `upstream_rq_time` histogram (Envoy keeps it per revision cluster, envoy/bootstrap.py) and requests in flight.
`usedonly`: a cluster that never carried a request sends nothing, so idle revisions cost nothing here. Each
gateway's readings are summed as counters that never go back: only a gateway's increases are added, and a
reading lower than the last one (that Envoy restarted, or re-made the cluster) counts from zero.

Series exist only for revisions the controller holds that run instances (a workload) or have carried requests;
a retired revision's go when the controller drops it after the cluster linger, so cardinality follows what runs
and what is used, not the file's size (a file of 10,000 services whose endpoints it gives, idle: no series).

The exposition text is rendered at each scrape from these plain numbers, in pieces of REVISIONS_PER_CHUNK
revisions per family; the API sends them as they come and hands the event loop back between pieces (no
prometheus_client objects per revision, nothing kept rendered between scrapes).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from ..envoy import prometheus
from ..envoy.admin import EnvoyAdmin
from ..tasks import every

if TYPE_CHECKING:
    from .controller import Controller

log = logging.getLogger("ferry.observe")

READ_EVERY_S = 5.0
FETCH_TIMEOUT_S = 2.0
REVISIONS_PER_CHUNK = 200  # per family: ~0.1-0.4 ms of rendering between two chances for the loop
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# The request-duration buckets kept (ms), a subset of Envoy's default bounds (a cumulative histogram loses nothing
# at the bounds it keeps): 0.5 ms and those beyond a minute are dropped. The last is +Inf.
BOUNDS_MS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
             math.inf)
# One reading (per gateway) and one total (per revision) are flat lists of numbers:
_CLASS0 = 0  # answers 1xx .. 5xx
_BUCKET0 = 5  # cumulative bucket counts, BOUNDS_MS
_SUM = _BUCKET0 + len(BOUNDS_MS)  # the durations' sum, ms
COUNTERS = _SUM + 1  # the slots that are counters (summed over gateways, never going back)
_IN_FLIGHT = COUNTERS  # a reading's requests in flight (active + pending): a gauge, not kept in totals
_READING = _IN_FLIGHT + 1

STATS_FILTER = r"^cluster\.[^./]+/[^.]+\.upstream_rq_([1-5]xx|active|pending_active|time)$"
_PREFIX = b"envoy_cluster_upstream_rq_"
_KINDS = {b"xx": 0, b"time_bucket": 1, b"time_sum": 2, b"active": 3, b"pending_active": 3}
_CLUSTER = b'envoy_cluster_name="'
_CLASS = b'envoy_response_code_class="'
_LE = b'le="'
_BOUND_INDEX: dict[bytes, int] = {}  # Envoy's text of a bound -> its slot (-1: a bound not kept)


def _bound_slot(le: bytes) -> int:
    slot = _BOUND_INDEX.get(le)
    if slot is None:
        bound = prometheus.bound(le.decode())
        slot = _BUCKET0 + BOUNDS_MS.index(bound) if bound in BOUNDS_MS else -1
        _BOUND_INDEX[le] = slot
    return slot


def _label(labels: bytes, key: bytes) -> bytes | None:
    at = labels.find(key)
    if at < 0:
        return None
    at += len(key)
    return labels[at:labels.find(b'"', at)]


def parse(body: bytes) -> dict[str, list]:
    """One gateway's answer to STATS_FILTER -> {revision: reading}. Revision clusters are "<service>/<revision>"
    (ferry's own have no slash); names are DNS labels, so no escapes to undo. Pure, and the hot path of this module
    (bench/metrics.py times it): bytes operations, no regex, no dict per line."""
    found: dict[bytes, list] = {}
    for line in body.split(b"\n"):
        if not line.startswith(_PREFIX):
            continue
        head, _, value = line.rpartition(b" ")
        name, _, labels = head.partition(b"{")
        kind = _KINDS.get(name[len(_PREFIX):])
        if kind is None:
            continue
        cluster = _label(labels, _CLUSTER)
        if cluster is None:
            continue
        slash = cluster.find(b"/")
        if slash < 0:
            continue
        revision = cluster[slash + 1:]
        reading = found.get(revision)
        if reading is None:
            reading = found[revision] = [0] * _READING
        if kind == 0:
            code = _label(labels, _CLASS)
            if code is not None and len(code) == 1 and 49 <= code[0] <= 53:  # "1" .. "5"
                reading[_CLASS0 + code[0] - 49] = int(value)
        elif kind == 1:
            le = _label(labels, _LE)
            slot = _bound_slot(le) if le is not None else -1
            if slot >= 0:
                reading[slot] = int(float(value))
        elif kind == 2:
            reading[_SUM] = float(value)
        else:
            reading[_IN_FLIGHT] += int(float(value))
    return {revision.decode(): reading for revision, reading in found.items()}


class TrafficBook:
    """Per revision, counters summed over gateways that do not go back when a gateway restarts, and the requests in
    flight at the last reading. A gateway that did not answer keeps its last reading (its next increases count);
    a revision not in `known` is forgotten (the controller dropped it: its linger is over)."""

    def __init__(self) -> None:
        self.totals: dict[str, list] = {}  # revision -> COUNTERS numbers
        self.in_flight: dict[str, int] = {}  # revision -> requests in flight, summed over the gateways that answered
        self._last: dict[str, dict[str, tuple]] = {}  # gateway -> revision -> its counters last read

    def add(self, gateways: Mapping[str, Mapping[str, list]], known: Mapping[str, object]) -> set[str]:
        """One read of every gateway that answered; returns the revisions whose totals changed."""
        changed: set[str] = set()
        totals = self.totals
        in_flight: dict[str, int] = {}
        for source, readings in gateways.items():
            before = self._last.get(source, {})
            now: dict[str, tuple] = {}
            for revision, reading in readings.items():
                if revision not in known:
                    continue
                if reading[_IN_FLIGHT]:
                    in_flight[revision] = in_flight.get(revision, 0) + reading[_IN_FLIGHT]
                counters = tuple(reading[:COUNTERS])
                now[revision] = counters
                last = before.get(revision)
                if last == counters or (last is None and not any(counters)):
                    continue  # nothing new (or only requests in flight, no answer yet)
                total = totals.get(revision)
                if total is None:
                    total = totals[revision] = [0] * COUNTERS
                if last is None or any(v < p for v, p in zip(counters, last)):
                    last = (0,) * COUNTERS  # new to this gateway, or its counters restarted
                for i in range(COUNTERS):
                    total[i] += counters[i] - last[i]
                changed.add(revision)
            # a revision this gateway no longer reports keeps its last reading only while ferry knows it
            for revision, counters in before.items():
                if revision not in now and revision in known:
                    now[revision] = counters
            self._last[source] = now
        for revision in [r for r in totals if r not in known]:
            del totals[revision]
            for last in self._last.values():
                last.pop(revision, None)
        self.in_flight = in_flight
        return changed


class ActivatorCounts(Protocol):
    in_flight: int


@dataclass(frozen=True, slots=True)
class RevisionTraffic:
    """A revision's traffic as the last read saw it, summed over gateways."""

    service: str
    revision: str
    tag: str  # "" when none (several: comma-separated)
    requests: Mapping[str, int]  # cumulative answers by class: "2xx", "3xx", "4xx", "5xx" (and "1xx" when seen)
    duration_ms: tuple[tuple[float, int], ...] | None  # cumulative buckets (upper bound ms, count), last inf
    in_flight: int


class RevisionObserver:
    """The reads (a loop the leader runs), the totals, and what is made of them: the per-revision series and the
    snapshot. Owned by the controller, whose state it only reads."""

    def __init__(self, controller: Controller, admins: Callable[[], Iterable[EnvoyAdmin]],
                 activator: Callable[[], Mapping[str, ActivatorCounts]], *, interval_s: float = READ_EVERY_S):
        self.controller = controller
        self.admins = admins
        self.activator = activator
        self.interval_s = interval_s
        self.book = TrafficBook()
        self._views: dict[str, RevisionTraffic] = {}
        self.snapshot: Mapping[str, RevisionTraffic] = MappingProxyType(self._views)  # read-only, no copy
        self.reads = 0

    async def read_once(self) -> None:
        known = self.controller.revisions
        admins = list(self.admins())
        if not known or not admins:
            return
        path = prometheus.path(STATS_FILTER)
        answers = await asyncio.gather(*(a.fetch(path, FETCH_TIMEOUT_S) for a in admins), return_exceptions=True)
        gateways = {}
        for admin, answer in zip(admins, answers, strict=True):
            if isinstance(answer, BaseException):
                log.debug("gateway stats unavailable", extra={"admin": f"{admin.host}:{admin.port}",
                                                              "error": str(answer)})
                continue
            gateways[f"{admin.host}:{admin.port}"] = parse(answer)
        self.absorb(gateways)

    def absorb(self, gateways: Mapping[str, Mapping[str, list]]) -> None:
        """One read's parsed answers in (pure but for this object's state; tests feed it directly)."""
        known = self.controller.revisions
        before_flight = self.book.in_flight
        changed = self.book.add(gateways, known)
        held = {r: c.in_flight for r, c in self.activator().items() if c.in_flight}
        views = self._views
        totals, in_flight = self.book.totals, self.book.in_flight
        for revision in changed | set(in_flight) | set(before_flight) | set(held) | set(views):
            total = totals.get(revision)
            runtime = known.get(revision)
            flight = max(in_flight.get(revision, 0), held.get(revision, 0))
            if runtime is None or (total is None and not flight):
                views.pop(revision, None)
                continue
            view = views.get(revision)
            tag = tag_of(self.controller, runtime.revision.service, revision)
            if view is not None and revision not in changed and view.in_flight == flight and view.tag == tag:
                continue
            views[revision] = _view(runtime.revision.service, revision, tag, total, flight)
        self.reads += 1

    async def run(self) -> None:
        await every(self.interval_s, self.read_once, log, "revision traffic read")

    def chunks(self) -> Iterator[bytes]:
        return render(self.controller, self.book)


def traffic_snapshot(controller: Controller) -> Mapping[str, RevisionTraffic]:
    """Revision name -> its traffic at the last read (every READ_EVERY_S): every revision that carried requests
    and that ferry still holds. A read-only view of the observer's own dict (no copy; entries are replaced, never
    changed, at each read): iterate it at once or copy what you keep."""
    return controller.observer.snapshot


def _view(service: str, revision: str, tag: str, total: list | None, in_flight: int) -> RevisionTraffic:
    if total is None:
        return RevisionTraffic(service, revision, tag, {}, None, in_flight)
    requests = {name: total[_CLASS0 + i] for i, name in enumerate(CODE_CLASSES) if i or total[_CLASS0]}
    buckets = total[_BUCKET0:_SUM]
    duration = tuple(zip(BOUNDS_MS, buckets)) if buckets[-1] else None
    return RevisionTraffic(service, revision, tag, requests, duration, in_flight)


def tag_of(c: Controller, service_name: str, revision: str) -> str:
    """The tags the service's served traffic gives the revision ("" for none)."""
    service = c.services.get(service_name)
    traffic = service.traffic if service is not None else None
    if traffic is None or not traffic.tags:
        return ""
    return ",".join(sorted(tag for tag, name in traffic.tags if name == revision))


# -- the exposition text -------------------------------------------------------------------------------------------

SERIES = {  # name -> (type, help); the order of the exposition
    "ferry_revision_requests_total": (
        "counter", "Answers to requests for the revision through the gateways, summed over gateways, by response "
                   "code class (code_class); a class never answered has no series"),
    "ferry_revision_request_duration_seconds": (
        "histogram", "Time from the gateway's request to the end of the revision's answer (Envoy's upstream_rq_time), "
                     "summed over gateways"),
    "ferry_revision_requests_in_flight": (
        "gauge", "Requests in flight to the revision at the last read: the gateways' sum, or the activator's count "
                 "if larger"),
    "ferry_revision_instances_desired": ("gauge", "Instances the autoscaler wants (endpoints given in the file: "
                                                  "their number)"),
    "ferry_revision_instances_ready": ("gauge", "Ready instances (endpoints the gateways are given)"),
    "ferry_revision_instances_actual": ("gauge", "Instances running, ready or not, not being stopped"),
    "ferry_revision_panic_mode": ("gauge", "1 while the revision's autoscaler is in panic mode (revisions ferry runs)"),
    "ferry_revision_activator_in_path": ("gauge", "1 while the gateways send the revision's requests to the "
                                                  "activator (revisions ferry runs)"),
    "ferry_rollout_step": ("gauge", "The active rollout's step (canary: index into its steps; gradual: steps "
                                    "taken), on its candidate"),
    "ferry_rollout_weight_ratio": ("gauge", "Share of the service's main traffic the active rollout gives its "
                                            "candidate and its stable revision (0..1)"),
}
# The names a query uses: a histogram's samples are its _bucket, _sum and _count.
QUERYABLE = frozenset(
    name + suffix for name, (kind, _) in SERIES.items()
    for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",)))
_LE_TEXT = tuple("+Inf" if b == math.inf else f"{b / 1000:g}" for b in BOUNDS_MS)


def _head(name: str) -> bytes:
    kind, text = SERIES[name]
    # the text format names a counter's family with its _total (prometheus_client's parser strips it)
    return f"# HELP {name} {text}.\n# TYPE {name} {kind}\n".encode()


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def render(c: Controller, book: TrafficBook) -> Iterator[bytes]:
    """The per-revision series as Prometheus text, a family at a time, REVISIONS_PER_CHUNK revisions per piece.
    A family with no sample is left out (its HELP and TYPE too)."""
    totals = book.totals
    names = [name for name, runtime in list(c.revisions.items()) if runtime.managed or name in totals]
    yield b""  # the walk above was a step: the caller may hand the loop back here
    labels: dict[str, str] = {}
    for at in range(0, len(names), REVISIONS_PER_CHUNK):
        for name in names[at:at + REVISIONS_PER_CHUNK]:
            runtime = c.revisions.get(name)
            if runtime is None:
                continue
            service = runtime.revision.service
            tag = tag_of(c, service, name)
            labels[name] = f'service="{service}",revision="{name}"' + (f',tag="{tag}"' if tag else "")
        yield b""
    live = list(labels)
    busy = [name for name in live if name in totals]
    yield from _family(busy, "ferry_revision_requests_total", lambda name: _requests(labels[name], totals[name]))
    yield from _family([n for n in busy if totals[n][_SUM - 1]], "ferry_revision_request_duration_seconds",
                       lambda name: _histogram(labels[name], totals[name]))
    yield from _gauges(c, book, live, labels)
    yield from _rollouts(c)


def _family(names: list[str], name: str, lines: Callable[[str], str]) -> Iterator[bytes]:
    if not names:
        return
    yield _head(name)
    for at in range(0, len(names), REVISIONS_PER_CHUNK):
        yield "".join(lines(n) for n in names[at:at + REVISIONS_PER_CHUNK]).encode()


def _requests(labels: str, total: list) -> str:
    return "".join(f'ferry_revision_requests_total{{{labels},code_class="{CODE_CLASSES[i]}"}} {total[_CLASS0 + i]}\n'
                   for i in range(5) if total[_CLASS0 + i])


def _histogram(labels: str, total: list) -> str:
    lines = [f'ferry_revision_request_duration_seconds_bucket{{{labels},le="{le}"}} {total[_BUCKET0 + i]}\n'
             for i, le in enumerate(_LE_TEXT)]
    lines.append(f"ferry_revision_request_duration_seconds_sum{{{labels}}} {_num(total[_SUM] / 1000)}\n")
    lines.append(f"ferry_revision_request_duration_seconds_count{{{labels}}} {total[_SUM - 1]}\n")
    return "".join(lines)


def _gauges(c: Controller, book: TrafficBook, names: list[str], labels: dict[str, str]) -> Iterator[bytes]:
    """In-flight, the instances, panic and the activator: one pass over the revisions, then a family each."""
    autoscaler = c.autoscaler
    states, loads, flight = autoscaler.states, autoscaler.last_load, book.in_flight
    held = c.activator.stats()
    rows: list[tuple] = []  # (name, in flight, desired, ready, actual, panic, activator; the last two None: unmanaged)
    for name in names:
        runtime = c.revisions.get(name)
        if runtime is None:
            continue
        load, counts = loads.get(name), held.get(name)
        in_flight = max(flight.get(name, 0), int(load.concurrency) if load is not None else 0,
                        counts.in_flight if counts is not None else 0)
        ready = len(runtime.endpoints)
        if runtime.managed:
            state = states.get(name)
            desired = 0 if runtime.retiring else state.scale if state is not None else runtime.instances
            panic = 1 if state is not None and state.decider.panic_since is not None else 0
            rows.append((name, in_flight, desired, ready, c.backend.counts(name).total, panic,
                         1 if runtime.activator_in_path else 0))
        else:
            rows.append((name, in_flight, ready, ready, ready, None, None))
    for column, series in enumerate(("ferry_revision_requests_in_flight", "ferry_revision_instances_desired",
                                     "ferry_revision_instances_ready", "ferry_revision_instances_actual",
                                     "ferry_revision_panic_mode", "ferry_revision_activator_in_path"), start=1):
        values = [(row[0], row[column]) for row in rows if row[column] is not None]
        if not values:
            continue
        yield _head(series)
        for at in range(0, len(values), REVISIONS_PER_CHUNK):
            yield "".join(f"{series}{{{labels[name]}}} {value}\n"
                          for name, value in values[at:at + REVISIONS_PER_CHUNK]).encode()


def _rollouts(c: Controller) -> Iterator[bytes]:
    steps, weights = [], []
    for service in list(c.services.values()):
        rollout = service.rollout
        if rollout is None or not rollout.active:
            continue
        candidate = f'service="{service.name}",revision="{rollout.candidate}"'
        steps.append(f"ferry_rollout_step{{{candidate}}} {rollout.step}\n")
        weights.append(f"ferry_rollout_weight_ratio{{{candidate}}} {_num(rollout.weight / 100)}\n")
        if rollout.stable and rollout.stable != rollout.candidate:
            weights.append(f'ferry_rollout_weight_ratio{{service="{service.name}",revision="{rollout.stable}"}} '
                           f"{_num((100 - rollout.weight) / 100)}\n")
    if steps:
        yield _head("ferry_rollout_step") + "".join(steps).encode()
        yield _head("ferry_rollout_weight_ratio") + "".join(weights).encode()
