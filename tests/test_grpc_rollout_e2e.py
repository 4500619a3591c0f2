"""gRPC revisions in rollouts through a real Envoy: a canary whose calls fail with INTERNAL (inside HTTP 200s) is
judged by grpc-status and rolled back; a server-streaming call survives a blue-green switch."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest

from .helpers import wait_until

pytestmark = pytest.mark.timeout(180)

GRPC_APP = Path(__file__).resolve().parent.parent / "examples" / "grpc" / "app.py"
V1, V2 = "echo-00001", "echo-00002"


def echo(generation: int, *, rollout: str = "", **env: str) -> str:
    values = "".join(f", {k}: '{v}'" for k, v in {"GENERATION": generation, **env}.items())
    return (f"\n    echo:\n      template:\n        command: [{sys.executable}, {GRPC_APP}]\n"
            "        protocol: h2c\n        readiness: {}\n        scale: {min: 1, burstCapacity: 0}\n"
            f"        env: {{{values[2:]}}}\n" + (f"      rollout: {rollout}\n" if rollout else ""))


class Calls:
    """Unary calls in a loop on one channel, counted by revision and by status, until stopped."""

    def __init__(self, port: int, authority: str = "echo.localhost", concurrency: int = 4):
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.default_authority", authority)])
        self.concurrency = concurrency
        self.revisions: dict[str, int] = {}
        self.codes: dict[grpc.StatusCode, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Calls:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.channel.close()

    async def _worker(self) -> None:
        say = self.channel.unary_unary("/echo.Echo/Say")
        while not self._stop.is_set():
            try:
                answer = (await say(b"hi", timeout=10)).decode()
                self.revisions[answer.split(":")[0]] = self.revisions.get(answer.split(":")[0], 0) + 1
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            self.codes[code] = self.codes.get(code, 0) + 1


async def _rollout(f) -> dict:
    return await f.get_json("/rollouts/echo")


async def test_a_canary_answering_internal_is_rolled_back_on_its_grpc_status(ferry):
    block = "{strategy: canary, steps: [10, 50, 100], interval: 3s, analysis: {minRequests: 20, successRate: 99}}"
    f = ferry()
    f.write_routes(echo(1, rollout=block))
    await f.start()
    await f.wait_converged()
    async with Calls(f.gateway_port) as calls:
        f.write_routes(echo(2, rollout=block, FAIL_RATE="0.3"))
        await wait_until(lambda: _phase_is(f, "rolled-back"), 60, f"the rollback; log:\n{f.log_text}")
    state = await _rollout(f)
    assert state["step"] == 0 and state["weight"] == 0
    assert "success" in state["reason"].lower() and "99" in state["reason"], state["reason"]
    internal = calls.codes.get(grpc.StatusCode.INTERNAL, 0)
    assert internal > 0 and set(calls.codes) == {grpc.StatusCode.OK, grpc.StatusCode.INTERNAL}, calls.codes
    assert (await f.status())["services"]["echo"]["latest_ready"] == V1


async def _phase_is(f, phase: str) -> bool:
    return (await _rollout(f)).get("phase") == phase


async def test_a_server_stream_survives_a_blue_green_switch(ferry):
    f = ferry()
    f.write_routes(echo(1, STREAM_INTERVAL_S="0.1"))
    await f.start()
    await f.wait_converged()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{f.gateway_port}",
                                         options=[("grpc.default_authority", "echo.localhost")]) as channel:
        stream = channel.unary_stream("/echo.Echo/Count")(b"30", timeout=30)  # 3 s of answers
        first = await stream.read()
        f.write_routes(echo(2, STREAM_INTERVAL_S="0.1"))
        await wait_until(lambda: _serving(f, V2), 30, "traffic on the new revision")
        assert (await channel.unary_unary("/echo.Echo/Say")(b"x", timeout=10)).decode().startswith(V2)
        rest = []
        while (message := await stream.read()) is not grpc.aio.EOF:
            rest.append(message)
    answers = [first.decode(), *(m.decode() for m in rest)]
    assert answers == [f"{V1}: {i}" for i in range(30)], answers
    assert await stream.code() == grpc.StatusCode.OK


async def _serving(f, revision: str) -> bool:
    traffic = (await f.status())["services"]["echo"]["traffic"]
    return [t["revision"] for t in traffic if t.get("percent") == 100] == [revision]
