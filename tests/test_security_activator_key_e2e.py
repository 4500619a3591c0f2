"""The activator's key goes on the hop to the activator and nowhere else (issue 12): with real Envoy and ferry, an
instance the gateway reaches directly (a ready revision with the activator out of its path, HTTP/1.1 and h2c) and
an `endpoints:` service see no `ferry-activator-key`, not even one a client sent, while revisions at zero (HTTP/1.1,
h2c and a websocket) are still woken through the activator, which serves nothing without the key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from ferry.xds import resources as xds
from ferry.xds.resources import ACTIVATOR_KEY_HEADER

from .ferry_process import HELLO_APP
from .helpers import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

H2C_APP = Path(__file__).resolve().parent / "apps" / "h2c_hello.py"
STREAM_APP = Path(__file__).resolve().parent / "apps" / "stream_app.py"
FORGED = {ACTIVATOR_KEY_HEADER: "forged-by-a-client"}


def _service(name: str, app: Path, scale: str, protocol: str = "") -> str:
    fields = [f"command: [{sys.executable}, {app}]", f"scale: {scale}"]
    fields += [f"protocol: {protocol}"] if protocol else ["readiness: {path: /healthz}"]
    return f"\n{name}:\n  template:\n" + "".join(f"    {field}\n" for field in fields)


async def _headers(session: aiohttp.ClientSession, url: str, host: str) -> dict[str, str]:
    """The request headers the app behind `host` received, as it echoes them on /headers."""
    async with session.get(f"{url}/headers", headers={"Host": host, **FORGED}) as response:
        body = await response.text()
        assert response.status == 200, (host, response.status, body)
    return {k.lower(): v for k, v in json.loads(body).items()}


async def _echo_server() -> tuple[web.AppRunner, int]:
    """An instance ferry does not run (an `endpoints:` service): it answers /headers with what it received."""

    async def headers(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers))

    app = web.Application()
    app.router.add_get("/headers", headers)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_the_activator_key_reaches_the_activator_only(ferry):
    runner, outside_port = await _echo_server()
    try:
        f = ferry()
        f.write_routes(
            _service("direct", HELLO_APP, "{min: 1}")
            + _service("direct2", H2C_APP, "{min: 1}", protocol="h2c")
            + _service("sleepy", HELLO_APP, "{min: 0, initial: 0}")
            + _service("sleepy2", H2C_APP, "{min: 0, initial: 0}", protocol="h2c")
            + _service("wsleepy", STREAM_APP, "{min: 0, initial: 0}")
            + f"\noutside:\n  template:\n    endpoints: [127.0.0.1:{outside_port}]\n")
        await f.start()

        async def direct_paths() -> bool:
            """Both ready revisions answer from their instances (the activator left their path), and the gateway
            has what says so."""
            revisions = (await f.status())["revisions"]
            direct = [revisions.get(name) for name in ("direct-00001", "direct2-00001")]
            return (all(r and r["ready"] >= 1 and not r["autoscaling"]["activator_in_path"] for r in direct)
                    and await f.converged())

        await wait_until(direct_paths, 120, "ready revisions out of the activator's path")
        revisions = (await f.status())["revisions"]
        assert revisions["sleepy-00001"]["autoscaling"]["activator_in_path"], revisions["sleepy-00001"]
        assert revisions["sleepy2-00001"]["autoscaling"]["activator_in_path"], revisions["sleepy2-00001"]

        key = f.activator_key[ACTIVATOR_KEY_HEADER]
        async with aiohttp.ClientSession() as session:
            seen = {host: await _headers(session, f.gateway, f"{host}.localhost")
                    for host in ("direct", "direct2", "outside", "sleepy", "sleepy2")}
        # absent, not empty; and neither the install's key nor the client's forged one
        leaked = {host: headers.get(ACTIVATOR_KEY_HEADER) for host, headers in seen.items()
                  if ACTIVATOR_KEY_HEADER in headers or key in json.dumps(headers)}
        assert not leaked, leaked
        # the gateway did route them (its revision header), and the h2c instances were spoken to over HTTP/2
        assert seen["direct"]["ferry-revision"] == "direct-00001", seen["direct"]
        assert seen["direct2"][":method"] == "GET" and seen["direct2"]["ferry-revision"] == "direct2-00001"

        # A websocket to a revision at zero: the upgrade goes through the keyed cluster's filters to the activator.
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{f.gateway}/ws", headers={"Host": "wsleepy.localhost", **FORGED}) as ws:
                await ws.send_str("ping")
                assert (await ws.receive(timeout=30)).data == "ping"

        # The revisions at zero were woken through the activator: it served them (it serves nothing without the
        # key, over HTTP/1.1 and h2c alike), and the direct ones never reached it. The activator counts a websocket
        # when it has ended, which may be a moment after the client closed it.
        counts: dict[tuple[str, str], float] = {}

        async def counted() -> bool:
            async with f.session() as session:
                async with session.get(f"{f.api}/metrics") as response:
                    metrics = await response.text()
            counts.clear()
            for line in metrics.splitlines():
                if line.startswith("ferry_activator_requests_total{"):
                    labels, value = line.rsplit(" ", 1)
                    code = labels.split('code="')[1].split('"')[0]
                    counts[labels.split('revision="')[1].split('"')[0], code] = float(value)
            return {"sleepy-00001", "sleepy2-00001", "wsleepy-00001"} <= {rev for rev, _ in counts}

        await wait_until(counted, 30, "the activator's count of the requests it served")
        assert counts[("sleepy-00001", "200")] >= 1 and counts[("sleepy2-00001", "200")] >= 1, counts
        assert not {rev for rev, _ in counts} & {"direct-00001", "direct2-00001"}, counts
        assert not any(value for (_, code), value in counts.items() if code == "403"), counts
    finally:
        await runner.cleanup()


def _upstream_filters(resource) -> list[str]:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster = cluster_pb2.Cluster.FromString(resource.body)
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    return [f.name for f in options.http_filters]


def test_only_clusters_that_can_name_the_activator_carry_the_key_filter():
    """`endpoints:` revisions (20,000 clusters at 10,000 services) get no upstream filter; the key is in the
    activator's endpoint metadata only, never in an instance's."""
    assert _upstream_filters(xds.cluster("s/s-a")) == []
    keyed = ["envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec"]
    assert _upstream_filters(xds.cluster("s/s-a", keyed=True)) == keyed
    assert _upstream_filters(xds.cluster("s/s-a", keyed=True, http2=True)) == keyed
    to_activator = endpoint_pb2.ClusterLoadAssignment.FromString(
        xds.load_assignment("s/s-a", [("127.0.0.1", 8012)], key="k3y").body)
    (endpoint,) = to_activator.endpoints[0].lb_endpoints
    assert endpoint.metadata.filter_metadata["ferry"]["key"] == "k3y"
    to_instances = endpoint_pb2.ClusterLoadAssignment.FromString(
        xds.load_assignment("s/s-a", [("127.0.0.1", 9001), ("127.0.0.1", 9002)]).body)
    assert not any(e.HasField("metadata") for e in to_instances.endpoints[0].lb_endpoints)
