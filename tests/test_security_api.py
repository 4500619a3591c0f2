"""Hostile requests against ferry's HTTP API: nothing is served to who has no token, no browser page or rebound DNS
name gets through, no file is read, nothing oversized or malformed reaches the leader.

In-process against api.build_api with a leader that records what reaches it; the real `ferry up` (token made
0600 in a private state folder, /apply reading no file) is in test_security_local.py.
"""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ferry.api import (
    MAX_BODY_BYTES,
    MAX_REPORT_TTL_S,
    ApiState,
    build_api,
    loopback_hosts,
)
from ferry.routing.errors import ConfigError, Problem

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


class RecordingLeader:
    """Knows one service, `hello`; records every call that reaches it."""

    def __init__(self):
        self.calls: list[tuple] = []

    def status(self, service):
        self.calls.append(("status", service))
        if service not in (None, "hello"):
            raise KeyError(service)
        return {"services": {"hello": {}}}

    def status_chunks(self, service):
        return iter([json.dumps(self.status(service)).encode()])

    async def apply(self, label, text):
        self.calls.append(("apply", label, text))
        if "bad" in text:
            raise ConfigError(label, [Problem("services", f"value {'x' * 5000!r} is not a service")])

    def rollout_status(self, service):
        self.calls.append(("rollout", service))
        if service != "hello":
            raise KeyError(service)
        return {"phase": "idle"}

    async def rollout_action(self, service, action):
        self.calls.append(("act", service, action))
        if service != "hello":
            raise KeyError(service)

    def revisions_status(self, service):
        self.calls.append(("revisions", service))
        if service not in (None, "hello"):
            raise KeyError(service)
        return []

    def revision_status(self, name):
        self.calls.append(("revision", name))
        if name != "hello-00001":
            raise KeyError(name)
        return {"name": name}

    def services_status(self, service):
        self.calls.append(("services", service))
        if service not in (None, "hello"):
            raise KeyError(service)
        return [{"name": "hello"}]

    async def set_traffic(self, service, splits):
        self.calls.append(("traffic", service, splits))

    def report_gateways(self, replica, gateways, ttl_s):
        self.calls.append(("report", replica, gateways, ttl_s))


@pytest.fixture
async def api():
    leader = RecordingLeader()
    state = ApiState(CollectorRegistry(), replica=lambda: {"role": "leader"}, leading=leader, token=TOKEN)
    server = TestServer(build_api(state), host="127.0.0.1")
    await server.start_server()
    state.hosts = loopback_hosts(server.port)  # as `ferry up` on 127.0.0.1 sets it
    client = TestClient(server)
    await client.start_server()
    client.leader = leader
    try:
        yield client
    finally:
        await client.close()


async def _call(api, method: str, path: str, **kwargs) -> tuple[int, dict | str, dict]:
    async with api.request(method, path, **kwargs) as response:
        text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return response.status, body, dict(response.headers)


LEADER_ROUTES = [
    ("GET", "/status"), ("GET", "/replica"), ("POST", "/apply"), ("GET", "/rollouts/hello"),
    ("POST", "/rollouts/hello/promote"), ("GET", "/revisions/hello"), ("POST", "/traffic/hello"),
    ("PUT", "/replicas/r1/gateways"), ("GET", "/services"), ("GET", "/services/hello"), ("GET", "/revisions"),
    ("GET", "/revision/hello-00001"), ("GET", "/services/hello/spec"),
]
BAD_CREDENTIALS = {
    "none": {},
    "wrong token": {"Authorization": "Bearer wrong"},
    "prefix of the token": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus more": {"Authorization": f"Bearer {TOKEN}x"},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer "},
    "token alone": {"Authorization": TOKEN},
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
@pytest.mark.parametrize(("method", "path"), LEADER_ROUTES)
async def test_no_route_answers_without_the_token(api, method, path, credentials):
    body = json.dumps({"content": "services: {}", "splits": [], "gateways": [], "ttl_s": 1})
    status, answer, headers = await _call(api, method, path, data=body, headers={**JSON, **credentials})
    assert status == 401 and "Bearer" in answer["error"]
    assert headers["WWW-Authenticate"] == 'Bearer realm="ferry"'
    assert api.leader.calls == []


