"""gRPC revisions at zero through a real Envoy and ferry's activator: Envoy speaks h2c to the activator (the EDS of an
h2c revision at zero names it), which holds the calls, wakes the revision and forwards them over h2c."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
import pytest

from ferry.backends.local import LocalProcessBackend

from .helpers import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
GRPC_APP = ROOT / "examples" / "grpc" / "app.py"
COUNTING_APP = Path(__file__).resolve().parent / "apps" / "grpc_counting.py"
H2C_APP = Path(__file__).resolve().parent / "apps" / "h2c_hello.py"


def service(app: Path, scale: str, *, concurrency: int = 0, env: str = "{}") -> str:
    return (f"\n    echo:\n      template:\n        command: [{sys.executable}, {app}]\n        protocol: h2c\n"
            f"        concurrency: {concurrency}\n        scale: {scale}\n        env: {env}\n")


async def _revision(f, name: str = "echo-00001") -> dict:
    return (await f.status())["revisions"][name]


async def calls(port: int, messages: list[bytes], timeout: float = 60) -> list[bytes]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                         options=[("grpc.default_authority", "echo.localhost")]) as channel:
        method = channel.unary_unary("/echo.Echo/Say")
        return await asyncio.gather(*(method(m, timeout=timeout) for m in messages))


async def test_an_h2c_revision_at_zero_answers_100_concurrent_calls(ferry):
    f = ferry()
    f.write_routes(service(GRPC_APP, "{min: 0, initial: 0}"))
    await f.start()
    await f.wait_converged()
    revision = await _revision(f)
    assert revision["total"] == 0 and revision["autoscaling"]["activator_in_path"], revision

    answers = await calls(f.gateway_port, [str(i).encode() for i in range(100)])
    assert answers == [f"echo-00001: {i}".encode() for i in range(100)]
    revision = await _revision(f)
    assert revision["ready"] >= 1, revision
    # Every call went through the activator (it was in path from zero on), which counted each one.
    async with f.session() as session:
        async with session.get(f"{f.api}/metrics") as response:
            metrics = await response.text()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("ferry_activator_requests_total{") and 'revision="echo-00001"' in line
                  and 'code="200"' in line)
    assert counted >= 100, [line for line in metrics.splitlines() if line.startswith("ferry_activator_requests")]


async def test_concurrency_1_holds_for_h2c_end_to_end(ferry):
    """With a concurrency limit the activator stays in path at every scale; each instance reports the most calls it
    ever had at once, in every answer."""
    f = ferry()
    f.write_routes(service(COUNTING_APP, "{min: 0, initial: 0, max: 4}", concurrency=1, env="{LATENCY_MS: '20'}"))
    await f.start()
    await f.wait_converged()
    answers = [a.decode().split() for a in await calls(f.gateway_port, [b"x"] * 60)]
    assert len(answers) == 60 and {a[0] for a in answers} == {"echo-00001"}
    assert {a[2] for a in answers} == {"1"}, Counter(a[2] for a in answers)
    # and again once it scaled out (or not): still one at a time on each instance
    answers = [a.decode().split() for a in await calls(f.gateway_port, [b"y"] * 60)]
    assert {a[2] for a in answers} == {"1"}, Counter((a[1], a[2]) for a in answers)


async def test_plain_h2c_from_zero_with_an_http2_readiness_get(ferry):
    """Not gRPC: an HTTP/2-only app whose readiness is an HTTP/2 GET, at zero; a client speaking HTTP/1.1 to Envoy
    reaches it through the activator over h2c, request body included."""
    f = ferry()
    f.write_routes(f"\n    echo:\n      template:\n        command: [{sys.executable}, {H2C_APP}]\n"
                   "        protocol: h2c\n        readiness: {path: /healthz}\n"
                   "        scale: {min: 0, initial: 0}\n")
    await f.start()
    await f.wait_converged()
    async with aiohttp.ClientSession() as session:
        async def post(i: int) -> str:
            async with session.post(f"{f.gateway}/hi/{i}", data=b"x" * 1000,
                                    headers={"Host": "echo.localhost"}) as response:
                assert response.status == 200, await response.text()
                return await response.text()

        answers = await asyncio.gather(*(post(i) for i in range(20)))
    assert answers == [f"echo-00001: POST /hi/{i} 1000\n" for i in range(20)]


async def test_the_local_readiness_get_of_an_h2c_instance_is_http2(tmp_path):
    """A TCP connect would pass for both; an HTTP/1.1 GET for neither; the HTTP/2 GET tells them apart."""
    backend = LocalProcessBackend(lambda revision, endpoints: None, log_dir=tmp_path)
    apps = []
    try:
        ports = []
        for healthz in ("200", "503"):
            port = free_port()
            apps.append(await asyncio.create_subprocess_exec(
                sys.executable, str(H2C_APP), env={**os.environ, "PORT": str(port), "HEALTHZ": healthz}))
            ports.append(port)
            await wait_until(lambda: backend._probe(port, None), 20, "the app to listen")
        healthy, failing = ports
        assert await backend._probe(healthy, "/healthz", http2=True)
        assert not await backend._probe(failing, "/healthz", http2=True)
        assert not await backend._probe(healthy, "/healthz")  # HTTP/1.1 cannot reach it
    finally:
        for app in apps:
            app.terminate()
            await app.wait()
        await backend.aclose()
