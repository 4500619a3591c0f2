"""ferry's per-revision series end to end: a real Envoy and the example app, requests through the gateway, then
ferry's /metrics (its tag, its answers by class, the latency histogram's buckets); then a rollout, and every series
the Grafana dashboard (deploy/grafana/ferry.json) queries is in a live scrape."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from . import ferry_process
from .helpers import wait_until
from .test_revision_metrics import dashboard_series

pytestmark = pytest.mark.timeout(240)

V1, V2 = "hello-00001", "hello-00002"
HOST = "hello.localhost"
NEVER_ENDS = "rollout: {strategy: canary, steps: [10, 100], interval: 1s, analysis: {minRequests: 1000000000}}"


async def scrape(f) -> dict[str, list]:
    """Sample name -> its samples (a histogram's under _bucket, _sum and _count; a counter's under _total)."""
    async with aiohttp.ClientSession() as session, session.get(f"{f.api}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def one(samples: dict[str, list], name: str, **labels) -> float | None:
    found = [s.value for s in samples.get(name, ()) if s.labels == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


async def test_requests_show_up_per_revision_and_the_dashboard_series_exist(ferry):
    f = ferry()
    # 30 ms per answer, half of them 500s; the revision is tagged
    f.write_routes(ferry_process.hello("v1", scale="{min: 1}", LATENCY_MS="30", ERROR_RATE="0.5",
                                       extra=("traffic: [{latestRevision: true, percent: 100, tag: current}]",)))
    await f.start()
    await f.wait_converged()
    sent = 40
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(sent):
            status, _ = await ferry_process.get(session, f"{f.gateway}/", HOST)
            statuses.append(status)
    assert set(statuses) == {200, 500}, statuses
    ok, failed = statuses.count(200), statuses.count(500)
    v1 = {"service": "hello", "revision": V1, "tag": "current"}

    duration = "ferry_revision_request_duration_seconds"

    async def counted() -> dict | None:
        got = await scrape(f)
        # Envoy's counters move at once, its histograms at its next stats flush (every second): both, read
        done = one(got, "ferry_revision_requests_total", **v1, code_class="2xx") == ok and \
            one(got, f"{duration}_count", **v1) == sent
        return got if done else None

    got = await wait_until(counted, 30, f"{ok} 2xx answers and {sent} durations of {V1} on /metrics")
    assert one(got, "ferry_revision_requests_total", **v1, code_class="5xx") == failed
    assert one(got, "ferry_revision_requests_total", **v1, code_class="4xx") is None  # never answered: no series
    assert one(got, f"{duration}_bucket", **v1, le="0.025") == 0  # every answer took >= 30 ms
    assert one(got, f"{duration}_bucket", **v1, le="+Inf") == sent
    assert 30 * sent / 1000 <= one(got, f"{duration}_sum", **v1) < sent
    assert one(got, "ferry_revision_instances_desired", **v1) == 1
    assert one(got, "ferry_revision_instances_ready", **v1) == 1
    assert one(got, "ferry_revision_instances_actual", **v1) == 1
    assert one(got, "ferry_revision_requests_in_flight", **v1) == 0
    assert one(got, "ferry_revision_panic_mode", **v1) == 0
    assert one(got, "ferry_revision_activator_in_path", **v1) in (0, 1)  # burst capacity decides; one sample

    # A new template under a canary that never concludes: the rollout series appear, with every other one.
    f.write_routes(ferry_process.hello("v2", scale="{min: 1}", extra=(NEVER_ENDS,)))

    async def rolling_out() -> dict | None:
        got = await scrape(f)
        return got if one(got, "ferry_rollout_step", service="hello", revision=V2) == 0 else None

    got = await wait_until(rolling_out, 60, f"the rollout of {V2} on /metrics; log:\n{f.log_text}")
    assert one(got, "ferry_rollout_weight_ratio", service="hello", revision=V2) == 0.1
    assert one(got, "ferry_rollout_weight_ratio", service="hello", revision=V1) == 0.9
    # V1's counters go on without the tag label: a tag is a label of the revision's series while it holds the tag
    assert one(got, "ferry_revision_requests_total", service="hello", revision=V1, code_class="2xx") == ok
    missing = dashboard_series() - set(got)
    assert not missing, f"the dashboard queries series ferry does not export: {sorted(missing)}"
