"""A candidate revision's counters, read from every gateway's Envoy: what rollout analysis judges.

Per revision cluster, Envoy counts answers by class (`upstream_rq_1xx` .. `upstream_rq_5xx`) and keeps the
`upstream_rq_time` histogram; its Prometheus rendering gives the histogram's cumulative bucket counts, so the
analysis can take a p99 from bucket deltas over exactly its own interval rather than from Envoy's quantiles over
its flush interval (envoy/prometheus.py says why Prometheus and not JSON). Gateways are summed: the verdict is about the
revision, whichever gateway carried its requests.

A gRPC call that fails still answers HTTP 200 (its grpc-status travels in the trailers), so the gateways count calls
per grpc-status too (Envoy's grpc_stats filter): the statuses Envoy itself maps to a 5xx (UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) are errors, as a 5xx is; the client's own (NOT_FOUND,
INVALID_ARGUMENT, ...) are not. A gRPC call Envoy itself fails (an upstream timeout) counts both as a 5xx and under
its status: errors are capped at the requests.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

from ..envoy import prometheus
from ..envoy.admin import EnvoyAdmin
from .analysis import Sample

log = logging.getLogger("ferry.rollout")

FETCH_TIMEOUT_S = 0.8
_CLASSES = "envoy_cluster_upstream_rq_xx"  # envoy_response_code_class="1".."5"
_BUCKETS = "envoy_cluster_upstream_rq_time_bucket"
GRPC_SERVER_ERRORS = (2, 4, 12, 13, 14, 15)  # grpc-status codes Envoy maps to 500, 504, 501, 500, 503, 500
_GRPC_ERRORS = frozenset(f"envoy_cluster_grpc_{code}" for code in GRPC_SERVER_ERRORS)
_NAMES = frozenset({_CLASSES, _BUCKETS, *_GRPC_ERRORS})
_GRPC_CODES = "|".join(map(str, GRPC_SERVER_ERRORS))


def stats_path(clusters: Iterable[str]) -> str:
    names = "|".join(re.escape(c) for c in clusters)
    return prometheus.path(rf"^cluster\.({names})\.(upstream_rq_[1-5]xx|upstream_rq_time|grpc\.({_GRPC_CODES}))$")


def parse_samples(body: bytes, clusters: Iterable[str]) -> dict[str, Sample]:
    """One gateway's answer -> {cluster: Sample}; a cluster without traffic yet gets an empty Sample."""
    requests: dict[str, int] = {c: 0 for c in clusters}
    errors: dict[str, int] = dict.fromkeys(requests, 0)
    buckets: dict[str, list[tuple[float, int]]] = {}
    for name, labels, value in prometheus.samples(body, _NAMES):
        cluster = labels.get(prometheus.CLUSTER)
        if cluster not in requests:
            continue
        if name == _CLASSES:
            requests[cluster] += int(value)
            if labels.get("envoy_response_code_class") == "5":
                errors[cluster] += int(value)
        elif name in _GRPC_ERRORS:
            errors[cluster] += int(value)
        elif "le" in labels:
            buckets.setdefault(cluster, []).append((prometheus.bound(labels["le"]), int(value)))
    return {
        cluster: Sample(requests=requests[cluster], errors=min(errors[cluster], requests[cluster]),
                        latency_buckets=tuple(sorted(buckets.get(cluster, ()))))
        for cluster in requests
    }


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
