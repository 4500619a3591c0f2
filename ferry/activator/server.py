"""The activator: an aiohttp server in ferry's loop that holds requests for revisions without capacity.

Envoy sends a revision's traffic here (header `ferry-revision`) while the revision is at zero or short of
spare capacity. Each request waits in its revision's gate until an instance has a free slot, then goes
straight to that instance. Nothing is lost: a request either reaches an instance or gets a clear error.
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

from .gate import NO_AVOID, Address, QueueFull, RevisionGate, RevisionRemoved
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

# Where a request is, so a timeout can say what it timed out on.
_WAITING, _SENDING, _RELAYING = "waiting", "sending", "relaying"

T = TypeVar("T")


@dataclass
class _Progress:
    arrived: float
    stage: str = _WAITING
    address: Address | None = None


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; port 0 picks a free port, and `self.port` then holds the real one."""
        self._loop = asyncio.get_running_loop()
        self._forwarder = Forwarder()
        server = web.Server(self._handle, handler_cancellation=True, access_log=None,
                            max_line_size=MAX_HEADER_BYTES, max_field_size=MAX_HEADER_BYTES,
                            keepalive_timeout=self._idle_timeout_s)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_S)
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            await self._forwarder.aclose()
            self._runner = self._forwarder = None
            raise
        self.port = self._runner.addresses[0][1]
        log.info("activator listening", extra={"address": f"{self.host}:{self.port}"})

    async def aclose(self) -> None:
        """Stop accepting, answer every queued request 503, close websockets (1001), let proxied requests
        finish (up to SHUTDOWN_GRACE_S), then close the client pool."""
        self._closing = True
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                for site in list(runner.sites):
                    await site.stop()
                for gate in self._gates.values():
                    gate.remove("ferry activator: shutting down; retry")
                if self._forwarder is not None:
                    await self._forwarder.close_websockets()
                await runner.cleanup()
        finally:
            if self._forwarder is not None:
                await self._forwarder.aclose()
                self._forwarder = None
            if self._metrics is not None:
                self._metrics.unregister()
                self._metrics = None
        log.info("activator stopped")

    # -- what ferry tells us ---------------------------------------------------------------------------

    def set_revision(self, revision: str, endpoints: Sequence[tuple[str, int]], *, concurrency: int,
                     timeout_s: float) -> None:
        """Make `endpoints` the instances requests for `revision` may go to (idempotent).

        A dropped instance gets no new request from now on; its running ones finish. New instances and
        freed slots go to waiting requests, oldest first."""
        if concurrency < 0:
            raise ValueError(f"concurrency cannot be negative, got {concurrency}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        gate = self._gates.get(revision)
        if gate is None:
            gate = self._gates[revision] = RevisionGate(
                revision, concurrency=concurrency, timeout_s=timeout_s, queue_limit=self._queue_limit,
                on_demand=self._on_demand, rng=self._rng, loop=self._loop or asyncio.get_running_loop())
            log.debug("revision added", extra={"revision": revision, "instances": len(endpoints)})
        gate.update(endpoints, concurrency=concurrency, timeout_s=timeout_s)

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

    def _has_key(self, request: web.BaseRequest) -> bool:
        given = request.headers.get(ACTIVATOR_KEY_HEADER, "").encode()
        if hmac.compare_digest(given, self._key):
            return True
        old = self._old_key
        return old is not None and time.monotonic() < old[1] and hmac.compare_digest(given, old[0])

    def _queued_total(self) -> int:
        return sum(gate.queued for gate in self._gates.values())

    # -- requests --------------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._key is not None and not self._has_key(request):
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
        except (TimeoutError, QueueFull, RevisionRemoved, InstanceFailed) as error:
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
        except (TimeoutError, QueueFull, RevisionRemoved, InstanceFailed) as error:
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
                return instance, await connect(instance.address)
            except InstanceUnreachable as error:
                log.debug("instance unreachable; trying another", extra={
                    "revision": gate.name, "instance": _show(instance.address), "error": str(error)})
                avoid = avoid | {instance.address}
                gate.release(instance)
            except BaseException:
                gate.release(instance)
                raise

    def _failed(self, gate: RevisionGate, progress: _Progress, error: Exception) -> web.StreamResponse:
        if isinstance(error, TimeoutError):
            return self._timed_out(gate, progress.stage, progress.address)
        if isinstance(error, QueueFull):
            return _queue_full(gate, error)
        if isinstance(error, RevisionRemoved):
            return _reply(503, str(error), retry_after=True)
        return _instance_failed(gate, progress.address, error)

    def _timed_out(self, gate: RevisionGate, stage: str, address: Address | None) -> web.StreamResponse:
        log.debug("request timed out", extra={"revision": gate.name, "stage": stage})
        if stage == _WAITING:
            return _reply(504, f"ferry activator: no instance of revision {gate.name} could take the request within "
                               f"its timeout of {gate.timeout_s:g}s")
        if stage == _SENDING:
            return _reply(504, f"ferry activator: instance {_show(address)} of revision {gate.name} did not answer "
                               f"within the revision timeout of {gate.timeout_s:g}s")
        # The response had started; the connection was cut. This answer is never written, only counted.
        return web.Response(status=504)

    def _count(self, revision: str, response: web.StreamResponse) -> web.StreamResponse:
        if self._metrics is not None:
            self._metrics.count(revision, response.status)
        return response


def _reply(status: int, text: str, *, retry_after: bool = False) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"Retry-After": "1"} if retry_after else None)


def _queue_full(gate: RevisionGate, full: QueueFull) -> web.Response:
    log.debug("queue full", extra={"revision": gate.name, "waiting": full.args[0]})
    return _reply(503, f"ferry activator: pending request queue full for revision {gate.name} "
                       f"({full.args[0]} waiting); retry later", retry_after=True)


def _instance_failed(gate: RevisionGate, address: Address | None, error: InstanceFailed) -> web.Response:
    log.debug("instance failed", extra={"revision": gate.name, "instance": _show(address), "error": str(error)})
    return _reply(502, f"ferry activator: instance {_show(address)} of revision {gate.name} failed: {error}")


def _show(address: Address | None) -> str:
    return f"{address[0]}:{address[1]}" if address is not None else "-"
