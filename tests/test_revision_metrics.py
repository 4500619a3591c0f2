"""ferry's per-revision series (reconcile/observe.py), without Envoy: parsing a gateway's answer, summing gateways
into counters that never go back, the exposition text over the controller's state, the snapshot read API, and the
Grafana dashboard's queries against the series ferry declares."""

from __future__ import annotations

import json
from array import array
import math
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from ferry.autoscaler.scaler import Load
from ferry.reconcile.observe import (
    BOUNDS_MS,
    QUERYABLE,
    SERIES,
    RevisionObserver,
    RevisionTraffic,
    TrafficBook,
    parse,
    traffic_snapshot,
)

from .helpers import DASHBOARD, dashboard_exprs, dashboard_series

ENVOY_BOUNDS = ("0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
                "60000", "300000", "600000", "1.8e+06", "3.6e+06", "+Inf")


def answer(cluster: str, *, classes: dict[str, int], durations_ms: list[float], active: int = 0,
           pending: int = 0) -> str:
    """One cluster's lines as Envoy's /stats/prometheus writes them (tag-extracted names, Envoy's label order)."""
    lines = [f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="{code}",envoy_cluster_name="{cluster}"}} {n}'
             for code, n in classes.items()]
    lines.append(f'envoy_cluster_upstream_rq_active{{envoy_cluster_name="{cluster}"}} {active}')
    lines.append(f'envoy_cluster_upstream_rq_pending_active{{envoy_cluster_name="{cluster}"}} {pending}')
    for le in ENVOY_BOUNDS:
        bound = math.inf if le == "+Inf" else float(le)
        count = sum(d <= bound for d in durations_ms)
        lines.append(f'envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="{cluster}",le="{le}"}} {count}')
    lines.append(f'envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name="{cluster}"}} {sum(durations_ms)}')
    lines.append(f'envoy_cluster_upstream_rq_time_count{{envoy_cluster_name="{cluster}"}} {len(durations_ms)}')
    return "\n".join(lines) + "\n"


def body(*parts: str) -> bytes:
    return ("# TYPE envoy_cluster_upstream_rq_xx counter\n" + "".join(parts)).encode()


def test_parse_reads_classes_durations_and_in_flight_of_revision_clusters_only():
    got = parse(body(
        answer("hello/hello-00001", classes={"2": 40, "5": 2}, durations_ms=[3, 3, 40, 70000], active=3, pending=1),
        answer("ferry_xds", classes={"2": 9}, durations_ms=[1]),  # ferry's own cluster: no slash
    ))
    assert list(got) == ["hello-00001"]
    reading = got["hello-00001"]
    assert list(reading[:5]) == [0, 40, 0, 0, 2]
    # the kept bounds 1, 5, 10, 25, 50, ... 60000 ms and +Inf; 0.5 ms and those beyond a minute are not kept
    assert list(reading[5:5 + len(BOUNDS_MS)]) == [0, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4]
    assert reading[5 + len(BOUNDS_MS)] == 70046.0  # sum, ms
    assert reading[-1] == 4  # active + pending


def reading(classes=(0, 0, 0, 0, 0), buckets=None, total_ms=0.0, in_flight=0) -> array:
    buckets = list(buckets or [0] * len(BOUNDS_MS))
    return array("d", [*classes, *buckets, total_ms, in_flight])


def hist(count: int) -> list[int]:
    return [count] * len(BOUNDS_MS)  # every request under 1 ms


