"""The activator: a server that holds requests for revisions without capacity.

Envoy sends a revision's traffic here (header `ferry-revision`) while the revision is at zero or short of
spare capacity. Each request waits in its revision's gate until an instance has a free slot, then goes
straight to that instance. Nothing is lost: a request either reaches an instance or gets a clear error.

One port serves both protocols a revision may have: HTTP/1.1 (aiohttp; websockets too) and h2c, HTTP/2 with
prior knowledge, which is what Envoy speaks to the activator for `protocol: h2c` revisions (gRPC). A connection's
first bytes tell them apart (h2c.Sniffer). An HTTP/2 stream is a request like any other: it waits in the same
gate, takes one slot of an instance's `concurrency`, and is counted in the same stats.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from ferry.xds.resources import ACTIVATOR_KEY_HEADER, REVISION_HEADER

from . import h2c
from .gate import NO_AVOID, Address, QueueFull, RevisionGate, RevisionRemoved
from .h2link import Stream
from .metrics import ActivatorMetrics
from .proxy import (
    MAX_HEADER_BYTES,
    Forwarder,
    InstanceFailed,
    InstanceUnreachable,
    is_websocket,
)

log = logging.getLogger("ferry.activator")

IDLE_TIMEOUT_S = 15.0
"""A connection that sends no whole request for this long is closed: idle keep-alives (Envoy closes its own after
4 s, before this) and slowloris clients that trickle a request's head (aiohttp's own default is an hour)."""

KEY_OVERLAP_S = 60.0
"""After the key changes (ferry restarted with a new one), the old one is still taken this long: gateways switch with
ferry's next route push."""

SHUTDOWN_GRACE_S = 10.0
"""On close, requests already at an instance get this long to finish before they are cut."""

CLIENT_CLOSED = 499
"""Counted (never sent) when the client went away before its answer, as nginx and Envoy log it."""

_REVISION_HEADER = REVISION_HEADER.encode()

# Where a request is, so a timeout can say what it timed out on.
_WAITING, _SENDING, _RELAYING = "waiting", "sending", "relaying"

T = TypeVar("T")


@dataclass
class _Progress:
    arrived: float
    stage: str = _WAITING
    address: Address | None = None


class LateResponse(Exception):
    """An instance had the request for the revision's responseStartTimeout and had not started its response."""


@dataclass(frozen=True)
class RevisionStats:
    in_flight: int
    """Requests held here: queued plus being proxied."""
    queued: int
    requests_total: int
    """Requests received for the revision since it was first set (monotonic)."""


