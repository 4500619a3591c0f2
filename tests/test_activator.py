"""The activator against real aiohttp instances on 127.0.0.1 free ports, plus its pure policies."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import time
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from ferry.activator import RevisionStats
from ferry.activator.balancing import (
    Choice,
    choose,
    first_available,
    power_of_two_choices,
    round_robin,
)
from ferry.activator.poke import REPOKE_INTERVAL_S, poke_due
from ferry.xds.resources import REVISION_HEADER

from .helpers import wait_until

from .activator_fixtures import HEADERS, REV, dead_address, get, url


# -- holding and waking ---------------------------------------------------------------------------------

async def test_request_is_held_until_an_endpoint_appears(instances, make_activator, client):
    instance = await instances(name="a")
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    pending = asyncio.create_task(get(client, activator, "/greet"))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the request to be queued")
    assert not pending.done()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    assert await pending == (200, "hello from a")
    assert activator.stats()[REV] == RevisionStats(in_flight=0, queued=0, requests_total=1)


async def test_a_burst_at_zero_wakes_the_revision_once_and_all_are_answered(instances, make_activator, client):
    instance = await instances(name="a")
    pokes: list[str] = []
    activator = await make_activator(on_demand=pokes.append)
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    burst = [asyncio.create_task(get(client, activator)) for _ in range(200)]
    try:
        await wait_until(lambda: activator.stats()[REV].queued == 200, what="200 queued requests")
        assert pokes == [REV]
        activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
        results = await asyncio.gather(*burst)
    finally:
        for task in burst:
            task.cancel()
    assert results == [(200, "hello from a")] * 200
    assert pokes == [REV]
    assert instance.requests == 200
    # The wake-up is over: the next time the revision is at zero, the first request pokes again.
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    again = asyncio.create_task(get(client, activator))
    await wait_until(lambda: len(pokes) == 2, what="a second poke")
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    assert (await again)[0] == 200


async def test_the_poke_repeats_every_2_s_while_requests_wait_without_instances(make_activator, client):
    loop = asyncio.get_running_loop()
    pokes: list[float] = []
    activator = await make_activator(on_demand=lambda revision: pokes.append(loop.time()))
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    pending = [asyncio.create_task(get(client, activator)) for _ in range(3)]
    try:
        await wait_until(lambda: len(pokes) == 2, timeout=10, what="a second poke")
        assert pokes[1] - pokes[0] >= REPOKE_INTERVAL_S
        activator.remove_revision(REV)
        assert [status for status, _ in await asyncio.gather(*pending)] == [503] * 3
    finally:
        for task in pending:
            task.cancel()


async def test_queue_overflow_gets_503_with_retry_after(make_activator, client):
    activator = await make_activator(queue_limit=2)
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    waiting = [asyncio.create_task(get(client, activator)) for _ in range(2)]
    try:
        await wait_until(lambda: activator.stats()[REV].queued == 2, what="a full queue")
        async with client.get(url(activator), headers=HEADERS) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.text()).strip() == (
                f"ferry activator: pending request queue full for revision {REV} (2 waiting); retry later")
        activator.remove_revision(REV)
        assert [status for status, _ in await asyncio.gather(*waiting)] == [503, 503]
    finally:
        for task in waiting:
            task.cancel()


async def test_never_ready_gets_504_at_the_timeout(make_activator, client):
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=0, timeout_s=0.3)
    started = time.monotonic()
    status, body = await get(client, activator)
    elapsed = time.monotonic() - started
    assert status == 504
    assert body.startswith(f"ferry activator: no instance of revision {REV} could take the request within")
    assert 0.3 <= elapsed < 3
    assert activator.stats()[REV].queued == 0


async def test_the_timeout_bounds_the_proxied_request_too(instances, make_activator, client):
    never = asyncio.Event()

    async def hang(request):
        await never.wait()
        return web.Response()

    instance = await instances(hang)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=0.3)
    status, body = await get(client, activator)
    assert status == 504
    assert "did not answer within the revision timeout of 0.3s" in body
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the slot to be released")


async def test_the_response_start_timeout_bounds_the_head_and_not_the_wait_or_the_body(instances, make_activator,
                                                                                       client):
    """Knative's responseStartTimeout: counted from when an instance has the request (the wait for one is the
    timeout's), until the response's head; a response that started streams on."""
    async def answer(request):
        await asyncio.sleep(float(request.query.get("head_after", "0")))
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(5):
            await asyncio.sleep(0.1)
            await response.write(b"x")
        return response

    instance = await instances(answer)
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=0, timeout_s=10, response_start_s=0.3)
    waiting = asyncio.create_task(get(client, activator, "/?head_after=0.1"))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the request to be held")
    await asyncio.sleep(0.5)  # held longer than the response start timeout: the hold is not counted
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=10, response_start_s=0.3)
    assert await waiting == (200, "xxxxx")  # 0.5 s of body after a head in time
    started = asyncio.get_running_loop().time()
    status, body = await get(client, activator, "/?head_after=2")
    assert status == 504 and "did not start its response within the revision's responseStartTimeout of 0.3s" in body
    assert 0.25 <= asyncio.get_running_loop().time() - started < 1.5
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the slot to be released")


async def test_a_timeout_mid_response_cuts_the_connection(instances, make_activator, client):
    async def stall(request):
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.Event().wait()

    instance = await instances(stall)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=0.3)
    async with client.get(url(activator), headers=HEADERS) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # never a body that looks complete
            await response.read()
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the slot to be released")


async def test_requests_waiting_for_a_slot_poke_when_the_instances_go(instances, make_activator, client):
    release = asyncio.Event()

    async def held(request):
        await release.wait()
        return web.Response(text="done")

    instance = await instances(held)
    pokes: list[str] = []
    activator = await make_activator(on_demand=pokes.append)
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    first = asyncio.create_task(get(client, activator))
    await wait_until(lambda: instance.requests == 1, what="the first request at the instance")
    second = asyncio.create_task(get(client, activator))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the second to wait for a slot")
    assert pokes == []  # an instance exists: waking is the autoscaler's business, by the stats
    activator.set_revision(REV, [], concurrency=1, timeout_s=30)
    assert pokes == [REV]
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    release.set()
    assert await first == (200, "done")
    assert await second == (200, "done")


async def test_client_disconnect_while_queued_frees_its_place(make_activator, client):
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    pending = asyncio.create_task(get(client, activator))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the request to be queued")
    pending.cancel()  # closes the client connection
    await wait_until(lambda: activator.stats()[REV].queued == 0, what="the place to be freed")
    assert activator.stats()[REV].in_flight == 0


async def test_client_disconnect_mid_proxy_releases_the_slot(instances, make_activator, client):
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def slow(request):
        arrived.set()
        await never.wait()
        return web.Response()

    instance = await instances(slow)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    pending = asyncio.create_task(get(client, activator))
    await asyncio.wait_for(arrived.wait(), 10)
    assert activator.in_flight(REV, instance.address) == 1
    pending.cancel()
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the slot to be released")
    assert activator.stats()[REV].in_flight == 0


async def test_remove_revision_answers_queued_requests_503(make_activator, client):
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    waiting = [asyncio.create_task(get(client, activator)) for _ in range(3)]
    await wait_until(lambda: activator.stats()[REV].queued == 3, what="3 queued requests")
    activator.remove_revision(REV)
    for status, body in await asyncio.gather(*waiting):
        assert status == 503
        assert body.strip() == f"ferry activator: revision {REV} was removed while the request waited"
    assert REV not in activator.stats()
    assert await get(client, activator) == (404, f"ferry activator: unknown revision {REV!r}\n")


async def test_aclose_answers_queued_requests_503(make_activator, client):
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    pending = asyncio.create_task(get(client, activator))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the request to be queued")
    await activator.aclose()
    status, body = await pending
    assert status == 503 and body.startswith("ferry activator: shutting down")


async def test_missing_header_is_400_and_unknown_revision_404(make_activator, client):
    activator = await make_activator()
    status, body = await get(client, activator, headers={})
    assert status == 400 and body.startswith("ferry activator:") and body.count("\n") == 1
    status, body = await get(client, activator, headers={REVISION_HEADER: "nope-00001"})
    assert status == 404 and body == "ferry activator: unknown revision 'nope-00001'\n"


# -- breaker and balancing ------------------------------------------------------------------------------

async def test_concurrency_1_never_gives_an_instance_two_requests(instances, make_activator, client):
    async def work(request):
        await asyncio.sleep(0.02)  # the instance's work, so that requests overlap
        return web.Response(text="done")

    instance = await instances(work)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    results = await asyncio.gather(*(get(client, activator) for _ in range(5)))
    assert results == [(200, "done")] * 5
    assert instance.max_active == 1
    assert instance.requests == 5


async def test_power_of_two_choices_spreads_over_instances(instances, make_activator, client):
    fleet = [await instances(name=str(i)) for i in range(3)]
    activator = await make_activator()
    activator.set_revision(REV, [i.address for i in fleet], concurrency=0, timeout_s=30)
    for _ in range(300):
        assert (await get(client, activator))[0] == 200
    assert all(i.requests >= 50 for i in fleet), [i.requests for i in fleet]


async def test_round_robin_spreads_evenly_above_concurrency_3(instances, make_activator, client):
    fleet = [await instances(name=str(i)) for i in range(3)]
    activator = await make_activator()
    activator.set_revision(REV, [i.address for i in fleet], concurrency=10, timeout_s=30)
    answers = [(await get(client, activator))[1] for _ in range(9)]
    assert answers == [f"hello from {i % 3}" for i in range(9)]


async def test_a_removed_endpoint_gets_no_new_requests_and_finishes_its_own(instances, make_activator, client):
    release = asyncio.Event()

    async def held(request):
        await release.wait()
        return web.Response(text="held done")

    old = await instances(held)
    new = await instances(name="new")
    activator = await make_activator()
    activator.set_revision(REV, [old.address, new.address], concurrency=1, timeout_s=30)
    first = asyncio.create_task(get(client, activator))  # first free slot: the old instance
    await wait_until(lambda: old.requests == 1, what="the old instance to get a request")
    assert activator.in_flight(REV, old.address) == 1
    activator.set_revision(REV, [new.address], concurrency=1, timeout_s=30)
    assert activator.in_flight(REV, old.address) == 1  # still counted while it runs
    for _ in range(5):
        assert await get(client, activator) == (200, "hello from new")
    assert old.requests == 1 and new.requests == 5
    release.set()
    assert await first == (200, "held done")
    assert activator.in_flight(REV, old.address) == 0
    assert activator.stats()[REV] == RevisionStats(in_flight=0, queued=0, requests_total=6)


async def test_freed_slots_go_to_waiters_in_fifo_order(instances, make_activator, client):
    order: list[str] = []
    gates = {name: asyncio.Event() for name in "abc"}

    async def record(request):
        name = request.query["n"]
        order.append(name)
        await gates[name].wait()
        return web.Response(text=name)

    instance = await instances(record)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    tasks = {}
    for held, name in enumerate("abc", start=1):
        tasks[name] = asyncio.create_task(get(client, activator, f"/?n={name}"))
        await wait_until(lambda held=held: activator.stats()[REV].in_flight == held, what=f"request {name} held")
    for name in "abc":
        await wait_until(lambda name=name: order[-1:] == [name], what=f"{name} at the instance")
        gates[name].set()
        assert await tasks[name] == (200, name)
    assert order == ["a", "b", "c"]


async def test_a_dead_instance_is_skipped_for_a_live_one(instances, make_activator, client):
    live = await instances(name="live")
    dead = dead_address()
    activator = await make_activator()
    # concurrency 1: first free slot, so the dead instance (listed first) is always tried first.
    activator.set_revision(REV, [dead, live.address], concurrency=1, timeout_s=30)
    for _ in range(3):
        assert await get(client, activator) == (200, "hello from live")
    assert activator.in_flight(REV, dead) == 0
    # With only the dead one, the request waits for another instance rather than failing.
    activator.set_revision(REV, [dead], concurrency=1, timeout_s=30)
    pending = asyncio.create_task(get(client, activator))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the request to wait for a live instance")
    activator.set_revision(REV, [dead, live.address], concurrency=1, timeout_s=30)
    assert await pending == (200, "hello from live")


async def test_instance_dying_after_the_body_started_is_502(instances, make_activator, client):
    async def crash(request):
        await request.content.readany()  # the body has started to arrive...
        request.transport.abort()  # ...and the instance dies
        await asyncio.Event().wait()

    instance = await instances(crash)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)

    async def body():
        yield b"x" * 65536
        await asyncio.sleep(0.05)  # keep the upload going while the instance dies
        yield b"y" * 65536

    async with client.post(url(activator), data=body(), headers=HEADERS) as response:
        assert response.status == 502
        assert (await response.text()).startswith(f"ferry activator: instance {instance.address[0]}:")


# -- what is forwarded ----------------------------------------------------------------------------------

async def test_headers_query_and_answers_pass_through(instances, make_activator, client):
    async def echo(request):
        seen = {"host": request.host, "custom": request.headers.get("X-Custom"),
                "listed": request.headers.get("X-Hop"), "keep-alive": request.headers.get("Keep-Alive"),
                "user-agent": request.headers.get("User-Agent"), "revision": request.headers.get(REVISION_HEADER)}
        response = web.Response(status=503, body=gzip.compress(json.dumps(seen).encode()),
                                headers={"Content-Encoding": "gzip", "X-App": "yes"})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    instance = await instances(echo)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    headers = {**HEADERS, "Host": "app.example", "X-Custom": "c", "Connection": "keep-alive, X-Hop", "X-Hop": "h",
               "Keep-Alive": "timeout=5"}
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["User-Agent"]) as raw:
        target = URL(url(activator, "/p/a%20th?q=1&q=2&s=%2F"), encoded=True)  # sent exactly as written
        async with raw.get(target, headers=headers) as response:
            assert response.status == 503  # the app's 5xx passes untouched
            assert response.headers["X-App"] == "yes"
            assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert response.headers["Content-Encoding"] == "gzip"
            seen = json.loads(gzip.decompress(await response.read()))
    assert seen == {"host": "app.example", "custom": "c", "listed": None,
                    "keep-alive": None, "user-agent": None, "revision": REV}
    assert instance.seen[0].raw_path == "/p/a%20th?q=1&q=2&s=%2F"


async def test_sized_body_head_and_expect_continue(instances, make_activator, client):
    async def echo(request):
        body = await request.read()
        headers = {"X-Length": request.headers.get("Content-Length", "-"), "X-Expect": request.headers.get("Expect", "-")}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": "1234"})
        return web.Response(body=body[::-1], headers=headers)

    instance = await instances(echo)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    async with client.post(url(activator), data=b"0123456789", headers=HEADERS, expect100=True) as response:
        assert response.status == 200
        assert await response.read() == b"9876543210"
        assert response.headers["X-Length"] == "10"  # sized, not re-chunked
        assert response.headers["X-Expect"] == "-"  # answered by the activator, not passed on
    async with client.head(url(activator), headers=HEADERS) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1234"  # a HEAD answer keeps the instance's length


async def test_large_request_body_streams_upstream(instances, make_activator, client):
    first_chunk_seen = asyncio.Event()

    async def digest(request):
        sha, size = hashlib.sha256(), 0
        while chunk := await request.content.readany():
            first_chunk_seen.set()
            sha.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha": sha.hexdigest()})

    instance = await instances(digest)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    chunk = random.Random(1).randbytes(1 << 20)
    expected = hashlib.sha256()

    async def upload():
        for index in range(32):
            if index == 1:
                # The instance must see the first chunk before the client sends the second: nothing buffers it all.
                await asyncio.wait_for(first_chunk_seen.wait(), 10)
            expected.update(chunk)
            yield chunk

    async with client.post(url(activator, "/upload"), data=upload(), headers=HEADERS) as response:
        assert response.status == 200
        assert await response.json() == {"size": 32 << 20, "sha": expected.hexdigest()}
    assert instance.seen[0].headers.get("Transfer-Encoding") == "chunked"


async def test_response_streams_to_the_client_as_it_arrives(instances, make_activator, client):
    client_got_first = asyncio.Event()

    async def stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await asyncio.wait_for(client_got_first.wait(), 10)  # the last chunk only after the client has the first
        await response.write(b"last")
        return response

    instance = await instances(stream)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    async with client.get(url(activator), headers=HEADERS) as response:
        assert response.status == 200
        received = b""
        while b"first;" not in received:
            received += await response.content.readany()
        client_got_first.set()
        received += await response.read()
    assert received == b"first;last"


async def test_websocket_echo_through_the_activator(instances, make_activator, client):
    async def echo(request):
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo " + message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    instance = await instances(echo)
    activator = await make_activator()
    activator.set_revision(REV, [], concurrency=1, timeout_s=30)
    connecting = asyncio.create_task(client.ws_connect(url(activator, "/ws"), headers=HEADERS, protocols=("chat",)))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the websocket to wait for an instance")
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    ws = await connecting
    try:
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=10) == "echo hi"
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes(timeout=10) == b"cba"
        assert activator.in_flight(REV, instance.address) == 1
    finally:
        await ws.close()
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the websocket slot released")


async def test_websocket_closed_by_the_instance_closes_the_client_with_its_code(instances, make_activator, client):
    async def goodbye(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("bye")
        await ws.close(code=4000, message=b"done")
        return ws

    instance = await instances(goodbye)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    async with client.ws_connect(url(activator, "/ws"), headers=HEADERS) as ws:
        assert await ws.receive_str(timeout=10) == "bye"
        message = await ws.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4000
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the websocket slot released")


async def test_aclose_closes_open_websockets_going_away(instances, make_activator, client):
    async def idle(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    instance = await instances(idle)
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    async with client.ws_connect(url(activator, "/ws"), headers=HEADERS) as ws:
        started = time.monotonic()
        closing = asyncio.create_task(activator.aclose())
        message = await ws.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.CLOSE and ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    await closing
    assert time.monotonic() - started < 5  # no waiting out the shutdown grace on an idle session


# -- counts and metrics ---------------------------------------------------------------------------------

async def test_stats_and_metrics_count_requests(instances, make_activator, client):
    instance = await instances(name="a")
    registry = CollectorRegistry()
    activator = await make_activator(registry=registry)
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    activator.set_revision("other-00001", [], concurrency=0, timeout_s=0.2)
    for _ in range(3):
        assert (await get(client, activator))[0] == 200
    assert (await get(client, activator, headers={REVISION_HEADER: "other-00001"}))[0] == 504
    stats = activator.stats()
    assert stats[REV] == RevisionStats(in_flight=0, queued=0, requests_total=3)
    assert stats["other-00001"] == RevisionStats(in_flight=0, queued=0, requests_total=1)
    sample = registry.get_sample_value
    assert sample("ferry_activator_requests_total", {"revision": REV, "code": "200"}) == 3
    assert sample("ferry_activator_requests_total", {"revision": "other-00001", "code": "504"}) == 1
    assert sample("ferry_activator_queue_seconds_count") == 3
    assert sample("ferry_activator_queued") == 0
    pending = asyncio.create_task(get(client, activator, headers={REVISION_HEADER: "other-00001"}))
    await wait_until(lambda: sample("ferry_activator_queued") == 1, what="the gauge to show the queued request")
    assert activator.stats()["other-00001"] == RevisionStats(in_flight=1, queued=1, requests_total=2)
    assert (await pending)[0] == 504


async def test_set_revision_validates_and_unknown_lookups_are_zero(make_activator):
    activator = await make_activator()
    with pytest.raises(ValueError):
        activator.set_revision(REV, [], concurrency=-1, timeout_s=1)
    with pytest.raises(ValueError):
        activator.set_revision(REV, [], concurrency=0, timeout_s=0)
    assert activator.in_flight("nope", ("127.0.0.1", 1)) == 0
    activator.remove_revision("nope")  # no error
    assert activator.stats() == {}


# -- pure policies --------------------------------------------------------------------------------------

def test_poke_rule():
    assert poke_due(None, 10.0, has_endpoints=False, waiting=1)
    assert not poke_due(10.0, 10.5, has_endpoints=False, waiting=200), "one poke per wake-up"
    assert not poke_due(10.0, 10.0 + REPOKE_INTERVAL_S - 0.01, has_endpoints=False, waiting=1)
    assert poke_due(10.0, 10.0 + REPOKE_INTERVAL_S, has_endpoints=False, waiting=1), "re-poke while waiting"
    assert not poke_due(10.0, 20.0, has_endpoints=False, waiting=0), "nobody waiting"
    assert not poke_due(None, 10.0, has_endpoints=True, waiting=5), "instances exist: no poke"


@dataclass
class Load:
    in_flight: int


def test_power_of_two_picks_the_less_loaded_of_two():
    rng = random.Random(7)
    assert power_of_two_choices([], rng) is None
    assert power_of_two_choices([Load(9)], rng) == 0
    assert all(power_of_two_choices([Load(5), Load(1)], rng) == 1 for _ in range(50))
    # Of three, the most loaded is never picked: any pair holding it has a less loaded other.
    picks = {power_of_two_choices([Load(0), Load(7), Load(0)], rng) for _ in range(200)}
    assert picks == {0, 2}
    # The two draws are always distinct instances.
    assert all(power_of_two_choices([Load(1), Load(1)], rng) in (0, 1) for _ in range(50))


def test_first_available_packs_onto_the_first_free_instance():
    assert first_available([Load(1), Load(0), Load(0)], 1) == 1
    assert first_available([Load(2), Load(3), Load(1)], 3) == 0
    assert first_available([Load(1), Load(1)], 1) is None
    assert first_available([], 1) is None


def test_round_robin_skips_full_instances_and_wraps():
    fleet = [Load(0), Load(4), Load(0)]
    assert round_robin(fleet, 4, 0) == Choice(0, 1)
    assert round_robin(fleet, 4, 1) == Choice(2, 3), "index 1 is full"
    assert round_robin(fleet, 4, 3) == Choice(0, 1), "a cursor past the end starts again"
    assert round_robin([Load(4), Load(4)], 4, 1) == Choice(None, 1)
    assert round_robin([], 4, 0) == Choice(None, 0)


def test_choose_uses_knatives_policy_for_each_concurrency():
    rng = random.Random(3)
    fleet = [Load(1), Load(0), Load(0)]
    assert choose(fleet, 0, 5, rng).cursor == 5  # power of two leaves the cursor alone
    assert choose(fleet, 0, 0, rng).index in (1, 2)
    assert choose(fleet, 1, 0, rng) == Choice(1, 0)  # first available
    assert choose(fleet, 3, 0, rng) == Choice(0, 0)
    assert choose(fleet, 4, 1, rng) == Choice(1, 2)  # round robin
