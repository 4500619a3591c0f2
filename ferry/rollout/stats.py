"""A candidate revision's counters, read from every gateway's Envoy: what rollout analysis judges.

Per revision cluster, Envoy counts answers by class (`upstream_rq_1xx` .. `upstream_rq_5xx`) and keeps the
`upstream_rq_time` histogram; with `histogram_buckets=cumulative` its admin API gives the histogram's
cumulative bucket counts, so the analysis can take a p99 from bucket deltas over exactly its own interval
rather than from Envoy's quantiles over its flush interval. Gateways are summed: the verdict is about the
revision, whichever gateway carried its requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote

from ..envoy.admin import EnvoyAdmin
from .analysis import Sample

log = logging.getLogger("ferry.rollout")

FETCH_TIMEOUT_S = 0.8
_CLASSES = ("upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx", "upstream_rq_4xx", "upstream_rq_5xx")


def stats_path(clusters: Iterable[str]) -> str:
    names = "|".join(re.escape(c) for c in clusters)
    pattern = rf"^cluster\.({names})\.(upstream_rq_[1-5]xx|upstream_rq_time)$"
    return f"/stats?format=json&usedonly&histogram_buckets=cumulative&filter={quote(pattern, safe='')}"


def parse_samples(body: bytes, clusters: Iterable[str]) -> dict[str, Sample]:
    """One gateway's answer -> {cluster: Sample}; a cluster without traffic yet gets an empty Sample."""
    counters: dict[str, dict[str, int]] = {c: {} for c in clusters}
    buckets: dict[str, tuple[tuple[float, int], ...]] = {}
    for stat in json.loads(body).get("stats", ()):
        if "histograms" in stat:
            for histogram in stat["histograms"] if isinstance(stat["histograms"], list) else ():
                cluster = _cluster(histogram.get("name", ""), ".upstream_rq_time")
                if cluster in counters:
                    buckets[cluster] = tuple((b["upper_bound"], b["cumulative"]) for b in histogram.get("buckets", ()))
            continue
        name = stat.get("name", "")
        for klass in _CLASSES:
            cluster = _cluster(name, "." + klass)
            if cluster in counters:
                counters[cluster][klass] = stat.get("value", 0)
                break
    return {
        cluster: Sample(
            requests=sum(c.values()), errors=c.get("upstream_rq_5xx", 0), latency_buckets=buckets.get(cluster, ())
        )
        for cluster, c in counters.items()
    }


def _cluster(stat_name: str, suffix: str) -> str | None:
    if stat_name.startswith("cluster.") and stat_name.endswith(suffix):
        return stat_name[len("cluster."):-len(suffix)]
    return None


def add(a: Sample, b: Sample) -> Sample:
    """Two gateways' samples of one cluster, as one."""
    bounds: dict[float, int] = dict(a.latency_buckets)
    for bound, count in b.latency_buckets:
        bounds[bound] = bounds.get(bound, 0) + count
    return Sample(a.requests + b.requests, a.errors + b.errors, tuple(sorted(bounds.items())))


async def read_samples(admins: Iterable[EnvoyAdmin], clusters: list[str]) -> dict[str, Sample] | None:
    """The clusters' samples summed over every gateway; None unless every gateway answered (a sum missing one
    gateway would look like its counters went back to zero: better no verdict this second)."""
    admins = list(admins)
    if not clusters or not admins:
        return None
    path = stats_path(clusters)
    answers = await asyncio.gather(*(a.fetch(path, FETCH_TIMEOUT_S) for a in admins), return_exceptions=True)
    total: dict[str, Sample] | None = None
    for admin, answer in zip(admins, answers, strict=True):
        if isinstance(answer, BaseException):
            log.debug("gateway stats unavailable", extra={"admin": f"{admin.host}:{admin.port}", "error": str(answer)})
            return None
        samples = parse_samples(answer, clusters)
        total = samples if total is None else {c: add(total[c], samples[c]) for c in clusters}
    return total
