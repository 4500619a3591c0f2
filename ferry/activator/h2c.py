"""The activator's h2c side: HTTP/2 without TLS from the gateways (revisions with `protocol: h2c`, gRPC) and to the
instances, on the activator's one port.

* `Sniffer`: the first bytes of a connection tell HTTP/2's prior-knowledge preface from HTTP/1.1, and the connection
  goes to `GatewayLink` or to aiohttp. Envoy speaks h2c to whatever the EDS of an h2c revision names, so one address
  serves both kinds of revision and nothing about the activator's address changes.
* `GatewayLink`: a gateway's connection; each request stream is handed to the activator (`on_stream`), which holds
  it in the revision's gate like any request, then has `Pool.open` pair it with a stream to an instance.
* `Pool`: a few h2c connections per instance, opened on demand and closed when idle; a connection takes no more
  streams than the instance's SETTINGS_MAX_CONCURRENT_STREAMS, and a busy one makes the pool open another.
* `reply`: the activator's own answers (queue full, timeout, refused), as gRPC statuses to gRPC clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import quote

import h2.events
from hyperframe.frame import GoAwayFrame

from ferry.xds.resources import ACTIVATOR_KEY_HEADER

from .h2link import (
    CANCEL,
    REFUSED_STREAM,
    Link,
    Stream,
    forwarded,
    header,
)
from .proxy import CONNECT_TIMEOUT_S, InstanceFailed, InstanceUnreachable

log = logging.getLogger("ferry.activator")

Address = tuple[str, int]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

MAX_STREAMS = 1000
"""Streams one gateway connection may have open here; Envoy opens another connection beyond (a held request is a
stream, so 10,000 held requests take ten connections)."""

INSTANCE_IDLE_S = 30.0
"""An h2c connection to an instance that carried no stream for this long is closed."""

_LAST_STREAM_ID = 2**31 - 1024  # a connection that has used up its stream ids takes no more (a billion requests)

KEY_HEADER = ACTIVATOR_KEY_HEADER.encode()
_NOT_FORWARDED_UP = frozenset((KEY_HEADER,))

GRPC_STATUS = {400: 13, 403: 7, 404: 5, 499: 1, 502: 14, 503: 14, 504: 4}
"""The gRPC status the activator's own answers carry: INTERNAL, PERMISSION_DENIED, NOT_FOUND, CANCELLED, UNAVAILABLE
(retry: queue full, shutting down, instance failed) and DEADLINE_EXCEEDED (the revision's timeout)."""


class Sniffer(asyncio.Protocol):
    """Reads just enough of a new connection to tell h2c from HTTP/1.1, then hands the connection (and the bytes
    read) to the protocol that speaks it. A connection that sends nothing is closed after `idle_timeout_s`."""

    __slots__ = ("_http1", "_h2c", "_timeout_s", "_transport", "_buffer", "_timer")

    def __init__(self, http1: Callable[[], asyncio.Protocol], h2c: Callable[[], asyncio.Protocol],
                 idle_timeout_s: float):
        self._http1, self._h2c, self._timeout_s = http1, h2c, idle_timeout_s
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, transport.close)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        head = buffer[:len(PREFACE)]
        if PREFACE.startswith(head):
            if len(head) < len(PREFACE):
                self._buffer = buffer  # a prefix of the preface so far: wait for the rest
                return
            protocol = self._h2c()
        else:
            protocol = self._http1()
        self._timer.cancel()
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(buffer)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


# -- the gateways' side ---------------------------------------------------------------------------------


