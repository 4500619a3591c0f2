"""ferry's per-revision series end to end: a real Envoy and the example app, requests through the gateway, then
ferry's /metrics (its tag, its answers by class, the latency histogram's buckets); then a rollout, and every series
the Grafana dashboard (deploy/grafana/ferry.json) queries is in a live scrape."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from . import ferry_process
from .helpers import dashboard_series, wait_until

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
    statuses: list[int] = []
    v1 = {"service": "hello", "revision": V1, "tag": "current"}
    duration = "ferry_revision_request_duration_seconds"
    seen: list = []

    async with aiohttp.ClientSession() as session:

        async def send(count: int) -> None:
            for _ in range(count):
                statuses.append((await ferry_process.get(session, f"{f.gateway}/", HOST))[0])

        async def counted() -> dict | None:
            """Envoy's counters move at once; its histogram's samples are merged at its stats flush (every second),
            and the last ones of a burst only once the cluster records again (seen: 21 of 23 after 6 s idle): one
            more request per poll until the histogram holds the first 40."""
            got = await scrape(f)
            answered = sum(one(got, "ferry_revision_requests_total", **v1, code_class=c) or 0 for c in ("2xx", "5xx"))
            seen[:] = [len(statuses), answered, one(got, f"{duration}_count", **v1)]
            if answered == len(statuses) and (seen[2] or 0) >= 40:
                return got
            await send(1)
            return None

        await send(40)
        try:
            got = await wait_until(counted, 60, f"40 durations of {V1} on /metrics", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}; last seen (sent, answers, durations): {seen}") from None
    sent, ok, failed = len(statuses), statuses.count(200), statuses.count(500)
    assert ok + failed == sent and ok and failed, statuses  # half of them 500s
    assert one(got, "ferry_revision_requests_total", **v1, code_class="2xx") == ok
    assert one(got, "ferry_revision_requests_total", **v1, code_class="5xx") == failed
    assert one(got, "ferry_revision_requests_total", **v1, code_class="4xx") is None  # never answered: no series
    count = one(got, f"{duration}_count", **v1)
    assert 40 <= count <= sent
    assert one(got, f"{duration}_bucket", **v1, le="0.025") == 0  # every answer took >= 30 ms
    assert one(got, f"{duration}_bucket", **v1, le="+Inf") == count
    assert 30 * count / 1000 <= one(got, f"{duration}_sum", **v1) < count
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
