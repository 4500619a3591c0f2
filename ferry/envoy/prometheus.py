"""Envoy's /stats/prometheus answer, parsed for the few series ferry reads.

Envoy's JSON /stats walks every stats scope: at 10,000 services (20,000 clusters, one scope each) any such
query, however narrow its filter, held Envoy's main thread for ~220 ms, and the autoscaler and rollout analysis
ask every second, so xDS updates waited behind them (an endpoint change took ~400 ms to be ACKed instead of 2 ms).
The Prometheus rendering of the same filter took ~14 ms. Its names are tag-extracted: `cluster.<c>.upstream_rq_total`
is `envoy_cluster_upstream_rq_total{envoy_cluster_name="<c>"}`, `upstream_rq_5xx` is `envoy_cluster_upstream_rq_xx`
with `envoy_response_code_class="5"`, and histograms come as cumulative `_bucket` series with `le`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from urllib.parse import quote

CLUSTER = "envoy_cluster_name"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def path(stat_regex: str) -> str:
    """The admin path for the used stats whose full Envoy name (e.g. cluster.<c>.upstream_rq_total) matches."""
    return f"/stats/prometheus?usedonly&filter={quote(stat_regex, safe='')}"


def samples(body: bytes, names: frozenset[str]) -> Iterator[tuple[str, dict[str, str], float]]:
    """(metric name, labels, value) of every sample line whose metric is one of `names`."""
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name, brace, labels = head.partition("{")
        if name not in names:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        yield name, _labels(labels) if brace else {}, number


def _labels(text: str) -> dict[str, str]:
    """`a="x",b="y"}` -> {a: x, b: y}; the regex only for escaped values (ferry's names never have them)."""
    if "\\" in text:
        return dict(_LABEL.findall(text))
    labels = {}
    for pair in text[:-2].split('",'):  # drop the closing `"}`
        key, _, value = pair.partition('="')
        labels[key] = value
    return labels


def bound(le: str) -> float:
    """A bucket's upper bound (`+Inf` included)."""
    return math.inf if le == "+Inf" else float(le)