class GatewayLink(Link):
    """One gateway's HTTP/2 connection to the activator."""

    def __init__(self, on_stream: Callable[[Stream], None], links: set[GatewayLink], idle_timeout_s: float):
        super().__init__(max_concurrent_streams=MAX_STREAMS)
        self._on_stream = on_stream
        self._links = links
        self._idle_timeout_s = idle_timeout_s
        self._idle: asyncio.TimerHandle | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._links.add(self)
        self._arm_idle()

    def on_request(self, event: h2.events.RequestReceived) -> None:
        if self.closing:  # after our GOAWAY: not processed, the gateway may send it elsewhere
            self.h2.reset_stream(event.stream_id, REFUSED_STREAM)
            return
        stream = Stream(self, event.stream_id, event.headers)
        stream.waiter = self.loop.create_future()
        self.streams[event.stream_id] = stream
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._on_stream(stream)

    def on_reset(self, stream: Stream, code: int) -> None:
        """The gateway reset the request (its client went away, or its own timeout): so does the instance's side."""
        peer = stream.peer
        if peer is not None:
            peer.reset(code or CANCEL)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        _done(stream)

    def on_sent_all(self, stream: Stream) -> None:
        _done(stream)

    def on_closed(self, stream: Stream) -> None:
        _done(stream)
        if not self.streams:
            if self.closing:
                self.close()
            else:
                self._arm_idle()

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        if not self.streams:
            self.close()

    def on_lost(self) -> None:
        self._links.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    def drain(self) -> None:
        """Take no new stream (a graceful GOAWAY; the streams already here go on), and close once they are done.
        Written by hand: h2 would refuse to send anything on the connection after its own."""
        if self.closing or self.lost:
            return
        self.closing = True
        self.write()
        self.transport.write(GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id).serialize())
        if not self.streams:
            self.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self._idle_timeout_s, self._idle_close)

    def _idle_close(self) -> None:
        self._idle = None
        if not self.streams and not self.lost:
            self.h2.close_connection()
            self.close()


def _done(stream: Stream) -> None:
    waiter = stream.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def is_grpc(stream: Stream) -> bool:
    content_type = header(stream.headers, b"content-type")
    return content_type is not None and content_type.startswith(b"application/grpc")


