"""Hostile clients against the activator, on real loopback sockets: only requests that carry the install's key (the
gateways add it) are held, woken for or forwarded, the key never reaches an instance, and malformed, oversized
and slow clients are cut off without disturbing anyone else."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from ferry.activator import server as activator_server
from ferry.activator.proxy import MAX_WEBSOCKET_MESSAGE_BYTES
from ferry.xds.resources import ACTIVATOR_KEY_HEADER, REVISION_HEADER

from .activator_fixtures import REV, url
from .helpers import wait_until

pytestmark = pytest.mark.timeout(60)

KEY = "install-key-0123456789abcdef"
KEYED = {REVISION_HEADER: REV, ACTIVATOR_KEY_HEADER: KEY}


@pytest.fixture
async def guarded(make_activator, instances):
    """An activator that wants KEY, one revision on one instance, and the revisions it was asked to wake."""
    woken: list[str] = []
    instance = await instances(name="a")
    activator = await make_activator(key=KEY, on_demand=woken.append, idle_timeout_s=1.0)
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=5)
    return activator, instance, woken


@pytest.mark.parametrize("headers", [
    {REVISION_HEADER: REV},
    {REVISION_HEADER: REV, ACTIVATOR_KEY_HEADER: ""},
    {REVISION_HEADER: REV, ACTIVATOR_KEY_HEADER: KEY[:-1]},
    {REVISION_HEADER: REV, ACTIVATOR_KEY_HEADER: KEY.upper()},
    {REVISION_HEADER: REV, ACTIVATOR_KEY_HEADER: f"{KEY}, {KEY}"},
    {REVISION_HEADER: "candidate-00002"},  # straight at an unpromoted revision
], ids=["no key", "empty key", "prefix", "other case", "key twice", "other revision"])
async def test_without_the_key_nothing_is_held_woken_or_forwarded(guarded, client, headers):
    activator, instance, woken = guarded
    async with client.get(url(activator, "/"), headers=headers) as response:
        assert response.status == 403
    assert instance.requests == 0 and woken == []
    assert REV not in activator.stats() or activator.stats()[REV].requests_total == 0


async def test_the_key_opens_and_never_reaches_the_instance(guarded, client):
    activator, instance, _ = guarded
    async with client.get(url(activator, "/hi"), headers=KEYED) as response:
        assert response.status == 200 and await response.text() == "hello from a"
    (seen,) = instance.seen
    assert ACTIVATOR_KEY_HEADER not in seen.headers and REVISION_HEADER in seen.headers


async def test_a_websocket_message_beyond_the_limit_closes_the_websocket(make_activator, instances, client):
    received: list[int] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for message in ws:
            received.append(len(message.data))
            await ws.send_str(message.data)
        return ws

    instance = await instances(echo)
    activator = await make_activator(key=KEY)
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=5)
    async with client.ws_connect(url(activator, "/ws"), headers=KEYED, max_msg_size=0) as ws:
        await ws.send_str("small")
        assert (await ws.receive(timeout=5)).data == "small"
        try:
            await ws.send_str("x" * (MAX_WEBSOCKET_MESSAGE_BYTES + 1))
        except ConnectionError:
            pass  # the activator closed while the message was still being written
        closing = await ws.receive(timeout=5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.closed or closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert received == [5]  # the big one never reached the instance


async def _raw(activator, data: bytes, *, read_for: float = 5.0) -> bytes:
    """Send `data` on a fresh connection; what came back before the activator closed it (or `read_for` passed).
    A reset (the activator closed with bytes of ours unread) is a refusal too: b"" then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", activator.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), read_for)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def _request(*headers: str, line: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([line, "Host: x", f"{REVISION_HEADER}: {REV}", f"{ACTIVATOR_KEY_HEADER}: {KEY}", *headers])
            + "\r\n\r\n").encode()


@pytest.mark.parametrize("data", [
    _request("X-Injected: a\rb"),  # a bare CR inside a header value
    _request("Content-Length: 5", "Transfer-Encoding: chunked"),  # request smuggling
    _request("Content-Length: 5", "Content-Length: 6"),
    _request("X-Huge: " + "x" * 70_000),  # beyond Envoy's own 60 KiB
    _request(line="GET / HTTP/1.1 extra"),
    _request(line="GET /" + "a" * 70_000 + " HTTP/1.1"),
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello to a plaintext port
], ids=["bare CR", "CL and TE", "two CL", "huge header", "bad request line", "huge URL", "TLS hello"])
async def test_malformed_requests_are_refused_and_reach_no_instance(guarded, data):
    activator, instance, woken = guarded
    answer = await _raw(activator, data)
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431", b"413")
    assert instance.requests == 0 and woken == []


async def test_a_slowloris_connection_is_closed_and_others_are_served(make_activator, instances, client):
    """A client that trickles a request head and never finishes it is cut off by the activator (its idle timeout:
    1 s here, 15 s by default; aiohttp's own is an hour, past this test's deadline), while another request, held
    at its instance across that moment, is served; the trickled request never reaches the instance."""
    released = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response(text="served")

    instance = await instances(held, name="held")
    activator = await make_activator(key=KEY, idle_timeout_s=1.0)
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=60)

    reader, writer = await asyncio.open_connection("127.0.0.1", activator.port)
    lines = 0

    async def trickle() -> None:  # the slowloris's pace: a header line now and then, never the blank line
        nonlocal lines
        writer.write(_request()[:-2])  # a keyed request's head, but for its last blank line
        while not writer.is_closing():
            writer.write(b"X-Slow: 1\r\n")
            lines += 1
            await asyncio.sleep(0.2)

    async def other_request() -> tuple[int, str]:
        async with client.get(url(activator, "/"), headers=KEYED) as response:
            return response.status, await response.text()

    trickling = asyncio.create_task(trickle())
    other = asyncio.create_task(other_request())
    try:
        await wait_until(lambda: instance.active == 1, 10, "the other request to reach its instance")
        try:
            answer = await asyncio.wait_for(reader.read(), 30)  # a deadline for the condition, far below an hour
        except ConnectionResetError:  # closed with a line of ours unread
            answer = b""
        assert answer == b"", answer  # closed, not answered
        assert lines > 0  # by the activator (this side closes only below), while the head was still coming in
        assert not other.done() and instance.active == 1  # the other request was in flight meanwhile
        released.set()
        assert await other == (200, "served")
    finally:
        released.set()
        trickling.cancel()
        writer.close()
        await asyncio.gather(trickling, other, return_exceptions=True)
    assert instance.requests == 1  # only the other request reached the instance


async def test_a_replaced_key_is_taken_for_a_while_only(guarded, client, monkeypatch):
    monkeypatch.setattr(activator_server, "KEY_OVERLAP_S", 0.5)
    activator, instance, _ = guarded
    activator.set_key("the-next-key")

    async def status(key: str) -> int:
        async with client.get(url(activator, "/"), headers={**KEYED, ACTIVATOR_KEY_HEADER: key}) as response:
            return response.status

    assert await status("the-next-key") == 200 and await status(KEY) == 200  # both, while gateways switch

    async def old_refused() -> bool:
        return await status(KEY) == 403

    await wait_until(old_refused, 5, "the old key to expire")
    assert await status("the-next-key") == 200
