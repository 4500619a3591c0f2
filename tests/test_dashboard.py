"""The dashboard without a browser: login codes and sessions (ui/sessions.py), who may reach /ui and what a session
cookie may not do (api.py's guard), the paged JSON at 10,000 services, the 15-minute traffic history against a fake
snapshot (ui/history.py), that the assets ship with the package, and `ferry dashboard`.

In-process against api.build_api with a fake leader; the real `ferry up` + Envoy + chromium is in
test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import tomllib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ferry import dashboard_cli
from ferry.api import ApiState, build_api, loopback_hosts
from ferry.cli import Api
from ferry.ui import routes as ui_routes
from ferry.ui.history import TrafficHistory
from ferry.ui.sessions import COOKIE, MAX_CODES, Logins

from .helpers import wait_until

TOKEN = "dashboard-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Traffic:
    """Shaped like reconcile/observe.py's RevisionTraffic."""

    service: str
    revision: str
    tag: str | None = None
    requests: dict = field(default_factory=dict)
    duration_ms: tuple | None = None
    in_flight: int = 0


class UiLeader:
    """`count` services s00000..; hello has two revisions, a 90/10 split and a tag; records mutating calls."""

    def __init__(self, count: int = 3):
        self.names = ["hello", *(f"s{i:05}" for i in range(count))]
        self.history = TrafficHistory(clock=lambda: 1000.0)
        self.calls: list[tuple] = []
        self.traffic = [{"revision": "hello-00001", "percent": 90}, {"revision": "hello-00002", "percent": 10},
                        {"revision": "hello-00002", "tag": "canary", "url": "http://canary-hello.localhost:8080"}]

    def service_names(self):
        return sorted(self.names)

    def gateways_status(self):
        return [{"node": "gw-1", "group": "default", "protocol": "delta", "connected": True, "in_sync": True,
                 "acked": {"cds": "v1"}, "last_nack": None}]

    def config_status(self):
        return {"file": "routes.yaml", "last_applied": time.time(), "last_error": None}

    def _view(self, name):
        if name not in self.names:
            raise KeyError(name)
        traffic = self.traffic if name == "hello" else [{"revision": f"{name}-00001", "percent": 100}]
        return {"url": f"http://{name}.localhost:8080", "visibility": "public", "latest_created": f"{name}-00002",
                "latest_ready": f"{name}-00002", "traffic": traffic, "routed": True, "waiting": None,
                "split_owner": "file", "rollout": None, "hosts": [f"{name}.localhost"]}

    def services_status(self, service):
        assert service is not None, "the dashboard never asks for every service at once"
        return [{"name": service, **self._view(service), "conditions": [{"type": "Ready", "status": "True"}]}]

    def revision_status(self, name):
        if not name.endswith("-00002"):
            raise KeyError(name)  # stopped (revisions_status says so): never asked for
        return {"name": name, "autoscaling": {"desired": 2, "ready": 2, "scale_events": [
            {"at": time.time() - 30, "from": 1, "to": 2, "reason": "load"}]}, "endpoints": ["127.0.0.1:1"]}

    def revisions_status(self, service):
        self._view(service)
        return [{"name": f"{service}-0000{g}", "state": state, "ready": 1, "desired": 1, "traffic": 50,
                 "tags": [], "created_at": 0.0, "rollout": None} for g, state in ((2, "ready"), (1, "stopped"))]

    async def apply(self, label, text):
        self.calls.append(("apply",))

    async def set_traffic(self, service, splits):
        self.calls.append(("traffic", service))

    def status_chunks(self, service):
        self.calls.append(("status",))
        return iter([b"{}"])


async def _client(leader, logins: Logins | None = None) -> TestClient:
    state = ApiState(CollectorRegistry(), replica=dict, leading=leader, token=TOKEN,
                     **({"logins": logins} if logins else {}))
    server = TestServer(build_api(state), host="127.0.0.1")
    await server.start_server()
    state.hosts = loopback_hosts(server.port)
    client = TestClient(server, cookie_jar=aiohttp.DummyCookieJar())  # cookies only as a test sends them
    await client.start_server()
    return client