def reply(stream: Stream, status: int, text: str, *, retry_after: bool = False) -> None:
    """The activator's own answer: to a gRPC client, a trailers-only response with the gRPC status for `status`
    (an HTTP error would reach its code as a bare UNAVAILABLE or UNKNOWN); to others, `status` with `text`."""
    if stream.closed or stream.sent_end:
        return
    if is_grpc(stream):
        stream.send_headers([(b":status", b"200"), (b"content-type", b"application/grpc"),
                             (b"grpc-status", str(GRPC_STATUS.get(status, 2)).encode()),
                             (b"grpc-message", quote(text, safe=" /:=,;'()").encode())], end=True)
        return
    body = text.encode() + b"\n"
    headers = [(b":status", str(status).encode()), (b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    stream.send_headers(headers)
    stream.send_data(body)
    stream.send_end()


def finish(stream: Stream, peer: Stream | None) -> None:
    """After the exchange (or instead of it): whatever is still open of either stream is reset, so neither side
    waits for the rest of a request nobody reads (NO_ERROR to the gateway: its answer is complete)."""
    if peer is not None and not peer.closed:
        peer.reset(CANCEL)
    if not stream.closed:
        stream.reset(0 if stream.sent_end else CANCEL)


# -- the instances' side --------------------------------------------------------------------------------


class InstanceLink(Link):
    """One h2c connection from the activator to an instance."""

    client_side = True

    def __init__(self, pool: Pool, address: Address):
        super().__init__(max_concurrent_streams=0)  # an instance opens no stream towards us
        self.pool = pool
        self.address = address
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self._idle: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return (self.goaway is None and not self.lost and self.ready.done()
                and len(self.streams) < self.h2.remote_settings.max_concurrent_streams
                and self.h2.highest_outbound_stream_id < _LAST_STREAM_ID)

    def open(self, downstream: Stream) -> Stream:
        """A stream to the instance, paired with the gateway's `downstream`: its request goes out at once."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        stream = Stream(self, self.h2.get_next_available_stream_id())
        stream.waiter = self.loop.create_future()
        self.streams[stream.id] = stream
        held = downstream.held
        whole = held is not None and len(held) == 1 and held[0][0] == "end"  # a request with no body
        if whole:
            held.clear()
        stream.send_headers(forwarded(downstream.headers, _NOT_FORWARDED_UP), end=whole)
        stream.pair(downstream)
        downstream.pair(stream)
        return stream

    def on_settings(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
            self._idle = self.loop.call_later(INSTANCE_IDLE_S, self._idle_close)  # until its first stream

    def on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.head = event.headers
        if stream.peer is not None:
            stream.peer.send_headers(forwarded(event.headers), end=bool(event.stream_ended))
        if not stream.waiter.done():
            stream.waiter.set_result(None)

    def on_informational(self, event: h2.events.InformationalResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.peer is not None:
            stream.peer.send_headers(forwarded(event.headers))

    def on_reset(self, stream: Stream, code: int) -> None:
        """Before its head: the request failed (InstanceFailed, answered by the activator); after: the gateway's
        stream is reset the same way, as a cut connection would be in HTTP/1.1."""
        if not stream.waiter.done():
            stream.waiter.set_exception(InstanceFailed(
                "the instance refused the stream" if code == REFUSED_STREAM else
                f"the instance reset the stream (HTTP/2 error {code})" if not self.lost else
                "the connection to the instance broke"))
            return
        peer = stream.peer
        if peer is not None and not peer.closed:
            peer.reset(code or CANCEL)

    def on_closed(self, stream: Stream) -> None:
        if not self.streams:
            if self.goaway is not None:
                self.close()
            elif not self.lost:
                self._idle = self.loop.call_later(INSTANCE_IDLE_S, self._idle_close)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The instance takes no new stream here: those above `last_stream_id` never reached it."""
        self.pool.forget(self)
        for stream in [s for s in self.streams.values() if s.id > last_stream_id]:
            self.stream_failed(stream, ConnectionRefusedError("the instance is going away"))
        if not self.streams:
            self.close()

    def on_lost(self) -> None:
        self.pool.forget(self)
        if self._idle is not None:
            self._idle.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("the instance closed the connection before its SETTINGS "
                                                          "(is it an HTTP/2 server?)"))

    def _idle_close(self) -> None:
        self._idle = None
        if not self.streams and not self.lost:
            self.pool.forget(self)
            self.h2.close_connection()
            self.close()


class Pool:
    """h2c connections to the instances, keyed by address."""

    def __init__(self) -> None:
        self._links: dict[Address, list[InstanceLink]] = {}
        self._connecting: dict[Address, asyncio.Task[InstanceLink]] = {}

    async def open(self, address: Address, downstream: Stream) -> Stream:
        """Send `downstream`'s request to the instance at `address`; returns the instance's stream once its response
        head arrived. InstanceUnreachable: no h2c connection could be made (nothing was sent, another instance may
        take it); InstanceFailed: the instance reset the stream before answering."""
        link = await self._link(address)
        stream = link.open(downstream)
        try:
            await stream.waiter
        except BaseException:
            if not stream.closed:
                stream.reset(CANCEL)
            raise
        return stream

    def forget(self, link: InstanceLink) -> None:
        links = self._links.get(link.address)
        if links is not None and link in links:
            links.remove(link)
            if not links:
                del self._links[link.address]

    def close(self) -> None:
        for task in self._connecting.values():
            task.cancel()
        for links in list(self._links.values()):
            for link in list(links):
                link.transport.abort()
        self._links.clear()

    async def _link(self, address: Address) -> InstanceLink:
        while True:
            for link in self._links.get(address, ()):
                if link.available:
                    return link
            connecting = self._connecting.get(address)
            if connecting is None:
                connecting = self._connecting[address] = asyncio.get_running_loop().create_task(
                    self._connect(address), name=f"h2c connect {address[0]}:{address[1]}")
                connecting.add_done_callback(_retrieved)
            link = await asyncio.shield(connecting)
            if link.available:
                return link
            # Taken up to its peer's limit by those who waited with us: open another.

    async def _connect(self, address: Address) -> InstanceLink:
        loop = asyncio.get_running_loop()
        link: InstanceLink | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, link = await loop.create_connection(lambda: InstanceLink(self, address), address[0], address[1])
                await link.ready
        except (OSError, TimeoutError) as error:
            if link is not None:
                link.transport.abort()
            raise InstanceUnreachable(f"h2c connection to {address[0]}:{address[1]} failed: "
                                      f"{type(error).__name__}: {error}") from None
        finally:
            self._connecting.pop(address, None)
        self._links.setdefault(address, []).append(link)
        return link


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # every waiter gets it; none left unretrieved when nobody waited


def head_status(stream: Stream | None) -> int:
    """The HTTP status of an instance's response head (502 when it had none)."""
    if stream is None or stream.head is None:
        return 502
    status = header(stream.head, b":status")
    return int(status) if status and status.isdigit() else 502

