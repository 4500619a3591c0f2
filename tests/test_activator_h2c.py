"""The activator's h2c path against real grpcio servers on 127.0.0.1 free ports: gRPC calls held while a revision
has no instance, bounded, timed out, limited per instance, streamed both ways, refused without the key; and plain
HTTP/2 requests (not gRPC) on the same port."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import grpc
import pytest

from ferry.activator import RevisionStats
from ferry.xds.resources import ACTIVATOR_KEY_HEADER, REVISION_HEADER

from .activator_fixtures import REV, dead_address
from .helpers import h2_exchange, wait_until

pytestmark = pytest.mark.timeout(60)

KEY = "install-key-0123456789abcdef"
MD = ((REVISION_HEADER, REV),)
KEYED = ((REVISION_HEADER, REV), (ACTIVATOR_KEY_HEADER, KEY))


@dataclass
class GrpcInstance:
    """A grpcio server (service test.T) that records what it saw: calls, concurrency, metadata."""

    address: tuple[str, int]
    server: grpc.aio.Server
    calls: int = 0
    active: int = 0
    max_active: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # Stream waits on it after its first message


@pytest.fixture
async def grpc_instances():
    started: list[GrpcInstance] = []

    async def start(name: str = "a", *, delay_s: float = 0.0) -> GrpcInstance:
        instance = GrpcInstance(("127.0.0.1", 0), grpc.aio.server())

        def seen(context: grpc.aio.ServicerContext) -> None:
            instance.calls += 1
            instance.metadata.append({k: v for k, v in context.invocation_metadata()})

        async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen(context)
            instance.active += 1
            instance.max_active = max(instance.max_active, instance.active)
            try:
                if delay_s:
                    await asyncio.sleep(delay_s)
                if request == b"fail":
                    context.set_trailing_metadata((("why", "asked"),))
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
                if request == b"hang":
                    await asyncio.Event().wait()
                return name.encode() + b": " + request
            finally:
                instance.active -= 1

        async def stream(request: bytes, context: grpc.aio.ServicerContext):
            seen(context)
            yield b"first"
            await instance.release.wait()
            for i in range(int(request or b"3")):
                yield str(i).encode()

        async def echo(requests, context: grpc.aio.ServicerContext):
            seen(context)
            async for message in requests:
                yield message[::-1]

        instance.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.T", {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
        })])
        port = instance.server.add_insecure_port("127.0.0.1:0")
        await instance.server.start()
        instance.address = ("127.0.0.1", port)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.server.stop(0)


@pytest.fixture
async def channel(make_activator):
    """A gRPC channel to a fresh activator (the client plays the gateway): yields (activator, channel)."""
    channels: list[grpc.aio.Channel] = []

    async def make(**kwargs):
        activator = await make_activator(**kwargs)
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{activator.port}")
        channels.append(ch)
        return activator, ch

    yield make
    for ch in channels:
        await ch.close()


def say(ch: grpc.aio.Channel):
    return ch.unary_unary("/test.T/Say")


async def _rest(call) -> list[bytes]:
    """The messages of a stream still to come (read with read(): grpcio forbids mixing it with iteration)."""
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


# -- holding and waking ---------------------------------------------------------------------------------

async def test_a_call_is_held_until_the_revision_has_an_instance(grpc_instances, channel):
    instance = await grpc_instances("a")
    woken: list[str] = []
    activator, ch = await channel(on_demand=woken.append)
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    pending = asyncio.ensure_future(say(ch)(b"hi", metadata=MD, timeout=30))
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the call to be queued")
    assert woken == [REV] and not pending.done()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    assert await pending == b"a: hi"
    assert activator.stats()[REV] == RevisionStats(in_flight=0, queued=0, requests_total=1)
    assert instance.metadata[0][REVISION_HEADER] == REV


async def test_a_burst_at_zero_is_all_answered(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    burst = [asyncio.ensure_future(say(ch)(str(i).encode(), metadata=MD, timeout=30)) for i in range(200)]
    await wait_until(lambda: activator.stats()[REV].queued == 200, what="200 queued calls")
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    assert await asyncio.gather(*burst) == [f"a: {i}".encode() for i in range(200)]
    assert instance.calls == 200 and activator.stats()[REV].in_flight == 0


async def test_a_full_queue_answers_unavailable_at_once(channel):
    activator, ch = await channel(queue_limit=2)
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    waiting = [asyncio.ensure_future(say(ch)(b"x", metadata=MD, timeout=30)) for _ in range(2)]
    await wait_until(lambda: activator.stats()[REV].queued == 2, what="a full queue")
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await say(ch)(b"x", metadata=MD, timeout=5)
    assert full.value.code() == grpc.StatusCode.UNAVAILABLE
    assert full.value.details() == (f"ferry activator: pending request queue full for revision {REV} (2 waiting); "
                                    "retry later")
    activator.remove_revision(REV)  # the waiting ones are answered too
    for call in waiting:
        with pytest.raises(grpc.aio.AioRpcError) as removed:
            await call
        assert removed.value.code() == grpc.StatusCode.UNAVAILABLE and "was removed" in removed.value.details()


async def test_a_call_held_past_the_revision_timeout_gets_deadline_exceeded(channel):
    activator, ch = await channel()
    activator.set_revision(REV, [], concurrency=0, timeout_s=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await say(ch)(b"x", metadata=MD, timeout=10)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert late.value.details().startswith(f"ferry activator: no instance of revision {REV} could take the request")
    assert activator.stats()[REV].queued == 0


async def test_the_timeout_bounds_a_call_at_an_instance_and_frees_its_slot(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await say(ch)(b"hang", metadata=MD, timeout=10)
    # The instance had not answered: the activator answers, as for HTTP/1.1's 504.
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "did not answer" in late.value.details()
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the slot to be released")
    await wait_until(lambda: instance.active == 0, what="the instance's call to be cancelled")


async def test_the_response_start_timeout_bounds_a_call_whose_answer_does_not_start(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30, response_start_s=0.3)
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await say(ch)(b"hang", metadata=MD, timeout=10)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not start its response within the revision's responseStartTimeout of 0.3s" in late.value.details()
    assert asyncio.get_running_loop().time() - started < 5
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the slot to be released")
    assert (await say(ch)(b"x", metadata=MD, timeout=10)).startswith(b"a")  # an answer in time goes through


async def test_a_client_that_gives_up_frees_its_place_in_the_queue(channel):
    activator, ch = await channel()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await say(ch)(b"x", metadata=MD, timeout=0.3)  # the client's deadline: it resets the stream
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: activator.stats()[REV].queued == 0, what="the place to be freed")
    assert activator.stats()[REV].in_flight == 0


# -- concurrency and in-flight counts ----------------------------------------------------------------------

async def test_concurrency_1_means_one_stream_at_a_time_per_instance(grpc_instances, channel):
    instances = [await grpc_instances(name, delay_s=0.02) for name in ("a", "b")]
    activator, ch = await channel()
    activator.set_revision(REV, [i.address for i in instances], concurrency=1, timeout_s=30)
    answers = await asyncio.gather(*(say(ch)(b"x", metadata=MD, timeout=30) for _ in range(30)))
    assert len(answers) == 30 and {a.split(b":")[0] for a in answers} <= {b"a", b"b"}
    assert [i.max_active for i in instances] == [1, 1]
    assert sum(i.calls for i in instances) == 30


async def test_a_call_at_an_instance_counts_for_its_drain(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    call = ch.unary_stream("/test.T/Stream")(b"2", metadata=MD, timeout=30)
    assert await call.read() == b"first"
    assert activator.in_flight(REV, instance.address) == 1 and activator.stats()[REV].in_flight == 1
    instance.release.set()
    assert await _rest(call) == [b"0", b"1"]
    await wait_until(lambda: activator.in_flight(REV, instance.address) == 0, what="the stream to be counted out")


async def test_an_unreachable_instance_is_skipped(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [dead_address(), instance.address], concurrency=1, timeout_s=30)
    assert await say(ch)(b"x", metadata=MD, timeout=10) == b"a: x"


# -- what passes through --------------------------------------------------------------------------------

async def test_a_grpc_error_and_its_trailers_pass_through(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    call = say(ch)(b"fail", metadata=MD, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == "asked to fail"
    assert ("why", "asked") in tuple(failed.value.trailing_metadata())


async def test_a_server_stream_streams(grpc_instances, channel):
    """The first message reaches the client while the instance still holds the rest: nothing is buffered whole."""
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [], concurrency=0, timeout_s=30)
    call = ch.unary_stream("/test.T/Stream")(b"3", metadata=MD, timeout=30)
    await wait_until(lambda: activator.stats()[REV].queued == 1, what="the stream to be held")
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    assert await call.read() == b"first"
    instance.release.set()
    assert await _rest(call) == [b"0", b"1", b"2"]
    assert await call.code() == grpc.StatusCode.OK


async def test_a_bidirectional_stream_with_large_messages_flows_both_ways(grpc_instances, channel):
    """Messages of 1 MiB cross the activator's flow-control windows (64 KiB a stream) in both directions."""
    instance = await grpc_instances("a")
    activator, ch = await channel()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=30)
    call = ch.stream_stream("/test.T/Echo")(metadata=MD, timeout=30)
    for size in (1, 1 << 20, 100_000):
        message = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        await call.write(message)
        assert await call.read() == message[::-1]
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    await wait_until(lambda: activator.stats()[REV].in_flight == 0, what="the stream to end")