def test_book_sums_gateways_and_never_goes_back():
    book = TrafficBook()
    known = {"r1": 1, "r2": 1}
    book.add({"gw1": {"r1": reading((0, 10, 0, 0, 1), hist(11), 22.0, 2)},
              "gw2": {"r1": reading((0, 5, 0, 0, 0), hist(5), 5.0, 1), "r2": reading((0, 3, 0, 0, 0), hist(3))}},
             known)
    assert list(book.totals["r1"][:5]) == [0, 15, 0, 0, 1] and book.totals["r1"][5] == 16
    assert book.in_flight == {"r1": 3}
    # gw2 restarted (every counter lower: counted from zero again); gw1 did not answer (keeps its last reading)
    changed = book.add({"gw2": {"r1": reading((0, 2, 0, 0, 0), hist(2), 1.0)}}, known)
    assert changed == {"r1"}
    assert list(book.totals["r1"][:5]) == [0, 17, 0, 0, 1] and book.totals["r1"][5] == 18 and book.totals["r1"][-1] == 28.0
    assert list(book.totals["r2"][:5]) == [0, 3, 0, 0, 0]  # gw2 does not report r2 this time: nothing taken away
    assert book.in_flight == {}
    # gw1 answers again: only its increase counts
    book.add({"gw1": {"r1": reading((0, 12, 0, 0, 1), hist(13), 30.0)}}, known)
    assert list(book.totals["r1"][:5]) == [0, 19, 0, 0, 1] and book.totals["r1"][5] == 20
    # the same answer twice counts once
    assert book.add({"gw1": {"r1": reading((0, 12, 0, 0, 1), hist(13), 30.0)}}, known) == set()
    assert book.totals["r1"][1] == 19


def test_book_forgets_a_revision_ferry_dropped_and_counts_it_anew_if_it_comes_back():
    book = TrafficBook()
    book.add({"gw1": {"r1": reading((0, 4, 0, 0, 0)), "r2": reading((0, 1, 0, 0, 0))}}, {"r1": 1, "r2": 1})
    book.add({"gw1": {"r1": reading((0, 5, 0, 0, 0)), "r2": reading((0, 1, 0, 0, 0))}}, {"r2": 1})  # r1's linger over
    assert set(book.totals) == {"r2"}
    assert all("r1" not in last for last in book._last.values())
    book.add({"gw1": {"r1": reading((0, 7, 0, 0, 0))}}, {"r1": 1, "r2": 1})
    assert book.totals["r1"][1] == 7  # a new series: from the gateway's counter as it is


# -- the controller's state, faked as plainly as observe.py reads it ----------------------------------------------


def runtime(service, name, *, managed=True, endpoints=(), activator=False, instances=1, retiring=False):
    return SimpleNamespace(revision=SimpleNamespace(service=service, name=name), name=name, managed=managed,
                           endpoints=endpoints, activator_in_path=activator, instances=instances, retiring=retiring)


def controller():
    rollout = SimpleNamespace(active=True, candidate="hello-00002", stable="hello-00001", step=1, weight=20)
    return SimpleNamespace(
        autoscaler=SimpleNamespace(
            states={"hello-00002": SimpleNamespace(scale=3, decider=SimpleNamespace(panic_since=12.0))},
            last_load={"hello-00002": Load(4.0, 10.0)}),
        activator=SimpleNamespace(stats=lambda: {}),
        backend=SimpleNamespace(counts=lambda name: SimpleNamespace(total=2)),
        revisions={"hello-00001": runtime("hello", "hello-00001", managed=False, endpoints=("a", "b")),
                   "hello-00002": runtime("hello", "hello-00002", endpoints=("c",), activator=True),
                   "idle-00001": runtime("idle", "idle-00001", managed=False, endpoints=("d",))},
        services={"hello": SimpleNamespace(name="hello", rollout=rollout,
                                           traffic=SimpleNamespace(tags=(("next", "hello-00002"),))),
                  "idle": SimpleNamespace(name="idle", rollout=None, traffic=SimpleNamespace(tags=()))},
    )


def observer(ctrl) -> RevisionObserver:
    ctrl.observer = RevisionObserver(ctrl, admins=lambda: [], activator=ctrl.activator.stats)
    return ctrl.observer


def scrape(obs: RevisionObserver) -> dict[tuple[str, tuple], float]:
    text = b"".join(obs.chunks()).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


R1 = (("revision", "hello-00001"), ("service", "hello"))
R2 = (("revision", "hello-00002"), ("service", "hello"), ("tag", "next"))


