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

A read's answers are parsed and summed in a worker thread (at 10,000 busy revisions that is ~0.5 s of CPU), which
swaps new arrays and dicts in whole, so the event loop never sees half a read. The exposition text is rendered at
each scrape from these plain numbers, in pieces of REVISIONS_PER_CHUNK revisions per family; the API sends them as
they come and hands the event loop back between pieces (no prometheus_client object per revision, nothing kept
rendered between scrapes). `traffic_snapshot` gives one read's figures as `RevisionTraffic` entries, made as they
are asked for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
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
# One reading (per gateway) and one total (per revision) are flat arrays of numbers:
_CLASS0 = 0  # answers 1xx .. 5xx
_BUCKET0 = 5  # cumulative bucket counts, BOUNDS_MS
_SUM = _BUCKET0 + len(BOUNDS_MS)  # the durations' sum, ms
COUNTERS = _SUM + 1  # the slots that are counters (summed over gateways, never going back)
_IN_FLIGHT = COUNTERS  # a reading's requests in flight (active + pending): a gauge, not kept in totals
_READING = _IN_FLIGHT + 1
_NEW_READING = array("d", bytes(8 * _READING))  # zeros

STATS_FILTER = r"^cluster\.[^./]+/[^.]+\.upstream_rq_([1-5]xx|active|pending_active|time)$"
# A sample line split at its double quotes: what comes before the first names the series and its first label.
_CLASSES, _BUCKETS, _DURATION_SUM, _ACTIVE = range(4)
_HEADS = {
    b"envoy_cluster_upstream_rq_xx{envoy_response_code_class=": _CLASSES,  # "2" then the cluster
    b"envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=": _BUCKETS,  # the cluster, then le
    b"envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=": _DURATION_SUM,
    b"envoy_cluster_upstream_rq_active{envoy_cluster_name=": _ACTIVE,
    b"envoy_cluster_upstream_rq_pending_active{envoy_cluster_name=": _ACTIVE,
}
_PARTS = {_CLASSES: 5, _BUCKETS: 5, _DURATION_SUM: 3, _ACTIVE: 3}
_BOUND_INDEX: dict[bytes, int] = {}  # Envoy's text of a bound -> its slot (-1: a bound not kept)


def _bound_slot(le: bytes) -> int:
    slot = _BOUND_INDEX.get(le)
    if slot is None:
        bound = prometheus.bound(le.decode())
        slot = _BUCKET0 + BOUNDS_MS.index(bound) if bound in BOUNDS_MS else -1
        _BOUND_INDEX[le] = slot
    return slot


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return int(float(value))


def _lines(body: bytes, piece: int = 1 << 16) -> Iterator[bytes]:
    """The body's lines, split a piece at a time: one split of a 20 MB answer is a single 30 ms call that a thread
    running it would not let go of (the interpreter switches threads between bytecodes, not inside a call)."""
    start, size = 0, len(body)
    while start < size:
        end = body.find(b"\n", start + piece)
        if end < 0:
            end = size
        yield from body[start:end].split(b"\n")
        start = end + 1


def parse(body: bytes) -> dict[str, array]:
    """One gateway's answer to STATS_FILTER -> {revision: reading}. Revision clusters are "<service>/<revision>"
    (ferry's own have no slash); names are DNS labels, so no quote or escape inside a value.

    The hot path of this module (bench/metrics.py times it: 22 lines per busy revision per gateway): each line is
    split once at its double quotes and recognized by what precedes the first, which relies on the order Envoy
    writes the labels in (tests/test_revision_metrics_e2e.py reads a real Envoy's); a line of another shape is
    skipped. Twice as fast as finding each label, and than a regex over the whole answer. A reading is an array of
    floats (COUNTERS counters, then requests in flight): no object per number, nothing for the garbage collector."""
    found: dict[bytes, array] = {}
    heads, sizes = _HEADS, _PARTS
    for line in _lines(body):
        parts = line.split(b'"')
        kind = heads.get(parts[0])
        if kind is None or len(parts) != sizes[kind]:
            continue
        slot = 0
        if kind == _BUCKETS:
            slot = _bound_slot(parts[3])
            if slot < 0:
                continue
        cluster = parts[3] if kind == _CLASSES else parts[1]
        slash = cluster.find(b"/")
        if slash < 0:
            continue
        revision = cluster[slash + 1:]
        reading = found.get(revision)
        if reading is None:
            reading = found[revision] = _NEW_READING[:]
        value = parts[4][2:] if kind != _DURATION_SUM and kind != _ACTIVE else parts[2][2:]
        if kind == _BUCKETS:
            reading[slot] = _int(value)
        elif kind == _CLASSES:
            code = parts[1]
            if len(code) == 1 and 49 <= code[0] <= 53:  # "1" .. "5"
                reading[_CLASS0 + code[0] - 49] = _int(value)
        elif kind == _DURATION_SUM:
            reading[_SUM] = float(value)
        else:
            reading[_IN_FLIGHT] += _int(value)
    return {revision.decode(): reading for revision, reading in found.items()}