# -- who may call ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metadata", [MD, ((REVISION_HEADER, REV), (ACTIVATOR_KEY_HEADER, KEY[:-1]))],
                         ids=["no key", "wrong key"])
async def test_without_the_key_nothing_is_held_woken_or_forwarded(grpc_instances, channel, metadata):
    instance = await grpc_instances("a")
    woken: list[str] = []
    activator, ch = await channel(key=KEY, on_demand=woken.append)
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await say(ch)(b"x", metadata=metadata, timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert instance.calls == 0 and woken == [] and activator.stats()[REV].requests_total == 0


async def test_the_key_opens_and_never_reaches_the_instance(grpc_instances, channel):
    instance = await grpc_instances("a")
    activator, ch = await channel(key=KEY)
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=5)
    assert await say(ch)(b"x", metadata=KEYED, timeout=5) == b"a: x"
    (seen,) = instance.metadata
    assert ACTIVATOR_KEY_HEADER not in seen and seen[REVISION_HEADER] == REV


# -- plain HTTP/2, and the shutdown ------------------------------------------------------------------------

def _h2_request(port: int, headers: list[tuple[str, str]]) -> tuple[dict[bytes, bytes], bytes]:
    """One plain HTTP/2 request with prior knowledge (not gRPC), blocking: (response headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return h2_exchange(sock, [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/"),
                                  *headers])


async def test_plain_http2_gets_the_activators_answers_as_http(make_activator):
    activator = await make_activator(key=KEY)
    activator.set_revision(REV, [], concurrency=0, timeout_s=5)
    head, body = await asyncio.to_thread(_h2_request, activator.port, [(REVISION_HEADER, REV)])
    assert head[b":status"] == b"403" and body.startswith(b"ferry activator: requests reach revisions through")
    head, body = await asyncio.to_thread(_h2_request, activator.port,
                                         [(REVISION_HEADER, "other-00001"), (ACTIVATOR_KEY_HEADER, KEY)])
    assert head[b":status"] == b"404" and body == b"ferry activator: unknown revision 'other-00001'\n"


async def test_on_shutdown_held_calls_are_refused_and_running_ones_finish(grpc_instances, make_activator):
    instance = await grpc_instances("a")
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=1, timeout_s=30)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{activator.port}") as ch:
        running = ch.unary_stream("/test.T/Stream")(b"2", metadata=MD, timeout=30)
        assert await running.read() == b"first"
        held = asyncio.ensure_future(say(ch)(b"x", metadata=MD, timeout=30))  # concurrency 1: waits
        await wait_until(lambda: activator.stats()[REV].queued == 1, what="the second call to wait")
        closing = asyncio.create_task(activator.aclose())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await held
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.value.details()
        instance.release.set()
        assert await _rest(running) == [b"0", b"1"]  # the running stream was let finish
        await closing


@pytest.mark.parametrize("opening", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                     b"PRI * HTTP/2"], ids=["preface then nothing", "half a preface"])
async def test_a_connection_that_sends_no_request_is_closed_after_the_idle_timeout(make_activator, opening):
    activator = await make_activator(idle_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", activator.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        writer.write(opening)
        while await asyncio.wait_for(reader.read(65536), 10):  # the activator's SETTINGS (and GOAWAY), then EOF
            pass
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    assert 0.4 <= loop.time() - started < 5


async def test_http1_on_the_same_port_may_start_like_the_http2_preface(instances, make_activator):
    """A request line that begins as the preface does ("P...") and arrives a byte at a time is still HTTP/1.1."""
    instance = await instances(name="a")
    activator = await make_activator()
    activator.set_revision(REV, [instance.address], concurrency=0, timeout_s=5)
    request = f"PUT /x HTTP/1.1\r\nHost: x\r\n{REVISION_HEADER}: {REV}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    reader, writer = await asyncio.open_connection("127.0.0.1", activator.port)
    try:
        for byte in request.encode():
            writer.write(bytes([byte]))
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello from a")
    assert instance.seen[0].method == "PUT"