async def test_token_in_the_query_string_is_not_a_token(api):
    assert (await _call(api, "GET", f"/status?token={TOKEN}&access_token={TOKEN}"))[0] == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_and_metrics_need_no_token_and_tell_nothing_of_the_routes(api, path):
    status, body, _ = await _call(api, "GET", path)
    assert status in (200, 503)
    assert api.leader.calls == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "", "application/json-seq"])
async def test_a_browser_page_cannot_change_anything(api, content_type):
    """The content types a cross-origin page may send without a CORS preflight, and others, are refused."""
    headers = {**AUTH, "Content-Type": content_type} if content_type else AUTH
    status, answer, response_headers = await _call(
        api, "POST", "/apply", data=b'{"content": "services: {}"}', headers=headers)
    assert status == 415 and "application/json" in answer["error"]
    assert "Access-Control-Allow-Origin" not in response_headers
    assert api.leader.calls == []


async def test_cors_preflight_is_not_granted(api):
    status, _, headers = await _call(api, "OPTIONS", "/apply", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status >= 400 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8090", "127.0.0.1.evil.example", "localhost.evil",
                                  "0.0.0.0", "[::ffff:127.0.0.1]"])
async def test_dns_rebinding_host_names_are_refused_on_loopback(api, host):
    status, answer, _ = await _call(api, "GET", "/status", headers={**AUTH, "Host": host})
    assert status == 403 and "127.0.0.1" in answer["error"]
    assert api.leader.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
async def test_loopback_host_names_are_answered(api, host):
    status, _, _ = await _call(api, "GET", "/status", headers={**AUTH, "Host": f"{host}:{api.port}"})
    assert status == 200


APPLY_BODIES = {
    "path and no content (read /etc/passwd)": {"path": "/etc/passwd", "content": None},
    "path only": {"path": "/etc/passwd"},
    "content a list": {"content": ["services: {}"]},
    "content a number": {"content": 7},
    "label an object": {"content": "services: {}", "path": {"x": 1}},
    "a JSON array": ["services: {}"],
    "a JSON string": "services: {}",
}


@pytest.mark.parametrize("body", APPLY_BODIES.values(), ids=APPLY_BODIES.keys())
async def test_apply_takes_content_only_and_reads_no_file(api, body):
    status, answer, _ = await _call(api, "POST", "/apply", data=json.dumps(body), headers={**AUTH, **JSON})
    assert status == 400 and "content" in answer["error"]
    assert "root:" not in json.dumps(answer)  # nothing of /etc/passwd
    assert api.leader.calls == []


@pytest.mark.parametrize("data", [b"{", b"\xff\xfe", b"null", b"", b'{"content": "a"' + b" " * 1000])
async def test_malformed_json_is_a_clear_400(api, data):
    for path in ("/apply", "/traffic/hello", "/replicas/r1/gateways"):
        method = "PUT" if path.startswith("/replicas") else "POST"
        status, answer, _ = await _call(api, method, path, data=data, headers={**AUTH, **JSON})
        assert status == 400 and answer["error"].startswith("expected JSON"), (path, data)
    assert api.leader.calls == []


async def test_apply_label_is_only_a_name_and_is_cut_short(api):
    traversal = "../" * 30 + "etc/shadow" + "A" * 5000
    status, answer, _ = await _call(api, "POST", "/apply", json={"path": traversal, "content": "services: {}"},
                                    headers=AUTH)
    assert status == 200
    ((_, label, text),) = api.leader.calls
    assert label == traversal[:200] and text == "services: {}"


async def test_rejected_apply_echoes_no_huge_value(api):
    status, answer, _ = await _call(api, "POST", "/apply", json={"content": "bad"}, headers=AUTH)
    assert status == 422
    assert len(answer["error"]) < 1000 and "(5000 characters)" in answer["error"]  # the quoted value is cut