class TrafficBook:
    """Per revision, counters summed over gateways that do not go back when a gateway restarts, and the requests in
    flight at the last reading. A gateway that did not answer keeps its last reading (its next increases count);
    a revision not in `known` is forgotten (the controller dropped it: its linger is over)."""

    def __init__(self) -> None:
        self.totals: dict[str, array] = {}  # revision -> COUNTERS numbers
        self.in_flight: dict[str, int] = {}  # revision -> requests in flight, summed over the gateways that answered
        self._last: dict[str, dict[str, array]] = {}  # gateway -> revision -> its counters last read

    def add(self, gateways: Mapping[str, Mapping[str, array]], known: Mapping[str, object]) -> set[str]:
        """One read of every gateway that answered; returns the revisions whose totals changed. A total is replaced by
        a new array, never changed in place: a reader in another thread sees the old one or the new one."""
        changed: set[str] = set()
        totals = self.totals
        in_flight: dict[str, int] = {}
        for source, readings in gateways.items():
            before = self._last.get(source, {})
            now: dict[str, array] = {}
            for revision, reading in readings.items():
                if revision not in known:
                    continue
                if reading[_IN_FLIGHT]:
                    in_flight[revision] = in_flight.get(revision, 0) + int(reading[_IN_FLIGHT])
                counters = reading[:COUNTERS]
                now[revision] = counters
                last = before.get(revision)
                if last == counters or (last is None and not any(counters)):
                    continue  # nothing new (or only requests in flight, no answer yet)
                total = totals.get(revision) or _ZERO
                if last is None or any(map(operator.lt, counters, last)):  # new here, or the gateway restarted
                    totals[revision] = array("d", map(operator.add, total, counters))
                else:
                    totals[revision] = array("d", [t + v - p for t, v, p in zip(total, counters, last)])
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


_ZERO = array("d", bytes(8 * COUNTERS))


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
        self.snapshot: Mapping[str, RevisionTraffic] = TrafficSnapshot(controller, {}, {})
        self.reads = 0

    async def read_once(self) -> None:
        known = self.controller.revisions
        admins = list(self.admins())
        if not known or not admins:
            return
        path = prometheus.path(STATS_FILTER)
        answers = await asyncio.gather(*(a.fetch(path, FETCH_TIMEOUT_S) for a in admins), return_exceptions=True)
        bodies = {}
        for admin, answer in zip(admins, answers, strict=True):
            if isinstance(answer, BaseException):
                log.debug("gateway stats unavailable", extra={"admin": f"{admin.host}:{admin.port}",
                                                              "error": str(answer)})
                continue
            bodies[f"{admin.host}:{admin.port}"] = answer
        held = self._held()
        # Parsing and summing in a thread: at 10,000 busy revisions they take ~0.5 s of CPU (bench/metrics.py),
        # which would hold the event loop; the thread lets it run between the interpreter's switches (5 ms). What
        # it changes is swapped in whole (TrafficBook.add, absorb); the controller's state is only looked up.
        await asyncio.to_thread(lambda: self.absorb({source: parse(body) for source, body in bodies.items()}, held))

    def _held(self) -> dict[str, int]:
        return {r: c.in_flight for r, c in self.activator().items() if c.in_flight}

    def absorb(self, gateways: Mapping[str, Mapping[str, array]], held: Mapping[str, int] | None = None) -> None:
        """One read's parsed answers in, and the activator's requests in flight (`held`; None: asked now)."""
        known = self.controller.revisions
        self.book.add(gateways, known)
        held = self._held() if held is None else held
        in_flight = dict(self.book.in_flight)
        for revision, count in held.items():
            if revision in known and count > in_flight.get(revision, 0):
                in_flight[revision] = count
        self.snapshot = TrafficSnapshot(self.controller, dict(self.book.totals), in_flight)
        self.reads += 1

    async def run(self) -> None:
        await every(self.interval_s, self.read_once, log, "revision traffic read")

    def chunks(self) -> Iterator[bytes]:
        return render(self.controller, self.book)