@pytest.fixture
async def clock():
    return Clock()


@pytest.fixture
async def api(clock):
    leader = UiLeader()
    client = await _client(leader, Logins(clock=clock, code_ttl_s=60, session_ttl_s=3600))
    client.leader = leader
    try:
        yield client
    finally:
        await client.close()


async def _code(api) -> str:
    async with api.post("/ui/api/login", json={}, headers=AUTH) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["path"] == f"/ui/login?code={answer['code']}" and answer["expires_in_s"] == 60
    return answer["code"]


async def _login(api, code: str) -> tuple[int, str | None, str]:
    """GET the login link: (status, the session cookie's Set-Cookie header, body)."""
    async with api.get(f"/ui/login?code={code}", allow_redirects=False) as response:
        return response.status, response.headers.get("Set-Cookie"), await response.text()


def _session(set_cookie: str) -> dict[str, str]:
    value = re.match(rf"{COOKIE}=([^;]+);", set_cookie).group(1)
    return {"Cookie": f"{COOKIE}={value}"}


# -- sessions ----------------------------------------------------------------------------------------------------


def test_a_code_works_once_and_only_before_it_expires():
    clock = Clock()
    logins = Logins(clock=clock, code_ttl_s=60, session_ttl_s=100)
    code = logins.issue_code()
    session = logins.redeem(code)
    assert session and logins.valid(session)
    assert logins.redeem(code) is None, "a used code must not log in again"
    late = logins.issue_code()
    clock.now += 60
    assert logins.redeem(late) is None, "an expired code must not log in"
    assert logins.redeem("made-up") is None and logins.redeem("") is None and logins.redeem(None) is None
    clock.now += 40  # 100 s after the session began
    assert not logins.valid(session), "a session expires"
    assert not logins.valid(None) and not logins.valid("x" * 500)


def test_codes_and_sessions_are_bounded():
    logins = Logins()
    codes = [logins.issue_code() for _ in range(MAX_CODES + 50)]
    assert len(logins._codes) == MAX_CODES
    assert logins.redeem(codes[0]) is None and logins.redeem(codes[-1]) is not None  # the oldest went first


# -- who reaches /ui ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui", "/ui/app.js", "/ui/api/services", "/ui/api/services/hello",
                                  "/ui/api/overview"])
async def test_without_a_token_or_a_session_nothing_of_the_dashboard_is_served(api, path):
    for headers in ({}, {"Cookie": f"{COOKIE}=forged"}, {"Authorization": "Bearer wrong"}):
        async with api.get(path, headers=headers) as response:
            assert response.status == 401, (path, headers)
            text = await response.text()
            assert "ferry dashboard" in text and '"services"' not in text


async def test_the_login_link_gives_a_strict_httponly_cookie_that_reads_the_dashboard(api):
    status, cookie, body = await _login(api, await _code(api))
    assert status == 200 and cookie is not None
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= set(attributes)
    assert attributes["samesite"].lower() == "samesite=strict" and attributes["path"].lower() == "path=/ui"
    assert 'http-equiv="refresh" content="0;url=/ui"' in body  # a same-site navigation to the page
    for path in ("/ui", "/ui/app.js", "/ui/app.css", "/ui/api/services?q=hel", "/ui/api/services/hello",
                 "/ui/api/overview"):
        async with api.get(path, headers=_session(cookie)) as response:
            assert response.status == 200, path
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_a_used_code_and_an_expired_code_do_not_log_in(api, clock):
    code = await _code(api)
    async with api.head(f"/ui/login?code={code}") as response:  # a link preview
        assert response.status == 200 and "Set-Cookie" not in response.headers
    assert (await _login(api, code))[0] == 200
    status, cookie, body = await _login(api, code)
    assert status == 401 and cookie is None and "works once" in body
    expired = await _code(api)
    clock.now += 61
    assert (await _login(api, expired))[:2] == (401, None)
    assert (await _login(api, "not-a-code"))[:2] == (401, None)