class Activator:
    """Holds requests for revisions at zero, asks ferry to wake them (`on_demand`), proxies to ready instances."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8012, queue_limit: int = 10_000,
                 on_demand: Callable[[str], None] = lambda revision: None,
                 registry: CollectorRegistry | None = None, key: str | None = None,
                 idle_timeout_s: float = IDLE_TIMEOUT_S):
        if queue_limit < 0:
            raise ValueError(f"queue_limit cannot be negative, got {queue_limit}")
        self.host = host
        self.port = port
        self._queue_limit = queue_limit
        self._key = key.encode() if key else None  # every request must carry it (gateways add it)
        self._old_key: tuple[bytes, float] | None = None  # a replaced key, and until when it is still taken
        self._idle_timeout_s = idle_timeout_s
        self._on_demand = on_demand
        self._gates: dict[str, RevisionGate] = {}
        self._rng = random.Random()
        self._metrics = ActivatorMetrics(registry, self._queued_total) if registry is not None else None
        self._forwarder: Forwarder | None = None
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.Server | None = None
        self._pool: h2c.Pool | None = None  # h2c connections to instances
        self._h2c_links: set[h2c.GatewayLink] = set()
        self._h2c_tasks: set[asyncio.Task] = set()  # one per h2c request
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; port 0 picks a free port, and `self.port` then holds the real one."""
        self._loop = loop = asyncio.get_running_loop()
        self._forwarder = Forwarder()
        self._pool = h2c.Pool()
        server = web.Server(self._handle, handler_cancellation=True, access_log=None,
                            max_line_size=MAX_HEADER_BYTES, max_field_size=MAX_HEADER_BYTES,
                            keepalive_timeout=self._idle_timeout_s)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_S)

        def h2c_link() -> h2c.GatewayLink:
            return h2c.GatewayLink(self._h2c_stream, self._h2c_links, self._idle_timeout_s)

        try:
            await self._runner.setup()
            # The runner has no site: this listener hands each connection to aiohttp or to h2c.
            self._listener = await loop.create_server(
                lambda: h2c.Sniffer(server, h2c_link, self._idle_timeout_s), self.host, self.port)
        except BaseException:
            await self._runner.cleanup()
            await self._forwarder.aclose()
            self._runner = self._forwarder = self._pool = None
            raise
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("activator listening", extra={"address": f"{self.host}:{self.port}"})

    async def aclose(self) -> None:
        """Stop accepting, answer every queued request 503, close websockets (1001), tell h2c gateways to open no
        new stream (GOAWAY), let proxied requests finish (up to SHUTDOWN_GRACE_S), then close the client pools."""
        self._closing = True
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                self._listener.close()
                for gate in self._gates.values():
                    gate.remove("ferry activator: shutting down; retry")
                for link in list(self._h2c_links):
                    link.drain()
                if self._forwarder is not None:
                    await self._forwarder.close_websockets()
                await asyncio.gather(runner.cleanup(), self._h2c_finish(SHUTDOWN_GRACE_S))
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            for link in list(self._h2c_links):
                link.transport.abort()
            if self._forwarder is not None:
                await self._forwarder.aclose()
                self._forwarder = None
            if self._metrics is not None:
                self._metrics.unregister()
                self._metrics = None
        log.info("activator stopped")

    # -- what ferry tells us ---------------------------------------------------------------------------

    def set_revision(self, revision: str, endpoints: Sequence[tuple[str, int]], *, concurrency: int,
                     timeout_s: float, response_start_s: float | None = None) -> None:
        """Make `endpoints` the instances requests for `revision` may go to (idempotent). `response_start_s`: an
        instance must start its response within it once it has the request (None: the timeout alone).

        A dropped instance gets no new request from now on; its running ones finish. New instances and
        freed slots go to waiting requests, oldest first."""
        if concurrency < 0:
            raise ValueError(f"concurrency cannot be negative, got {concurrency}")
        if timeout_s <= 0 or (response_start_s is not None and response_start_s <= 0):
            raise ValueError(f"timeouts must be positive, got {timeout_s} and {response_start_s}")
        gate = self._gates.get(revision)
        if gate is None:
            gate = self._gates[revision] = RevisionGate(
                revision, concurrency=concurrency, timeout_s=timeout_s, queue_limit=self._queue_limit,
                on_demand=self._on_demand, rng=self._rng, loop=self._loop or asyncio.get_running_loop())
            log.debug("revision added", extra={"revision": revision, "instances": len(endpoints)})
        gate.update(endpoints, concurrency=concurrency, timeout_s=timeout_s, response_start_s=response_start_s)

    def poke_again(self, revision: str) -> None:
        """Wake the revision again if requests wait for it (see RevisionGate.poke_again)."""
        gate = self._gates.get(revision)
        if gate is not None:
            gate.poke_again()

    def remove_revision(self, revision: str) -> None:
        """The revision is gone from ferry: its queued requests get 503; requests at instances finish."""
        gate = self._gates.pop(revision, None)
        if gate is None:
            return
        gate.remove(f"ferry activator: revision {revision} was removed while the request waited")
        if self._metrics is not None:
            self._metrics.forget(revision)
        log.debug("revision removed", extra={"revision": revision})

    # -- what ferry reads ------------------------------------------------------------------------------

    def stats(self) -> dict[str, RevisionStats]:
        return {name: RevisionStats(in_flight=gate.queued + gate.proxied, queued=gate.queued,
                                    requests_total=gate.requests_total)
                for name, gate in self._gates.items()}

    def in_flight(self, revision: str, endpoint: tuple[str, int]) -> int:
        """Requests being proxied to that instance right now (0 for an unknown revision or instance)."""
        gate = self._gates.get(revision)
        return gate.in_flight((str(endpoint[0]), int(endpoint[1]))) if gate is not None else 0

    def set_key(self, key: str) -> None:
        """The key requests must carry from now on; the one it replaces is taken for KEY_OVERLAP_S more."""
        new = key.encode()
        if self._key is not None and not hmac.compare_digest(new, self._key):
            self._old_key = (self._key, time.monotonic() + KEY_OVERLAP_S)
            log.info("activator key replaced", extra={"old_key_taken_for_s": KEY_OVERLAP_S})
        self._key = new

    def _has_key(self, given: bytes) -> bool:
        if hmac.compare_digest(given, self._key):
            return True
        old = self._old_key
        return old is not None and time.monotonic() < old[1] and hmac.compare_digest(given, old[0])

    def _queued_total(self) -> int:
        return sum(gate.queued for gate in self._gates.values())

    # -- requests --------------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._key is not None and not self._has_key(request.headers.get(ACTIVATOR_KEY_HEADER, "").encode()):
            return self._count("", _reply(403, "ferry activator: requests reach revisions through ferry's gateways"))
        revision = request.headers.get(REVISION_HEADER)
        if not revision:
            return self._count("", _reply(400, f"ferry activator: request has no {REVISION_HEADER} header; "
                                               "only Envoy routes for revisions should reach the activator"))
        gate = self._gates.get(revision)
        if gate is None:
            return self._count("", _reply(404, f"ferry activator: unknown revision {revision!r}"))
        gate.requests_total += 1
        if self._closing:
            return self._count(revision, _reply(503, "ferry activator: shutting down; retry", retry_after=True))
        try:
            if is_websocket(request):
                response = await self._websocket(request, gate)
            else:
                response = await self._http(request, gate)
        except asyncio.CancelledError:
            if self._metrics is not None:
                self._metrics.count(revision, CLIENT_CLOSED)
            raise
        return self._count(revision, response)

    async def _http(self, request: web.BaseRequest, gate: RevisionGate) -> web.StreamResponse:
        """The revision timeout covers the wait, the send and the whole answer."""
        progress = _Progress(self._loop.time())
        try:
            async with asyncio.timeout_at(progress.arrived + gate.timeout_s):
                instance, upstream = await self._reach(gate, progress, lambda a: self._forwarder.send(request, a))
                try:
                    progress.stage = _RELAYING
                    return await self._forwarder.relay(request, upstream)
                finally:
                    gate.release(instance)
        except (TimeoutError, QueueFull, RevisionRemoved, InstanceFailed, LateResponse) as error:
            return self._failed(gate, progress, error)

    async def _websocket(self, request: web.BaseRequest, gate: RevisionGate) -> web.StreamResponse:
        """Like `_http`, but the timeout covers only the wait and the handshake: an open websocket is a
        session, not a request, and stays open (and counted on its instance) as long as both ends want."""
        progress = _Progress(self._loop.time())
        try:
            async with asyncio.timeout_at(progress.arrived + gate.timeout_s):
                instance, upstream = await self._reach(
                    gate, progress, lambda a: self._forwarder.connect_websocket(request, a)
                )
        except (TimeoutError, QueueFull, RevisionRemoved, InstanceFailed, LateResponse) as error:
            return self._failed(gate, progress, error)
        try:
            return await self._forwarder.relay_websocket(request, upstream)
        finally:
            gate.release(instance)

    async def _reach(self, gate: RevisionGate, progress: _Progress, connect: Callable[[Address], Awaitable[T]]):
        """Wait for an instance with a free slot and connect to it; one found unreachable is skipped for the
        rest of this request. Returns (instance, connection) with the slot held: the caller releases it."""
        avoid = NO_AVOID
        while True:
            progress.stage = _WAITING
            instance = await gate.acquire(avoid)
            progress.address = instance.address
            if self._metrics is not None and not avoid:
                self._metrics.queue_seconds.observe(self._loop.time() - progress.arrived)
            try:
                progress.stage = _SENDING
                if gate.response_start_s is None:
                    return instance, await connect(instance.address)
                try:
                    async with asyncio.timeout(gate.response_start_s):
                        return instance, await connect(instance.address)
                except TimeoutError:
                    if progress.arrived + gate.timeout_s <= self._loop.time():
                        raise  # the revision's own timeout, which is due as well
                    raise LateResponse() from None
            except InstanceUnreachable as error:
                log.debug("instance unreachable; trying another", extra={
                    "revision": gate.name, "instance": _show(instance.address), "error": str(error)})
                avoid = avoid | {instance.address}
                gate.release(instance)
            except BaseException:
                gate.release(instance)
                raise

    def _failed(self, gate: RevisionGate, progress: _Progress, error: Exception) -> web.StreamResponse:
        failure = _failure(gate, progress, error)
        if failure is None:  # the response had started; the connection was cut: never written, only counted
            return web.Response(status=504)
        return _reply(*failure)

    def _count(self, revision: str, response: web.StreamResponse) -> web.StreamResponse:
        if self._metrics is not None:
            self._metrics.count(revision, response.status)
        return response

    # -- h2c requests (one HTTP/2 stream each) ---------------------------------------------------------

    def _h2c_stream(self, stream: Stream) -> None:
        """A gateway opened a stream: handle it in its own task (cancelled if the gateway resets the stream)."""
        task = stream.task = self._loop.create_task(self._h2c(stream))
        self._h2c_tasks.add(task)
        task.add_done_callback(self._h2c_tasks.discard)

    async def _h2c(self, stream: Stream) -> None:
        """As `_handle` and `_http`: the same checks, gate, timeout and counts. The exchange itself is relayed frame
        by frame by the two paired streams; this waits until the answer is complete."""
        headers = stream.headers or []
        revision = ""
        status = 500
        try:
            if self._key is not None and not self._has_key(h2c.header(headers, h2c.KEY_HEADER) or b""):
                status = _h2c_reply(stream, 403, "ferry activator: requests reach revisions through ferry's gateways")
                return
            name = (h2c.header(headers, _REVISION_HEADER) or b"").decode("latin-1")
            gate = self._gates.get(name)
            if gate is None:
                status = _h2c_reply(stream, 404, f"ferry activator: unknown revision {name!r}") if name else \
                    _h2c_reply(stream, 400, f"ferry activator: request has no {REVISION_HEADER} header; only Envoy "
                                            "routes for revisions should reach the activator")
                return
            revision = name
            gate.requests_total += 1
            if self._closing:
                status = _h2c_reply(stream, 503, "ferry activator: shutting down; retry", True)
                return
            status = await self._h2c_relay(stream, gate)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            h2c.finish(stream, stream.peer)
            if self._metrics is not None:
                self._metrics.count(revision, status)

    async def _h2c_relay(self, stream: Stream, gate: RevisionGate) -> int:
        progress = _Progress(self._loop.time())
        upstream: Stream | None = None
        try:
            async with asyncio.timeout_at(progress.arrived + gate.timeout_s):
                instance, upstream = await self._reach(gate, progress, lambda a: self._pool.open(a, stream))
                try:
                    progress.stage = _RELAYING
                    await stream.waiter
                finally:
                    gate.release(instance)
        except (TimeoutError, QueueFull, RevisionRemoved, InstanceFailed, LateResponse) as error:
            failure = _failure(gate, progress, error)
            if failure is None:  # the answer had started: the stream is reset (`finish`), never cut short as whole
                return 504
            return _h2c_reply(stream, *failure)
        if stream.reset_code is not None and not stream.sent_end:
            return 502  # the instance reset it mid-answer
        return h2c.head_status(upstream)

    async def _h2c_finish(self, grace_s: float) -> None:
        """Until the h2c requests already at instances are answered, up to `grace_s`; then they are cut."""
        if self._h2c_tasks:
            _, late = await asyncio.wait(set(self._h2c_tasks), timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)