def test_series_of_revisions_that_run_or_carried_requests_with_their_labels():
    ctrl = controller()
    obs = observer(ctrl)
    durations = [30.0] * 9 + [700.0]  # ms
    buckets = [sum(d <= b for d in durations) for b in BOUNDS_MS]
    obs.absorb({"gw1": {"hello-00002": reading((0, 7, 0, 0, 1), buckets, sum(durations), 2)},
                "gw2": {"hello-00001": reading((0, 3, 0, 0, 0), hist(3), 1.5)}})
    got = scrape(obs)
    assert got[("ferry_revision_requests_total", (("code_class", "2xx"), *R2))] == 7
    assert got[("ferry_revision_requests_total", (("code_class", "5xx"), *R2))] == 1
    assert ("ferry_revision_requests_total", (("code_class", "4xx"), *R2)) not in got  # never answered: no series
    assert got[("ferry_revision_requests_total", (("code_class", "2xx"), *R1))] == 3
    h = "ferry_revision_request_duration_seconds"

    def le(bound: str) -> tuple:
        return tuple(sorted((*R2, ("le", bound))))

    assert got[(f"{h}_bucket", le("0.025"))] == 0
    assert got[(f"{h}_bucket", le("0.05"))] == 9
    assert got[(f"{h}_bucket", le("1"))] == 10
    assert got[(f"{h}_bucket", le("+Inf"))] == 10
    assert got[(f"{h}_count", R2)] == 10 and math.isclose(got[(f"{h}_sum", R2)], 0.97)
    assert got[("ferry_revision_requests_in_flight", R2)] == 4  # the autoscaler's 1 s figure is larger
    assert got[("ferry_revision_instances_desired", R2)] == 3
    assert got[("ferry_revision_instances_ready", R2)] == 1
    assert got[("ferry_revision_instances_actual", R2)] == 2
    assert got[("ferry_revision_panic_mode", R2)] == 1
    assert got[("ferry_revision_activator_in_path", R2)] == 1
    assert got[("ferry_revision_instances_actual", R1)] == 2  # endpoints from the file
    assert ("ferry_revision_panic_mode", R1) not in got  # not run by ferry: no autoscaler
    assert got[("ferry_rollout_step", R2[:2])] == 1
    assert got[("ferry_rollout_weight_ratio", R2[:2])] == 0.2
    assert got[("ferry_rollout_weight_ratio", R1)] == 0.8
    assert not [key for key in got if ("service", "idle") in key[1]]  # endpoints from the file, no request: none
    assert {name for name, _ in got} == QUERYABLE


def test_a_dropped_revision_has_no_series_and_no_snapshot_entry():
    ctrl = controller()
    obs = observer(ctrl)
    obs.absorb({"gw1": {"hello-00002": reading((0, 7, 0, 0, 0), hist(7)), "hello-00001": reading((0, 1, 0, 0, 0))}})
    assert "hello-00002" in traffic_snapshot(ctrl)
    del ctrl.revisions["hello-00002"]  # retired, the cluster linger over
    ctrl.services["hello"].rollout = None
    assert not [key for key in scrape(obs) if ("revision", "hello-00002") in key[1]]
    obs.absorb({"gw1": {"hello-00002": reading((0, 7, 0, 0, 0), hist(7)), "hello-00001": reading((0, 1, 0, 0, 0))}})
    assert "hello-00002" not in obs.book.totals and "hello-00002" not in traffic_snapshot(ctrl)
    assert ("ferry_revision_requests_total", (("code_class", "2xx"), *R1)) in scrape(obs)


def test_nothing_runs_and_nothing_carried_requests_no_series():
    ctrl = controller()
    for name in ("hello-00002",):
        del ctrl.revisions[name]
    ctrl.services["hello"].rollout = None
    assert b"".join(observer(ctrl).chunks()) == b""


