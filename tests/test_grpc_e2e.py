"""gRPC revisions (`protocol: h2c`) through a real Envoy: HTTP/2 from the client to the gateway and from the gateway
to the instances, with splits, tag hosts and server streaming."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest

from ferry.routing.errors import ConfigError
from ferry.routing.loader import load_routes

from .helpers import wait_until

pytestmark = pytest.mark.timeout(180)

GRPC_APP = Path(__file__).resolve().parent.parent / "examples" / "grpc" / "app.py"


def echo(generation: int, traffic: str = "") -> str:
    return (f"\n    echo:\n      template:\n        command: [{sys.executable}, {GRPC_APP}]\n"
            "        protocol: h2c\n        readiness: {}\n        scale: {min: 1, burstCapacity: 0}\n"
            f"        env: {{GENERATION: '{generation}'}}\n" + (f"      traffic: {traffic}\n" if traffic else ""))


async def say(port: int, authority: str, message: str = "hi") -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", authority)]) as ch:
        return (await ch.unary_unary("/echo.Echo/Say")(message.encode(), timeout=10)).decode()


async def _split_is(f, expected: dict[str, int]) -> bool:
    traffic = (await f.status())["services"]["echo"]["traffic"]
    return {t["revision"]: t["percent"] for t in traffic if "percent" in t} == expected


async def test_grpc_calls_follow_splits_tags_and_stream_through_envoy(ferry):
    f = ferry()
    f.write_routes(echo(1))
    await f.start()
    await f.wait_converged()
    assert await say(f.gateway_port, "echo.localhost") == "echo-00001: hi"

    f.write_routes(echo(2, "[{revision: echo-00001, percent: 75}, {latestRevision: true, percent: 25, tag: next}]"))
    await wait_until(lambda: _split_is(f, {"echo-00001": 75, "echo-00002": 25}), 30, "the 75/25 split")
    await f.wait_converged()

    calls = 2000
    async with grpc.aio.insecure_channel(f"127.0.0.1:{f.gateway_port}",
                                         options=[("grpc.default_authority", "echo.localhost")]) as channel:
        method = channel.unary_unary("/echo.Echo/Say")
        answers = Counter([(await method(b"x", timeout=10)).decode().split(":")[0] for _ in range(calls)])
        stream = channel.unary_stream("/echo.Echo/Count")(b"5", timeout=10)
        streamed = [message.decode() async for message in stream]
    assert sum(answers.values()) == calls and set(answers) == {"echo-00001", "echo-00002"}, answers
    assert 0.72 <= answers["echo-00001"] / calls <= 0.78, answers  # 75 % within 3 points over 2,000 calls
    assert len(streamed) == 5 and len({m.split(":")[0] for m in streamed}) == 1  # one stream, one revision
    for _ in range(20):
        assert await say(f.gateway_port, "next-echo.localhost") == "echo-00002: hi"

    # A gRPC error is an error to the client, carried through Envoy as it is.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await say(f.gateway_port, "next-echo.localhost", "fail")
    assert failed.value.code() == grpc.StatusCode.INTERNAL


def test_an_h2c_revision_scales_like_any_and_its_readiness_get_on_kubernetes_is_refused(tmp_path):
    text = ("services:\n  echo:\n    template:\n      image: ghcr.io/me/echo:1\n      protocol: h2c\n"
            "      readiness: {path: /healthz}\n")
    with pytest.raises(ConfigError) as caught:
        load_routes(tmp_path / "routes.yaml", "backend: kubernetes\n" + text)
    message = str(caught.value)
    assert "services.echo.template" in message and "readiness: {} (a TCP connect)" in message
    assert "kubelet's readiness GET is HTTP/1.1" in message
    # at zero, with burst capacity and a concurrency limit (the activator speaks h2c), readiness a TCP connect
    ok = load_routes(tmp_path / "routes.yaml", "backend: kubernetes\n" + text.replace("{path: /healthz}", "{}")
                     + "      concurrency: 1\n      scale: {min: 0, initial: 0, burstCapacity: -1}\n")
    assert ok.spec.services["echo"].template.protocol == "h2c"
    # on backend local, ferry's own readiness GET for an h2c revision is HTTP/2
    local = load_routes(tmp_path / "routes.yaml", text.replace("image: ghcr.io/me/echo:1", "command: [app]"))
    assert local.spec.services["echo"].template.readiness.path == "/healthz"