async def test_a_session_expires(api, clock):
    _, cookie, _ = await _login(api, await _code(api))
    clock.now += 3601
    async with api.get("/ui/api/overview", headers=_session(cookie)) as response:
        assert response.status == 401


async def test_the_session_cookie_changes_nothing_and_reads_nothing_outside_ui(api):
    _, cookie, _ = await _login(api, await _code(api))
    session = _session(cookie)
    body = json.dumps({"content": "services: {}", "splits": [["hello-00001", 100]]})
    for method, path in [("POST", "/apply"), ("POST", "/traffic/hello"), ("POST", "/rollouts/hello/abort"),
                         ("POST", "/ui/api/login"), ("GET", "/status"), ("GET", "/services"),
                         ("POST", "/ui/api/services"), ("PUT", "/replicas/x/gateways")]:
        async with api.request(method, path, data=body, headers={**JSON, **session}) as response:
            assert response.status in (401, 405), (method, path, response.status)
    assert api.leader.calls == [], "nothing reached the leader through a session cookie"


async def test_no_code_is_issued_without_the_token_or_by_a_simple_form(api):
    async with api.post("/ui/api/login", json={}) as response:
        assert response.status == 401
    async with api.post("/ui/api/login", data="x", headers={**AUTH, "Content-Type": "text/plain"}) as response:
        assert response.status == 415  # a web page cannot send application/json cross-origin without asking


async def test_a_rebound_host_name_cannot_log_in(api):
    code = await _code(api)
    async with api.get(f"/ui/login?code={code}", headers={"Host": "evil.example:80"}) as response:
        assert response.status == 403
    assert (await _login(api, code))[0] == 200, "the refused request did not spend the code"