def test_snapshot_fields_and_a_new_one_per_read():
    ctrl = controller()
    obs = observer(ctrl)
    held = {"hello-00002": SimpleNamespace(in_flight=9)}
    obs.activator = lambda: held
    obs.absorb({"gw1": {"hello-00002": reading((0, 7, 0, 2, 1), hist(10), 4.0, 1)}})
    snapshot = traffic_snapshot(ctrl)
    assert snapshot is traffic_snapshot(ctrl)  # no copy per call
    assert snapshot["hello-00002"] == RevisionTraffic(
        service="hello", revision="hello-00002", tag="next", requests={"2xx": 7, "3xx": 0, "4xx": 2, "5xx": 1},
        duration_ms=tuple((b, 10) for b in BOUNDS_MS), in_flight=9)
    assert snapshot["hello-00002"].duration_ms[-1][0] == math.inf
    entry = snapshot["hello-00002"]
    held.clear()
    obs.absorb({"gw1": {"hello-00002": reading((0, 8, 0, 2, 1), hist(11), 4.5, 0)}})
    latest = traffic_snapshot(ctrl)
    assert latest["hello-00002"].requests["2xx"] == 8 and latest["hello-00002"].in_flight == 0
    assert snapshot["hello-00002"] == entry  # a snapshot taken before never changes under its reader
    assert len(latest) == 1 and list(latest) == ["hello-00002"] and "hello-00001" not in latest
    obs.absorb({"gw1": {"hello-00001": reading(in_flight=3)}})
    # in flight, no answer yet
    assert traffic_snapshot(ctrl)["hello-00001"] == RevisionTraffic("hello", "hello-00001", "", {}, None, 3)


async def test_read_once_asks_each_gateway_with_a_filtered_usedonly_query():
    paths = []

    class Admin:
        host, port = "127.0.0.1", 9901

        async def fetch(self, path, timeout):
            paths.append(path)
            return body(answer("hello/hello-00002", classes={"2": 5}, durations_ms=[2.0] * 5))

    class Down(Admin):
        port = 9902

        async def fetch(self, path, timeout):
            raise OSError("refused")

    ctrl = controller()
    obs = observer(ctrl)
    obs.admins = lambda: [Admin(), Down()]
    await obs.read_once()
    assert len(paths) == 1 and paths[0].startswith("/stats/prometheus?usedonly&filter=")
    assert traffic_snapshot(ctrl)["hello-00002"].requests["2xx"] == 5


# -- the Grafana dashboard ------------------------------------------------------------------------------------------

def test_dashboard_queries_only_series_ferry_declares_and_has_the_panels():
    assert dashboard_series() <= QUERYABLE
    # everything ferry exports per revision is on it
    assert {n.removesuffix("_bucket") for n in dashboard_series()} >= set(SERIES)
    titles = " | ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for words in ("request rate", "error ratio", "p50", "p99", "in flight", "instances", "panic", "activator",
                  "rollout step", "rollout weight"):
        assert words in titles, words
    assert any("histogram_quantile(0.99" in e for e in dashboard_exprs())


async def test_counts_without_any_autoscaled_revision():
    """Endpoints the file gives, nothing autoscaled (the autoscaler does not scrape then): the observer's own read
    still counts their requests."""

    class Admin:
        host, port = "127.0.0.1", 9901

        async def fetch(self, path, timeout):
            return body(answer("hello/hello-00001", classes={"2": 4, "4": 1}, durations_ms=[2.0] * 5))

    ctrl = controller()
    del ctrl.revisions["hello-00002"]
    ctrl.services["hello"].rollout = None
    ctrl.autoscaler.states.clear()
    ctrl.autoscaler.last_load.clear()
    obs = observer(ctrl)
    obs.admins = lambda: [Admin()]
    await obs.read_once()
    got = scrape(obs)
    assert got[("ferry_revision_requests_total", (("code_class", "2xx"), *R1))] == 4
    assert got[("ferry_revision_requests_total", (("code_class", "4xx"), *R1))] == 1
    assert got[("ferry_revision_request_duration_seconds_count", R1)] == 5
    assert got[("ferry_revision_instances_ready", R1)] == 2