async def test_an_oversized_body_is_refused_before_the_leader(api):
    status, _, _ = await _call(api, "POST", "/apply", data=b"x" * (MAX_BODY_BYTES + 1), headers={**AUTH, **JSON})
    assert status == 413
    assert api.leader.calls == []


@pytest.mark.parametrize("body", [
    {"gateways": "all", "ttl_s": 5}, {"gateways": [1, 2], "ttl_s": 5}, {"gateways": [], "ttl_s": -1},
    {"gateways": [], "ttl_s": "nan"}, {"gateways": []}, {"gateways": [], "ttl_s": 1e400},
])
async def test_replica_reports_are_checked(api, body):
    status, _, _ = await _call(api, "PUT", "/replicas/r1/gateways", data=json.dumps(body), headers={**AUTH, **JSON})
    assert status == 400
    assert api.leader.calls == []


async def test_a_replica_report_counts_for_a_minute_at_most(api):
    status, _, _ = await _call(api, "PUT", "/replicas/r1/gateways", json={"gateways": [], "ttl_s": 10**9},
                               headers=AUTH)
    assert status == 200
    assert api.leader.calls == [("report", "r1", [], MAX_REPORT_TTL_S)]


@pytest.mark.parametrize("body", [{"splits": "all"}, {"splits": [["v1"]]}, {"splits": [["v1", "half"]]},
                                  {"splits": [["v1", 1e400]]}, {"splits": None}, []])
async def test_traffic_bodies_are_checked(api, body):
    status, _, _ = await _call(api, "POST", "/traffic/hello", data=json.dumps(body), headers={**AUTH, **JSON})
    assert status == 400
    assert api.leader.calls == []


@pytest.mark.parametrize("service", ["..%2F..%2Fetc%2Fpasswd", "hello%0d%0aSet-Cookie:%20x=1", "%00", "a" * 4000])
@pytest.mark.parametrize("route", ["/rollouts/", "/services/", "/revision/"])
async def test_odd_service_names_find_nothing_and_inject_nothing(api, service, route):
    status, answer, headers = await _call(api, "GET", f"{route}{service}", headers=AUTH)
    assert status == 404 and "Set-Cookie" not in headers
    assert all(call[1] not in ("hello", "hello-00001") for call in api.leader.calls)


async def test_the_kn_views_answer_what_exists_and_404_what_does_not(api):
    assert (await _call(api, "GET", "/services/hello", headers=AUTH))[1] == {"name": "hello", "revisions": []}
    assert (await _call(api, "GET", "/services", headers=AUTH))[1] == [{"name": "hello"}]
    assert (await _call(api, "GET", "/revisions", headers=AUTH))[1] == []
    status, answer, _ = await _call(api, "GET", "/revision/nope-00001", headers=AUTH)
    assert status == 404 and answer == {"error": "no revision 'nope-00001'"}
    status, answer, _ = await _call(api, "GET", "/services/nope", headers=AUTH)
    assert status == 404 and answer == {"error": "no service 'nope'"}


async def test_a_request_head_too_large_is_refused(api):
    status, _, _ = await _call(api, "GET", "/status", headers={**AUTH, "X-Junk": "x" * 100_000})
    assert status in (400, 431)
    assert api.leader.calls == []


async def test_replica_routes_want_a_client_certificate_over_mutual_tls():
    """Over mutual TLS, /replicas/... needs a certificate of ferry's CA besides the token; here the request comes
    over plain HTTP (no certificate), as a token thief's would."""
    leader = RecordingLeader()
    state = ApiState(CollectorRegistry(), replica=dict, leading=leader, token=TOKEN, replica_certs=True)
    async with TestClient(TestServer(build_api(state), host="127.0.0.1")) as client:
        async with client.put("/replicas/r1/gateways", json={"gateways": [], "ttl_s": 1}, headers=AUTH) as response:
            assert response.status == 403 and "certificate" in (await response.json())["error"]
        async with client.get("/status", headers=AUTH) as response:
            assert response.status == 200  # the user's routes need only the token
    assert leader.calls == [("status", None)]