class TrafficSnapshot(Mapping[str, RevisionTraffic]):
    """One read's traffic, revision name -> RevisionTraffic, each entry made when asked for: a read costs two dict
    copies of references (no object per revision, which at 10,000 busy revisions every 5 s kept the garbage collector
    busy), and the totals it holds are never changed (TrafficBook.add swaps in new arrays)."""

    __slots__ = ("_controller", "_totals", "_in_flight", "_services")

    def __init__(self, controller: Controller, totals: dict[str, array], in_flight: dict[str, int]):
        self._controller, self._totals, self._in_flight = controller, totals, in_flight
        self._services: dict[str, str] = {}
        if totals or in_flight:
            known = controller.revisions  # looked up from the read's thread: .get, never `in` then [] (a race)
            for name in (*totals, *in_flight):
                runtime = known.get(name)
                if runtime is not None:
                    self._services[name] = runtime.revision.service

    def __getitem__(self, revision: str) -> RevisionTraffic:
        service = self._services[revision]
        return _view(service, revision, tag_of(self._controller, service, revision), self._totals.get(revision),
                     self._in_flight.get(revision, 0))

    def __iter__(self) -> Iterator[str]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    def __contains__(self, revision: object) -> bool:
        return revision in self._services


def traffic_snapshot(controller: Controller) -> Mapping[str, RevisionTraffic]:
    """Revision name -> its traffic at the last read (every READ_EVERY_S): every revision ferry still holds that
    carried requests or has some in flight then. The same object until the next read (no copy per call), and one
    snapshot never changes under its reader: keep it while you use it, ask again for newer figures."""
    return controller.observer.snapshot


def _view(service: str, revision: str, tag: str, total: array | None, in_flight: int) -> RevisionTraffic:
    if total is None:
        return RevisionTraffic(service, revision, tag, {}, None, in_flight)
    requests = {name: int(total[_CLASS0 + i]) for i, name in enumerate(CODE_CLASSES) if i or total[_CLASS0]}
    buckets = [int(count) for count in total[_BUCKET0:_SUM]]
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
    totals = dict(book.totals)  # one read's totals throughout (a read swaps arrays in from its thread)
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
    yield from _gauges(c, book.in_flight, live, labels)
    yield from _rollouts(c)


def _family(names: list[str], name: str, lines: Callable[[str], str]) -> Iterator[bytes]:
    if not names:
        return
    yield _head(name)
    for at in range(0, len(names), REVISIONS_PER_CHUNK):
        yield "".join(lines(n) for n in names[at:at + REVISIONS_PER_CHUNK]).encode()


def _requests(labels: str, total: array) -> str:
    return "".join(f'ferry_revision_requests_total{{{labels},code_class="{CODE_CLASSES[i]}"}} '
                   f"{total[_CLASS0 + i]:.0f}\n" for i in range(5) if total[_CLASS0 + i])


def _histogram(labels: str, total: array) -> str:
    lines = [f'ferry_revision_request_duration_seconds_bucket{{{labels},le="{le}"}} {total[_BUCKET0 + i]:.0f}\n'
             for i, le in enumerate(_LE_TEXT)]
    lines.append(f"ferry_revision_request_duration_seconds_sum{{{labels}}} {_num(total[_SUM] / 1000)}\n")
    lines.append(f"ferry_revision_request_duration_seconds_count{{{labels}}} {total[_SUM - 1]:.0f}\n")
    return "".join(lines)


def _gauges(c: Controller, flight: Mapping[str, int], names: list[str], labels: dict[str, str]) -> Iterator[bytes]:
    """In-flight, the instances, panic and the activator: one pass over the revisions, then a family each."""
    autoscaler = c.autoscaler
    states, loads = autoscaler.states, autoscaler.last_load
    held = c.activator.stats()
    rows: list[tuple] = []  # (name, in flight, desired, ready, actual, panic, activator; the last two None: unmanaged)
    for at in range(0, len(names), REVISIONS_PER_CHUNK):
        for name in names[at:at + REVISIONS_PER_CHUNK]:
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
        yield b""
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
