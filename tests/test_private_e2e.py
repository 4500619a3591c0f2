"""Private services (Knative's cluster-local) through a real Envoy: `visibility: private` is routed on
gateway.internal only; the public listener answers 404 for its hosts, whatever a client claims in headers; a
service moves between the two under load without losing a request."""

from __future__ import annotations

import aiohttp
import pytest

from . import ferry_process
from .helpers import free_port, wait_until
from .load import Load

pytestmark = pytest.mark.timeout(180)


def services(hello_visibility: str = "public") -> str:
    hello = ferry_process.hello("hi", extra=(f"visibility: {hello_visibility}",))
    secret = ferry_process.hello("secret", extra=("visibility: private",
                                                  "traffic: [{latestRevision: true, percent: 100, tag: next}]"))
    return hello + secret.replace("\n    hello:\n", "\n    secret:\n", 1)


async def _status(url: str, host: str, **headers: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Host": host, **headers}) as response:
            return response.status


async def test_private_services_answer_on_the_internal_listener_only(ferry):
    f = ferry()
    internal = f"http://127.0.0.1:{free_port()}"
    gateway_lines = f"internal: {internal.removeprefix('http://')}"
    f.write_routes(services(), gateway=gateway_lines)
    await f.start()
    await f.wait_converged()
    for host in ("hello.localhost", "secret.localhost", "next-secret.localhost"):
        assert await _status(internal, host) == 200, host
    assert await _status(f.gateway, "hello.localhost") == 200
    for host in ("secret.localhost", "next-secret.localhost"):
        assert await _status(f.gateway, host) == 404, host
        assert await _status(f.gateway, host, **{"ferry-listener": "internal"}) == 404, host  # a client's claim
    async with aiohttp.ClientSession() as session:  # the listener's mark stays between the gateway and its routes
        async with session.get(f"{internal}/headers", headers={"Host": "secret.localhost"}) as response:
            assert "ferry-listener" not in await response.json()

    # hello goes private and back under load on the internal listener: nothing lost; the public one follows.
    async with Load(internal, "hello.localhost", concurrency=8) as load:
        await load.wait_for(200)
        f.write_routes(services("private"), gateway=gateway_lines)
        await wait_until(lambda: _is(f.gateway, "hello.localhost", 404), 30, "hello off the public listener")
        await load.wait_for(200)
        f.write_routes(services("public"), gateway=gateway_lines)
        await wait_until(lambda: _is(f.gateway, "hello.localhost", 200), 30, "hello back on the public listener")
        await load.wait_for(200)
    assert load.failures == 0, (load.statuses, load.errors, load.bad)
    status = await f.status()
    assert status["revisions"].keys() == {"hello-00001", "secret-00001"}  # visibility is no template field


async def _is(url: str, host: str, expected: int) -> bool:
    return await _status(url, host) == expected
