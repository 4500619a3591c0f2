"""Per-revision load from Envoy's cluster stats and the activator's counts.

Every revision has its own cluster on every gateway, so a gateway's admin endpoint tells how many
requests it has in flight to the revision (`upstream_rq_active` + `upstream_rq_pending_active`) and,
from the delta of `upstream_rq_total`, at what rate. Requests the activator holds or proxies also
went through some gateway's revision cluster, so they are in those figures already; the activator's
own counts only cover the moments before a scrape sees them. Taking the larger of the two therefore
never counts a request twice.

Parsing and arithmetic are pure; `scrape` is the only I/O.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Protocol

from ..envoy import prometheus
from ..envoy.admin import EnvoyAdmin
from .scaler import Load

log = logging.getLogger("ferry.autoscaler")

STATS = ("upstream_rq_active", "upstream_rq_pending_active", "upstream_rq_total")
_SERIES = {f"envoy_cluster_{stat}": stat for stat in STATS}
_NAMES = frozenset(_SERIES)
# Revision clusters are named "<service>/<revision>"; ferry's own (ferry_xds) has no slash.
STATS_FILTER = r"^cluster\.[^./]+/[^.]+\.(upstream_rq_active|upstream_rq_pending_active|upstream_rq_total)$"
SCRAPE_TIMEOUT_S = 0.8


class ClusterCounters(NamedTuple):
    active: int
    pending: int
    total: int


class ActivatorCounts(Protocol):
    in_flight: int
    requests_total: int


def parse_cluster_stats(body: bytes) -> dict[str, ClusterCounters]:
    """Envoy's /stats/prometheus answer -> {revision: counters}."""
    found: dict[str, dict[str, int]] = {}
    for name, labels, value in prometheus.samples(body, _NAMES):
        _, slash, revision = labels.get(prometheus.CLUSTER, "").partition("/")
        if slash:
            found.setdefault(revision, {})[_SERIES[name]] = int(value)
    return {
        revision: ClusterCounters(c.get("upstream_rq_active", 0), c.get("upstream_rq_pending_active", 0),
                                  c.get("upstream_rq_total", 0))
        for revision, c in found.items()
    }


@dataclass(frozen=True)
class Totals:
    """Cumulative request counters at one moment, per (source, revision): the base of the next rate."""

    at: float
    counters: Mapping[tuple[str, str], int] = field(default_factory=dict)


def loads(
    now: float,
    gateways: Mapping[str, Mapping[str, ClusterCounters]],
    activator: Mapping[str, ActivatorCounts],
    previous: Totals | None,
) -> tuple[dict[str, Load], Totals]:
    """Each revision's concurrency and rate, summed over gateways and reconciled with the activator."""
    counters: dict[tuple[str, str], int] = {}
    concurrency: dict[str, float] = {}
    gateway_rate: dict[str, float] = {}
    elapsed = now - previous.at if previous is not None else 0.0
    for source, stats in gateways.items():
        for revision, c in stats.items():
            concurrency[revision] = concurrency.get(revision, 0) + c.active + c.pending
            counters[(source, revision)] = c.total
            gateway_rate[revision] = gateway_rate.get(revision, 0.0) + _rate(previous, source, revision, c.total, elapsed)
    result: dict[str, Load] = {}
    for revision, counts in activator.items():
        counters[("activator", revision)] = counts.requests_total
        rate = _rate(previous, "activator", revision, counts.requests_total, elapsed)
        result[revision] = Load(
            max(concurrency.pop(revision, 0), counts.in_flight), max(gateway_rate.pop(revision, 0.0), rate)
        )
    for revision, value in concurrency.items():
        result[revision] = Load(value, gateway_rate.get(revision, 0.0))
    return result, Totals(now, counters)


def _rate(previous: Totals | None, source: str, revision: str, total: int, elapsed: float) -> float:
    """Requests per second since the previous scrape; a counter that went back (Envoy restarted, the
    cluster was re-created) counts from zero. No previous value: no rate yet."""
    if previous is None or elapsed <= 0:
        return 0.0
    before = previous.counters.get((source, revision))
    if before is None:
        return 0.0
    delta = total - before if total >= before else total
    return delta / elapsed


async def scrape(admins: Iterable[EnvoyAdmin]) -> dict[str, dict[str, ClusterCounters]]:
    """Every reachable gateway's revision counters, fetched concurrently; an unreachable one is skipped
    (its load is unknown this second, which the windows tolerate)."""
    admins = list(admins)
    # usedonly: a cluster that never had a request has no stats to send (idle revisions cost nothing).
    path = prometheus.path(STATS_FILTER)
    answers = await asyncio.gather(*(a.fetch(path, SCRAPE_TIMEOUT_S) for a in admins), return_exceptions=True)
    out: dict[str, dict[str, ClusterCounters]] = {}
    for admin, answer in zip(admins, answers, strict=True):
        if isinstance(answer, BaseException):
            log.debug("gateway stats unavailable", extra={"admin": f"{admin.host}:{admin.port}", "error": str(answer)})
            continue
        out[f"{admin.host}:{admin.port}"] = parse_cluster_stats(answer)
    return out