async def test_the_page_has_no_inline_script_and_names_only_its_own_assets(api):
    class Scan(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs, self.inline, self.handlers = [], 0, []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.handlers += [name for name in attrs if name.startswith("on")]
            if tag == "script":
                self.refs.append(attrs.get("src"))
                self.inline += attrs.get("src") is None
            if tag == "link":
                self.refs.append(attrs.get("href"))

    async with api.get("/ui", headers=AUTH) as response:
        scan = Scan()
        scan.feed(await response.text())
    assert scan.inline == 0 and scan.handlers == []
    assert {r for r in scan.refs if not r.startswith("data:")} == {"/ui/app.js", "/ui/app.css"} <= set(ui_routes.ASSETS)
    script = (ROOT / "ferry" / "ui" / "static" / "app.js").read_text()
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", script), "no other origin in the script"
    assert "eval(" not in script and "innerHTML" not in script


def test_the_assets_ship_in_the_package():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "static/*" in data["ferry.ui"]
    static = ROOT / "ferry" / "ui" / "static"
    assert {name for name, _ in ui_routes.ASSETS.values()} == {p.name for p in static.iterdir()}


# -- what the page reads ---------------------------------------------------------------------------------------------


async def test_services_are_searched_and_paged_on_the_server_at_10000():
    leader = UiLeader(10_000)
    client = await _client(leader)
    try:
        async def page(query: str) -> dict:
            async with client.get(f"/ui/api/services?{query}", headers=AUTH) as response:
                assert response.status == 200
                return await response.json()

        first = await page("")
        assert (first["total"], first["matched"], len(first["services"])) == (10_001, 10_001, 50)
        assert first["services"][0]["name"] == "hello"
        found = await page("q=S0999&offset=0&limit=20")
        assert found["matched"] == 10 and [s["name"] for s in found["services"]][:2] == ["s09990", "s09991"]
        last = await page("offset=10000&limit=500")
        assert last["limit"] == 200 and [s["name"] for s in last["services"]] == ["s09999"]
        hello = (await page("q=hello"))["services"][0]
        assert [t.get("percent") for t in hello["traffic"]] == [90, 10, None] and hello["ready"] == "True"
        async with client.get("/ui/api/services?offset=x", headers=AUTH) as response:
            assert response.status == 400
    finally:
        await client.close()


async def test_one_service_has_its_revisions_autoscaling_history_and_gateways(api):
    api.leader.history = history = TrafficHistory(every_s=5, clock=lambda: 1000.0)
    counts = {"2xx": 0}
    history.snapshot = lambda: {"hello-00002": Traffic("hello", "hello-00002", "canary", dict(counts))}
    history.sample(990.0)
    counts["2xx"] = 50
    history.sample(995.0)
    async with api.get("/ui/api/services/hello", headers=AUTH) as response:
        detail = await response.json()
    assert [r["name"] for r in detail["revisions"]] == ["hello-00002", "hello-00001"]
    assert detail["revisions"][0]["autoscaling"]["scale_events"][0]["to"] == 2
    assert detail["revisions"][1]["autoscaling"] is None
    assert detail["gateways"][0]["in_sync"] is True
    assert detail["traffic_history"]["revisions"]["hello-00002"]["points"][0][:2] == [995.0, 10.0]
    async with api.get("/ui/api/services/nope", headers=AUTH) as response:
        assert response.status == 404
    async with api.get("/ui/api/overview", headers=AUTH) as response:
        overview = await response.json()
    assert overview["services"] == 4 and overview["gateways_in_sync"] == 1


# -- the traffic history -----------------------------------------------------------------------------------------


def test_history_turns_cumulative_counters_into_rate_errors_and_p99():
    counters = {"r1": Traffic("svc", "r1"), "idle": Traffic("svc", "idle", requests={"2xx": 7})}
    history = TrafficHistory(lambda: counters, every_s=5, window_s=900)
    history.sample(1000.0)  # a baseline: nothing yet
    assert history.for_service("svc", 1000.0)["revisions"] == {}
    counters["r1"] = Traffic("svc", "r1", requests={"2xx": 90, "5xx": 10},
                             duration_ms=((10.0, 50), (100.0, 99), (1000.0, 100), (math.inf, 100)))
    history.sample(1005.0)
    points = history.for_service("svc", 1005.0)["revisions"]
    assert set(points) == {"r1"}, "a revision that carried no request has no series"
    t, rps, errors, p99, in_flight = points["r1"]["points"][0]
    assert (t, rps, errors, in_flight) == (1005.0, 20.0, 10.0, 0)
    assert p99 == pytest.approx(100.0, rel=0.01)
    counters["r1"] = Traffic("svc", "r1", requests={"2xx": 100, "5xx": 10}, in_flight=3,
                             duration_ms=((10.0, 60), (100.0, 109), (1000.0, 110), (math.inf, 110)))
    history.sample(1010.0)
    second = history.for_service("svc", 1010.0)["revisions"]["r1"]["points"][1]
    assert second[1:] == [2.0, 0.0, pytest.approx(second[3]), 3] and second[3] <= 100.0
    counters["r1"] = Traffic("svc", "r1", requests={"2xx": 4})  # the gateway restarted: counting from zero
    history.sample(1015.0)
    assert history.for_service("svc", 1015.0)["revisions"]["r1"]["points"][2][1:3] == [0.8, 0.0]


def test_history_forgets_after_the_window_and_keeps_at_most_max_series():
    counters: dict = {}
    history = TrafficHistory(lambda: counters, every_s=5, window_s=60, max_series=100)
    for step in range(3):
        counters.update({f"r{i}": Traffic(f"s{i}", f"r{i}", requests={"2xx": step * 10}) for i in range(300)})
        history.sample(1000.0 + 5 * step)
    assert history.tracked() == 100, "the least recently busy series went first"
    assert sum(len(history.for_service(f"s{i}", 1010.0)["revisions"]) for i in range(300)) == 100
    counters.clear()
    history.sample(1071.0)
    assert history.tracked() == 0 and history._previous == {}, "quiet for the whole window: forgotten"


async def test_history_run_samples_in_slices_and_survives_a_bad_snapshot():
    calls = []

    def snapshot():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return {f"r{i}": Traffic("s", f"r{i}", requests={"2xx": len(calls) * 5}) for i in range(1200)}

    history = TrafficHistory(snapshot, every_s=0.01)
    task = asyncio.create_task(history.run())
    try:
        await wait_until(lambda: history.tracked() == 1200, 10, "every revision sampled")
    finally:
        task.cancel()
    assert len(calls) >= 3


# -- ferry dashboard ---------------------------------------------------------------------------------------------


def test_ferry_dashboard_prints_the_link_and_opens_it_when_asked(monkeypatch, capsys):
    opened = []
    monkeypatch.setattr(dashboard_cli.webbrowser, "open", lambda url: opened.append(url) or True)
    asked = []

    def call(api, path, body):
        asked.append((path, body))
        return {"code": "c0de", "path": "/ui/login?code=c0de", "expires_in_s": 60.0}

    args = type("Args", (), {"api": Api("127.0.0.1:8090", "t"), "open": False})()
    assert dashboard_cli.run(args, call) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:8090/ui/login?code=c0de\n" and opened == []
    args.open = True
    assert dashboard_cli.run(args, call) == 0 and opened == ["http://127.0.0.1:8090/ui/login?code=c0de"]
    assert asked == [("/ui/api/login", {})] * 2
    assert dashboard_cli.run(args, lambda *a: None) == 1


async def test_a_follower_logs_a_browser_in_itself_and_reads_the_leaders_dashboard_with_its_own_token():
    from ferry.replicas import API_ANNOTATION, Follower
    from ferry.xds.cache import SnapshotCache
    from ferry.xds.server import GatewayRegistry

    leading = await _client(UiLeader())

    class Elector:  # what Follower reads of the Lease: replica-a leads, its API is the in-process leader's
        identity, leader, leader_annotations = "replica-b", "replica-a", {API_ANNOTATION: f"127.0.0.1:{leading.port}"}

    follower = Follower(Elector(), SnapshotCache(), GatewayRegistry(), token=TOKEN)
    follower._session = aiohttp.ClientSession()  # run() makes it; the forwarding alone is under test
    state = ApiState(CollectorRegistry(), replica=dict, token=TOKEN)  # leading None: it follows
    server = TestServer(build_api(state, middlewares=(follower.forward,)), host="127.0.0.1")
    await server.start_server()
    state.hosts = loopback_hosts(server.port)
    client = TestClient(server, cookie_jar=aiohttp.DummyCookieJar())
    await client.start_server()
    try:
        _, cookie, _ = await _login(client, await _code(client))  # answered by the follower itself
        async with client.get("/ui/api/services?q=hello", headers=_session(cookie)) as response:
            assert response.status == 200 and response.headers["X-Ferry-Leader"] == "replica-a"
            assert (await response.json())["services"][0]["name"] == "hello"
        async with client.get("/ui/api/services") as response:
            assert response.status == 401
        async with client.post("/traffic/hello", json={"reset": True}, headers=_session(cookie)) as response:
            assert response.status == 401
    finally:
        await follower._session.close()
        await client.close()
        await leading.close()


@pytest.mark.parametrize("before, after", [
    ((), ((10.0, 50), (100.0, 99), (1000.0, 100), (math.inf, 100))),
    (((10.0, 5), (100.0, 9), (1000.0, 10), (math.inf, 10)), ((10.0, 55), (100.0, 108), (1000.0, 110), (math.inf, 110))),
    (((10.0, 5), (100.0, 9), (1000.0, 10), (math.inf, 10)), ((10.0, 5), (100.0, 9), (1000.0, 10), (math.inf, 10))),
    (((1.0, 0), (math.inf, 0)), ((1.0, 0), (math.inf, 7))),  # all beyond the last finite bound
    (((10.0, 5), (100.0, 9)), ((10.0, 4), (100.0, 19))),  # sums over gateways read apart: not monotonic
])
def test_history_p99_agrees_with_the_rollout_analysis(before, after):
    from ferry.rollout.analysis import quantile
    from ferry.ui.history import _p99

    previous = dict(before)
    expected = quantile(0.99, tuple((bound, count - previous.get(bound, 0)) for bound, count in after))
    assert _p99(before, after) == expected