def _h2c_reply(stream: Stream, status: int, text: str, retry_after: bool = False) -> int:
    h2c.reply(stream, status, text, retry_after=retry_after)
    return status


def _reply(status: int, text: str, retry_after: bool = False) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"Retry-After": "1"} if retry_after else None)


def _failure(gate: RevisionGate, progress: _Progress, error: Exception) -> tuple[int, str, bool] | None:
    """What a failed request is answered, either protocol: (status, text, retry_after); None once the response had
    started (there is nothing left to answer: the connection or stream is cut)."""
    address = progress.address
    if isinstance(error, LateResponse):
        log.debug("response did not start in time", extra={"revision": gate.name, "instance": _show(address)})
        return 504, (f"ferry activator: instance {_show(address)} of revision {gate.name} did not start its response "
                     f"within the revision's responseStartTimeout of {gate.response_start_s:g}s"), False
    if isinstance(error, TimeoutError):
        log.debug("request timed out", extra={"revision": gate.name, "stage": progress.stage})
        if progress.stage == _WAITING:
            return 504, (f"ferry activator: no instance of revision {gate.name} could take the request within its "
                         f"timeout of {gate.timeout_s:g}s"), False
        if progress.stage == _SENDING:
            return 504, (f"ferry activator: instance {_show(address)} of revision {gate.name} did not answer within "
                         f"the revision timeout of {gate.timeout_s:g}s"), False
        return None
    if isinstance(error, QueueFull):
        log.debug("queue full", extra={"revision": gate.name, "waiting": error.args[0]})
        return 503, (f"ferry activator: pending request queue full for revision {gate.name} "
                     f"({error.args[0]} waiting); retry later"), True
    if isinstance(error, RevisionRemoved):
        return 503, str(error), True
    log.debug("instance failed", extra={"revision": gate.name, "instance": _show(address), "error": str(error)})
    return 502, f"ferry activator: instance {_show(address)} of revision {gate.name} failed: {error}", False


def _show(address: Address | None) -> str:
    return f"{address[0]}:{address[1]}" if address is not None else "-"
