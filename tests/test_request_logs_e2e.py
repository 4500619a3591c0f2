"""ferry's per-revision series end to end: a real Envoy, the example app, traffic, then ferry's /metrics; and every
series the Grafana dashboard (deploy/grafana/ferry.json) queries is one ferry declares."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from . import ferry_process
from .helpers import wait_until
from .load import Load

pytestmark = pytest.mark.timeout(240)

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "ferry.json"
_NAME = re.compile(r"\b(ferry_[a-z0-9_]+)\b")


def dashboard_series() -> set[str]:
    """The metric names the dashboard's PromQL expressions (and its variables' queries) use."""
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert exprs
    return {name for expr in exprs for name in _NAME.findall(expr)}


def test_dashboard_uses_only_ferry_revision_series():
    from ferry.reconcile.observe import SERIES

    assert dashboard_series() <= set(SERIES)


async def metrics(f) -> dict[str, list]:
    async with aiohttp.ClientSession() as session, session.get(f"{f.api}/metrics") as response:
        text = await response.text()
    families = {}
    for family in text_string_to_metric_families(text):
        # a counter family is declared without its _total, its samples carry it
        families[family.name + ("_total" if family.type == "counter" else "")] = family.samples
    return families


async def test_series_after_traffic_name_the_revision(ferry):
    f = ferry()
    f.write_routes(ferry_process.hello("hi"))
    await f.start()
    await f.wait_converged()
    async with Load(f"{f.gateway}/", "hello.localhost", concurrency=4) as load:
        await load.wait_for(200)
    assert load.failures == 0

    async def counted() -> bool:
        got = await metrics(f)
        return any(s.labels == {"service": "hello", "revision": "hello-00001", "code_class": "2xx"} and s.value >= 200
                   for s in got.get("ferry_revision_requests_total", ()))

    await wait_until(counted, 15, "ferry_revision_requests_total for hello-00001 with the load's requests")
    got = await metrics(f)
    declared = set(got)
    missing = dashboard_series() - declared
    assert not missing, f"the dashboard queries series ferry does not export: {sorted(missing)}"
    instances = {s.labels["state"]: s.value for s in got["ferry_revision_instances"]
                 if s.labels["revision"] == "hello-00001"}
    assert instances == {"desired": 1, "ready": 1, "actual": 1}
    # one sample each, 0 or 1 (which one follows the load: Knative's burst capacity may keep the activator in path)
    for flag in ("ferry_revision_activator_in_path", "ferry_revision_panic_mode", "ferry_revision_requests_in_flight"):
        assert [s.value in (0, 1) or flag.endswith("in_flight") for s in got[flag]
                if s.labels == {"service": "hello", "revision": "hello-00001"}] == [True], flag
    assert not [s for s in got["ferry_revision_requests_total"] if s.labels["code_class"] == "5xx" and s.value]
