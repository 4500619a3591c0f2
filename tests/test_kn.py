"""kn's verbs without a running ferry: Knative's conditions from status views (pure), the views the controller
gives the API, the renderers (tables, describe, -o json|yaml), `ferry wait`'s loop and the command line wiring.
Against a real ferry and Envoy: test_kn_e2e.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import ferry.cli
from ferry import kn
from ferry.api import ApiState, build_api
from ferry.backends.base import InstanceInfo
from ferry.reconcile.conditions import revision_conditions, service_conditions, summary

from .reconcile_fakes import World, app, fixed

NOW = 1_800_000_000.0
IN_SYNC = [{"node": "ferry-local", "connected": True, "in_sync": True, "last_nack": None}]


def by_type(conditions: list[dict]) -> dict[str, dict]:
    return {c["type"]: c for c in conditions}


def revision(state: str = "ready", ready: int = 1, desired: int = 1, instances=None, rollout=None,
             managed: bool | None = True) -> dict:
    if instances is None:
        instances = [{"ready": True, "restarts": 0, "error": None, "log": "/s/hello-00001-1.log"}] * ready
    return {"name": "hello-00001", "service": "hello", "generation": 1, "created_at": NOW - 90, "state": state,
            "ready": ready, "desired": desired, "managed": managed, "traffic": 100, "tags": [],
            "latest_created": True, "latest_ready": True, "rollout": rollout, "instances": instances}


def service(**fields) -> dict:
    return {"name": "hello", "url": "http://hello.localhost:8080", "latest_created": "hello-00002",
            "latest_ready": "hello-00001", "waiting": None, "rollout": None, "split_owner": "file",
            "traffic": [{"revision": "hello-00001", "percent": 100}], **fields}


def with_conditions(entry: dict) -> dict:
    return {**entry, "conditions": revision_conditions(entry)}


# -- revision conditions ---------------------------------------------------------------------------------------


def test_a_revision_with_ready_instances_is_ready_and_active():
    conditions = revision_conditions(revision())
    assert [c["type"] for c in conditions] == ["Ready", "ContainerHealthy", "ResourcesAvailable", "Active"]
    assert all(c["status"] == "True" for c in conditions)


def test_a_revision_at_zero_is_ready_but_not_active():
    c = by_type(revision_conditions(revision(state="at zero", ready=0, desired=0, instances=[])))
    assert c["Ready"]["status"] == "True"
    assert c["Active"] == {"type": "Active", "status": "False", "reason": "NoTraffic",
                           "message": "scaled to zero: the activator wakes it on the next request", "severity": "Info"}
    assert kn._columns(revision_conditions(revision(state="at zero", ready=0, instances=[])))[:2] == ("3 OK / 4", "True")


def test_a_command_that_cannot_start_fails_the_revision():
    broken = {"ready": False, "restarts": 3, "error": "failed to start: nope: not found on PATH", "log": "/l"}
    c = by_type(revision_conditions(revision(state="not ready", ready=0, instances=[broken])))
    assert c["ContainerHealthy"]["status"] == "False" and c["ContainerHealthy"]["reason"] == "StartFailed"
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "StartFailed"
    assert c["Ready"]["message"] == "failed to start: nope: not found on PATH (1 instance, 3 restarts so far)"
    assert c["ResourcesAvailable"]["status"] == "Unknown"


def test_instances_that_keep_exiting_fail_the_revision_and_point_at_their_log():
    exited = {"ready": False, "restarts": 2, "error": None, "log": "/state/logs/hello-00001-1.log"}
    ready = by_type(revision_conditions(revision(state="not ready", ready=0, instances=[exited, exited])))["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ExitedBeforeReady"
    assert "2 instances exited and are being restarted (4 restarts so far)" in ready["message"]
    assert "/state/logs/hello-00001-1.log" in ready["message"]


def test_one_restarting_instance_beside_ready_ones_is_noted_not_failed():
    fine = {"ready": True, "restarts": 0, "error": None, "log": "/a"}
    crashed = {"ready": False, "restarts": 1, "error": None, "log": "/b"}
    c = by_type(revision_conditions(revision(ready=1, desired=2, instances=[fine, crashed])))
    assert c["Ready"]["status"] == "True"
    assert c["ContainerHealthy"]["message"] == "1 instance restarting (1 restart so far)"


def test_a_revision_still_starting_is_unknown_not_false():
    c = by_type(revision_conditions(revision(state="not ready", ready=0, desired=2, instances=[])))
    assert c["Ready"] == {"type": "Ready", "status": "Unknown", "reason": "Deploying",
                          "message": "0/2 instances ready (waiting for the readiness probe)", "severity": ""}


def test_a_stopped_revision_is_neither_ready_nor_failed():
    c = by_type(revision_conditions(revision(state="stopped", ready=0, desired=0, instances=[], managed=None)))
    assert c["Ready"]["status"] == "Unknown" and c["Ready"]["reason"] == "Stopped"
    assert c["Active"]["status"] == "False" and c["Active"]["reason"] == "NoTraffic"


@pytest.mark.parametrize(("result", "reason"), [("rolled-back", "RolledBack"), ("aborted", "RolloutAborted")])
def test_a_rollout_that_ended_badly_fails_the_revision_however_well_it_runs(result, reason):
    entry = revision(rollout={"result": result, "reason": "success rate 78.2% < 99% over 235 requests", "at": NOW})
    ready = revision_conditions(entry)[0]
    assert ready["status"] == "False" and ready["reason"] == reason
    assert ready["message"] == f"rollout {result}: success rate 78.2% < 99% over 235 requests"
    assert revision_conditions(revision(rollout={"result": "promoted", "reason": None, "at": NOW}))[0]["status"] == "True"


def test_endpoints_from_the_file_are_healthy():
    c = by_type(revision_conditions(revision(managed=False, instances=[])))
    assert c["Ready"]["status"] == "True" and "endpoints given in the file" in c["ContainerHealthy"]["message"]


def test_summary_false_wins_over_unknown_and_info_does_not_count():
    parts = [{"type": "A", "status": "Unknown", "reason": "Wait", "message": "m1", "severity": ""},
             {"type": "B", "status": "False", "reason": "Broken", "message": "m2", "severity": ""},
             {"type": "C", "status": "False", "reason": "Idle", "message": "m3", "severity": "Info"}]
    assert (summary("Ready", parts)["status"], summary("Ready", parts)["reason"]) == ("False", "Broken")
    assert summary("Ready", [parts[2]])["status"] == "True"


# -- service conditions ----------------------------------------------------------------------------------------


def test_a_service_whose_latest_revision_is_ready_and_served_everywhere_is_ready():
    latest = with_conditions(revision())
    conditions = service_conditions(service(latest_created="hello-00001"), latest, IN_SYNC)
    assert [(c["type"], c["status"]) for c in conditions] == [
        ("Ready", "True"), ("ConfigurationsReady", "True"), ("RoutesReady", "True")]


def test_a_latest_revision_that_fails_is_revision_failed_as_in_knative():
    broken = {"ready": False, "restarts": 1, "error": "failed to start: nope: not found on PATH", "log": "/l"}
    latest = with_conditions(revision(state="not ready", ready=0, instances=[broken]))
    c = by_type(service_conditions(service(), latest, IN_SYNC))
    assert c["ConfigurationsReady"]["status"] == "False" and c["ConfigurationsReady"]["reason"] == "RevisionFailed"
    assert c["ConfigurationsReady"]["message"].startswith(
        'Revision "hello-00002" failed with message: failed to start: nope: not found on PATH')
    assert c["RoutesReady"]["status"] == "True"  # the previous revision keeps serving the file's traffic
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "RevisionFailed"


def test_a_rolled_back_latest_revision_is_revision_failed():
    latest = with_conditions(revision(state="stopped", ready=0, instances=[],
                                      rollout={"result": "rolled-back", "reason": "p99 900 ms > 500 ms", "at": NOW}))
    ready = service_conditions(service(), latest, IN_SYNC)[0]
    assert ready["reason"] == "RevisionFailed" and "rollout rolled-back: p99 900 ms > 500 ms" in ready["message"]


def test_routes_wait_for_a_revision_then_for_a_rollout_then_for_the_gateways():
    latest = with_conditions(revision())
    waiting = service(waiting="waiting for revision hello-00002 to become ready")
    routes = by_type(service_conditions(waiting, latest, IN_SYNC))["RoutesReady"]
    assert (routes["status"], routes["reason"]) == ("Unknown", "RevisionMissing")
    assert routes["message"].startswith("waiting for revision hello-00002 to become ready")

    rolling = service(rollout={"active": True, "phase": "progressing", "strategy": "canary", "stable": "hello-00001",
                               "candidate": "hello-00002", "step": 1, "weight": 25})
    routes = by_type(service_conditions(rolling, latest, IN_SYNC))["RoutesReady"]
    assert (routes["status"], routes["reason"]) == ("Unknown", "RolloutInProgress")
    assert routes["message"] == "canary rollout hello-00001 -> hello-00002: step 1, 25% of main traffic to the candidate"
    preview = service(rollout={**rolling["rollout"], "phase": "awaiting-promotion", "strategy": "blue-green"})
    assert by_type(service_conditions(preview, latest, IN_SYNC))["RoutesReady"]["reason"] == "AwaitingPromotion"
    ended = service(rollout={**rolling["rollout"], "active": False, "phase": "promoted"})
    assert by_type(service_conditions(ended, latest, IN_SYNC))["RoutesReady"]["status"] == "True"

    behind = [*IN_SYNC, {"node": "edge-2", "connected": True, "in_sync": False,
                         "last_nack": {"type": "rds", "message": "route: unknown cluster"}}]
    routes = by_type(service_conditions(service(), latest, behind))["RoutesReady"]
    assert (routes["status"], routes["reason"]) == ("Unknown", "IngressNotConfigured")
    assert "edge-2" in routes["message"] and "route: unknown cluster" in routes["message"]
    gone = [{"node": "ferry-local", "connected": False, "in_sync": False, "last_nack": None}]
    assert by_type(service_conditions(service(), latest, gone))["RoutesReady"]["message"] == "no gateway is connected"


def test_a_traffic_override_is_served_and_says_so():
    routes = by_type(service_conditions(service(split_owner="override (drift from the file)"),
                                        with_conditions(revision()), IN_SYNC))["RoutesReady"]
    assert routes["status"] == "True" and "override" in routes["message"]


# -- the controller's views ------------------------------------------------------------------------------------


async def test_the_controller_gives_services_and_revisions_with_conditions(tmp_path):
    w = World(tmp_path)
    w.gateways.status = lambda: IN_SYNC
    try:
        await w.apply(f"hello: {{template: {app('v1')}, traffic: [{{latestRevision: true, percent: 100, tag: cur}}]}}\n"
                      f"fixed: {{template: {fixed(9000)}}}")
        await w.settle()
        c = w.controller
        (hello,) = c.services_status("hello")
        assert hello["name"] == "hello" and hello["created_at"] > 0
        assert [x["status"] for x in hello["conditions"]] == ["Unknown", "Unknown", "Unknown"]
        assert [s["name"] for s in c.services_status()] == ["fixed", "hello"]
        w.backend.ready("hello-00001", 9001)
        await w.settle()
        assert [x["status"] for x in next(c.services_status("hello"))["conditions"]] == ["True"] * 3

        await w.apply(f"hello: {{template: {app('v2')}}}\nfixed: {{template: {fixed(9000)}}}")
        await w.settle()
        broken = InstanceInfo(1, None, None, False, False, 2, Path("/logs/hello-00002-1.log"),
                              error="failed to start: app: not found on PATH")
        real = w.backend.instances
        w.backend.instances = lambda name: (broken,) if name == "hello-00002" else real(name)
        ready = next(c.services_status("hello"))["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("False", "RevisionFailed")
        listed = list(c.revisions_status(None))
        assert [(r["service"], r["name"]) for r in listed] == [
            ("fixed", "fixed-00001"), ("hello", "hello-00002"), ("hello", "hello-00001")]
        assert listed[2]["traffic"] == 100 and listed[2]["latest_ready"] and listed[1]["latest_created"]

        described = c.revision_status("hello-00002")
        assert described["template"]["command"] == ["app", "v2"] and described["instances"][0]["error"]
        assert described["conditions"][0]["reason"] == "StartFailed" and described["desired"] == 1
        assert c.revision_status("fixed-00001")["endpoints"] == ["127.0.0.1:9000"]
        with pytest.raises(KeyError):
            c.revision_status("nope-00001")
        with pytest.raises(KeyError):  # at once, before any entry is made
            c.services_status("nope")
        with pytest.raises(KeyError):
            c.revisions_status("nope")

        await w.apply(f"hello: {{template: {app('v2')}}}")  # fixed leaves the file: its revisions go with it
        await w.settle()
        assert all(r["service"] == "hello" for r in c.revisions_status(None))
        with pytest.raises(KeyError):
            c.revision_status("fixed-00001")
    finally:
        await w.close()


class _SlowLeader:
    """12 services and 12 revisions that take 4 ms of CPU each to describe."""

    @staticmethod
    def _slowly(kind: str):
        for i in range(12):
            started = time.perf_counter()
            while time.perf_counter() - started < 0.004:
                pass
            yield {"name": f"{kind}{i}"}

    def services_status(self, service):
        return self._slowly("s")

    def revisions_status(self, service):
        return self._slowly("r")


@pytest.mark.parametrize(("path", "kind"), [("/services", "s"), ("/revisions", "r")])
async def test_long_lists_leave_the_event_loop_to_others(path, kind):
    state = ApiState(CollectorRegistry(), replica=dict, leading=_SlowLeader(), token="t")
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async with TestClient(TestServer(build_api(state), host="127.0.0.1")) as client:
        ticking = asyncio.create_task(ticker())
        try:
            response = await client.get(path, headers={"Authorization": "Bearer t"})
            body = await response.json()
        finally:
            ticking.cancel()
    assert body == [{"name": f"{kind}{i}"} for i in range(12)]
    assert turns >= 4, turns  # 48 ms of work in slices of 5 ms: the loop ran other tasks between them


# -- rendering ---------------------------------------------------------------------------------------------------


def test_tables_are_aligned_like_kn():
    text = kn.table(("NAME", "URL"), [("a", "http://a"), ("longer", None)])
    assert text.splitlines() == ["NAME     URL", "a        http://a", "longer"]


@pytest.mark.parametrize(("seconds", "shown"), [
    (5, "5s"), (119, "119s"), (200, "3m20s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"),
    (50 * 3600, "2d2h"), (10 * 86400, "10d")])
def test_ages_read_like_kubectl(seconds, shown):
    assert kn.age(NOW - seconds, NOW) == shown
    assert kn.age(None, NOW) == ""


def _listed_service(**fields) -> dict:
    view = service(**{"latest_created": "hello-00001", "created_at": NOW - 200, **fields})
    return {**view, "conditions": service_conditions(view, with_conditions(revision()), IN_SYNC)}


def test_service_list_shows_url_latest_age_and_conditions():
    broken = {"ready": False, "restarts": 0, "error": "failed to start: x: not found on PATH", "log": "/l"}
    failing = service(name="bad", url="http://bad.localhost:8080", latest_ready=None, created_at=NOW - 5)
    failing["conditions"] = service_conditions(
        failing, with_conditions(revision(state="not ready", ready=0, instances=[broken])), IN_SYNC)
    lines = kn.service_list([failing, _listed_service()], NOW).splitlines()
    assert lines[0].split() == ["NAME", "URL", "LATEST", "AGE", "CONDITIONS", "READY", "REASON"]
    assert lines[2].split() == ["hello", "http://hello.localhost:8080", "hello-00001", "3m20s", "3", "OK", "/", "3",
                                "True"]
    assert lines[1].split()[:8] == ["bad", "http://bad.localhost:8080", "5s", "1", "OK", "/", "3", "False"]
    assert 'RevisionFailed : Revision "hello-00002" failed with message: failed to start' in lines[1]
    assert lines[0].index("URL") == lines[1].index("http://bad") == lines[2].index("http://hello")
    assert kn.service_list([], NOW) == "No services found."


def test_service_describe_shows_revisions_traffic_tags_and_conditions():
    v2 = with_conditions({**revision(), "name": "hello-00002", "generation": 2, "traffic": 10, "tags": ["canary"],
                          "created_at": NOW - 30, "latest_ready": True})
    v1 = with_conditions({**revision(), "traffic": 90, "latest_created": False, "latest_ready": False})
    old = with_conditions({**revision(state="stopped", ready=0, instances=[]), "name": "hello-00000", "traffic": 0,
                           "latest_created": False, "latest_ready": False})
    view = {**_listed_service(latest_created="hello-00002", latest_ready="hello-00002"), "revisions": [v2, v1, old],
            "traffic": [{"revision": "hello-00001", "percent": 90}, {"revision": "hello-00002", "percent": 10},
                        {"revision": "hello-00002", "tag": "canary", "url": "http://canary-hello.localhost:8080"}]}
    text = kn.service_describe(view, NOW)
    assert "URL:     http://hello.localhost:8080" in text and "Age:     3m20s" in text
    assert "    10%  hello-00002 #canary [2] (30s) (latest)" in text
    assert "    90%  hello-00001 [1] (90s)" in text
    assert "hello-00000" not in text  # neither traffic, tag nor latest: kn leaves it out too
    assert "#canary  http://canary-hello.localhost:8080 -> hello-00002" in text
    conditions = text[text.index("Conditions:"):].splitlines()
    assert conditions[1].split() == ["OK", "TYPE", "REASON", "MESSAGE"]
    assert [line.split()[:2] for line in conditions[2:]] == [
        ["++", "Ready"], ["++", "ConfigurationsReady"], ["++", "RoutesReady"]]


def test_revision_list_and_describe():
    entry = with_conditions({**revision(state="at zero", ready=0, desired=0, instances=[]), "tags": ["cur"],
                             "template": {"command": ["python3", "app.py"], "env": {"MESSAGE": "hi there"},
                                          "readiness": {"path": "/healthz"}, "concurrency": 4, "timeout": 60.0,
                                          "idleTimeout": 0.0, "responseStartTimeout": 10.0,
                                          "scale": {"min": 0, "max": 3, "initial": 1, "target": 10.0,
                                                    "metric": "rps"}}})
    lines = kn.revision_list([entry], NOW).splitlines()
    assert lines[0].split() == ["NAME", "SERVICE", "TRAFFIC", "TAGS", "GENERATION", "AGE", "CONDITIONS", "READY",
                                "REASON"]
    assert lines[1].split() == ["hello-00001", "hello", "100%", "cur", "1", "90s", "3", "OK", "/", "4", "True"]
    text = kn.revision_describe(entry, NOW)
    for expected in ("Service:      hello", "Generation:   1", "Command:      python3 app.py",
                     "Env:          MESSAGE=hi there", "Readiness:    GET /healthz", "Concurrency:  4 per instance",
                     "Timeouts:     60s (response start 10s, idle none)",
                     "Scale:        min 0, max 3, initial 1; target 10 rps per instance",
                     "Replicas:     0/0 (at zero)", "Traffic:      100% #cur"):
        assert expected in text, text
    assert " I   Active               NoTraffic" in text
    assert kn.revision_list([], NOW) == "No revisions found."


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_structured_output_is_the_answer_itself(output):
    data = [_listed_service()]
    text = kn.dump(data, output)
    assert (json.loads(text) if output == "json" else yaml.safe_load(text)) == data


# -- ferry wait ----------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.25)


def _view(status: str, reason: str | None = None, message: str | None = None) -> dict:
    ready = {"type": "Ready", "status": status, "reason": reason, "message": message, "severity": ""}
    return {"url": "http://hello.localhost:8080", "traffic": [{"revision": "hello-00002", "percent": 100}],
            "conditions": [ready]}


def _wait(answers, timeout=60.0, window=2.0, output=None) -> tuple[int, list[str]]:
    clock, paths = Clock(), []

    def call(api, path):
        paths.append(path)
        return answers[min(len(paths), len(answers)) - 1]

    args = argparse.Namespace(api="api", name="hello", timeout=timeout, error_window=window, output=output)
    return kn.wait(args, call, clock=clock, sleep=clock.sleep), paths


def test_wait_returns_once_ready(capsys):
    code, paths = _wait([_view("Unknown", "Deploying"), _view("Unknown", "Deploying"), _view("True")])
    assert code == 0 and paths == ["/services/hello"] * 3
    assert "service hello is ready after 0.5s: http://hello.localhost:8080 serves hello-00002 100%" in capsys.readouterr().out


def test_wait_gives_up_on_a_failure_that_lasts_the_error_window(capsys):
    failed = _view("False", "RevisionFailed", 'Revision "hello-00002" failed with message: failed to start')
    code, paths = _wait([_view("Unknown"), failed])
    assert code == 1 and len(paths) == 10  # the first False, then 2 s of them
    assert ('ferry: service hello failed: RevisionFailed: Revision "hello-00002" failed with message: failed to start'
            in capsys.readouterr().err)


def test_wait_rides_out_a_short_failure():
    blip = _view("False", "ExitedBeforeReady", "1 instance exited")
    assert _wait([blip, blip, _view("True")])[0] == 0


def test_wait_times_out_with_the_reason(capsys):
    code, _ = _wait([_view("Unknown", "Deploying", "0/1 instances ready")], timeout=3.0)
    assert code == 1
    assert "ferry: service hello is not ready after 3s: Deploying: 0/1 instances ready" in capsys.readouterr().err


def test_wait_prints_the_last_view_as_asked(capsys):
    assert _wait([_view("True")], output="yaml")[0] == 0
    assert yaml.safe_load(capsys.readouterr().out)["conditions"][0]["status"] == "True"
    assert _wait([None])[0] == 1  # the API's error is printed by the call


def test_wait_asks_again_while_ferry_is_not_up_yet_and_says_its_error_once(capsys):
    def call_failing(api, path, count=[0]):
        count[0] += 1
        if count[0] <= 3:
            print("ferry: no ferry answers at api (connection refused)", file=sys.stderr)
            return None
        return _view("True")

    clock = Clock()
    args = argparse.Namespace(api="api", name="hello", timeout=60.0, error_window=2.0, output=None)
    assert kn.wait(args, call_failing, clock=clock, sleep=clock.sleep) == 0
    assert capsys.readouterr().err.count("no ferry answers") == 1


# -- the command line ----------------------------------------------------------------------------------------------


@pytest.fixture
def api(monkeypatch, tmp_path):
    """ferry.cli with a fake API: path -> answer (None: the call failed, as cli._call reports it)."""
    answers: dict[str, object] = {}
    seen: list[tuple[object, str]] = []

    def call(api, path, body=None):
        seen.append((api, path))
        if path not in answers:
            print(f"ferry: no such thing at {path}", file=sys.stderr)
            return None
        return answers[path]

    monkeypatch.setattr(ferry.cli, "_call", call)
    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    answers["seen"] = seen
    answers["args"] = ["--api", "127.0.0.1:1", "--token-file", str(token)]
    return answers


def _run(api, *argv: str) -> int:
    return ferry.cli.main([*argv, *api["args"]])


def test_every_verb_reaches_its_api_path_with_the_token(api, capsys):
    listed = [_listed_service()]
    api["/services"] = listed
    api["/services/hello"] = {**_listed_service(), "revisions": [with_conditions(revision())]}
    api["/revisions"] = api["/revisions/hello"] = [with_conditions(revision())]
    api["/revision/hello-00001"] = {**with_conditions(revision()), "template": {"command": ["app"]}}
    for argv in (["service", "list"], ["service", "ls"], ["service", "describe", "hello"], ["revision", "list"],
                 ["revision", "list", "--service", "hello"], ["revision", "describe", "hello-00001"],
                 ["wait", "hello", "--timeout", "1s"]):
        assert _run(api, *argv) == 0, argv
    paths = [path for _, path in api["seen"]]
    assert paths == ["/services", "/services", "/services/hello", "/revisions", "/revisions/hello",
                     "/revision/hello-00001", "/services/hello"]
    assert all(a.token == "t0k3n" for a, _ in api["seen"])
    out = capsys.readouterr().out
    assert "3 OK / 3" in out and "Conditions:" in out and "Command:" in out

    assert _run(api, "service", "list", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == listed
    assert _run(api, "revision", "describe", "hello-00001", "-o", "yaml") == 0
    assert yaml.safe_load(capsys.readouterr().out)["template"] == {"command": ["app"]}


def test_a_missing_service_or_revision_exits_1_with_the_error(api, capsys):
    assert _run(api, "service", "describe", "nope") == 1
    assert _run(api, "revision", "describe", "nope-00001") == 1
    assert _run(api, "wait", "nope") == 1
    assert capsys.readouterr().err.count("ferry: no such thing at") == 3


def test_bad_arguments_are_usage_errors(api):
    for argv in (["service"], ["service", "list", "-o", "xml"], ["wait", "hello", "--timeout", "soon"],
                 ["wait", "hello", "--timeout", "nan"], ["wait", "hello", "--error-window", "-1s"]):
        with pytest.raises(SystemExit) as exit_:
            _run(api, *argv)
        assert exit_.value.code == 2
