"""Knative's three timeouts through a real Envoy: total (`timeout`), `responseStartTimeout` and `idleTimeout`, each
cutting a request at its value (within 20 %), and a websocket bounded by the idle timeout, not the total one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.timeout(180)

STREAM_APP = Path(__file__).resolve().parent / "apps" / "stream_app.py"


def stream_service(**template: str) -> str:
    fields = [f"command: [{sys.executable}, {STREAM_APP}]", "readiness: {path: /healthz}", "scale: {min: 1}",
              *(f"{name}: {value}" for name, value in template.items())]
    return "\n    stream:\n      template:\n" + "".join(f"        {field}\n" for field in fields)


async def _started(ferry, **template: str):
    f = ferry()
    f.write_routes(stream_service(**template))
    await f.start()
    await f.wait_converged()
    return f


async def _fetch(f, path: str) -> tuple[int | None, bytes, float, bool]:
    """(status or None, the body received, seconds until the answer ended, whether it ended whole)."""
    started = time.monotonic()
    body = b""
    status = None
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"{f.gateway}{path}", headers={"Host": "stream.localhost"},
                                   timeout=aiohttp.ClientTimeout(total=30)) as response:
                status = response.status
                async for chunk in response.content.iter_any():
                    body += chunk
            whole = True
        except aiohttp.ClientPayloadError:
            whole = False
    return status, body, time.monotonic() - started, whole


def _near(seconds: float, target: float) -> bool:
    return 0.8 * target <= seconds <= 1.2 * target


async def test_the_total_timeout_cuts_a_response_still_streaming(ferry):
    f = await _started(ferry, timeout="1s")
    status, body, took, whole = await _fetch(f, "/stream?chunks=40&every=0.1")  # 4 s of chunks
    assert status == 200 and not whole and body.startswith(b"0\n"), (status, body, whole)
    assert _near(took, 1.0), took


async def test_the_idle_timeout_cuts_a_stalled_response_but_not_a_long_lively_one(ferry):
    f = await _started(ferry, timeout="20s", idleTimeout="1s")
    status, body, took, whole = await _fetch(f, "/stream?chunks=2&every=5")  # one chunk, then 5 s of silence
    assert status == 200 and not whole and body == b"0\n", (status, body, whole)
    assert _near(took, 1.0), took
    status, body, took, whole = await _fetch(f, "/stream?chunks=16&every=0.2")  # 3 s, never idle for 1 s
    assert status == 200 and whole and body.count(b"\n") == 16 and took > 2.5, (status, body, took)


async def test_the_response_start_timeout_cuts_a_late_head_but_not_a_long_stream(ferry):
    f = await _started(ferry, timeout="20s", responseStartTimeout="1s")
    status, body, took, _ = await _fetch(f, "/stream?start=5")
    assert status == 504, (status, body)
    assert _near(took, 1.0), took
    status, body, took, whole = await _fetch(f, "/stream?start=0.3&chunks=16&every=0.15")  # started in time, 2.5 s
    assert status == 200 and whole and body.count(b"\n") == 16 and took > 2.0, (status, body, took)


async def test_a_websocket_outlives_the_timeout_while_lively_and_ends_when_idle(ferry):
    f = await _started(ferry, timeout="1s", idleTimeout="2s")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{f.gateway}/ws", headers={"Host": "stream.localhost"}) as ws:
            opened = time.monotonic()
            while time.monotonic() - opened < 3.0:  # three times the total timeout, a message every 0.4 s
                await ws.send_str("ping")
                assert (await ws.receive(timeout=5)).data == "ping"
                quiet = time.monotonic()
                await _pause(0.4)
            closing = await ws.receive(timeout=10)
            idle = time.monotonic() - quiet
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), closing
    assert _near(idle, 2.0), idle


async def _pause(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)  # the client's own pacing between messages, not a wait for ferry
