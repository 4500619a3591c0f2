"""HTTP/2 plumbing for the activator's h2c path: a `Link` per connection (an asyncio Protocol around python-hyper's
h2 state machine, either side) and the `Stream`s on it.

A relay pairs two streams, one on the gateway's connection and one on an instance's (`Stream.pair`), and from then
on whatever one receives the other sends: headers, data, trailers, end of stream and resets. Data is sent only
within the receiver's flow-control window and acknowledged to its sender only once it was sent on (or dropped), so
a slow side slows the other down instead of filling the activator's memory: what one stream can hold is bounded by
the window the activator advertises. Until a stream is paired (its request waits for an instance), what arrives on
it is held unacknowledged, within the same bound.

Writes are coalesced: an action on a connection marks it, and its frames go out in one write at the end of the loop
iteration (or at the end of the read that caused them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState

log = logging.getLogger("ferry.activator")

Headers = list[tuple[bytes, bytes]]

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x2, 0x7, 0x8

STREAM_WINDOW = 65535
"""What one stream may have in flight towards the activator before it acknowledges (HTTP/2's default, as the 64 KiB
aiohttp buffers of an HTTP/1.1 request): what a held request can park here."""

CONNECTION_WINDOW = 16 * 1024 * 1024
"""The whole connection's: large, so that streams held for an instance do not stall the others on it."""

MAX_HEADER_LIST_BYTES = 65536
"""Envoy accepts headers up to 60 KiB, and so does the HTTP/1.1 side of the activator."""

CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade", b"http2-settings"))
"""Headers about one connection, never forwarded (RFC 9113 8.2.2); `te` passes only as `te: trailers` (gRPC's)."""


def forwarded(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()) -> Headers:
    """`headers` without the connection-specific ones and without `drop`."""
    return [(name, value) for name, value in headers
            if name not in CONNECTION_SPECIFIC and name not in drop and (name != b"te" or value == b"trailers")]


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class Stream:
    """One stream of one connection. `peer` is the stream on the other connection that it is relayed with."""

    __slots__ = ("link", "id", "headers", "peer", "held", "out", "out_end", "out_trailers", "sent_end",
                 "received_end", "reset_code", "head", "waiter", "task", "data_sent", "closed")

    def __init__(self, link: Link, stream_id: int, headers: Headers | None = None):
        self.link = link
        self.id = stream_id
        self.headers = headers  # the request's (a gateway's stream)
        self.peer: Stream | None = None
        # What arrived before pairing, in order: ("data", bytes, flow-controlled length), ("trailers", h), ("end",).
        self.held: list[tuple] | None = []
        self.out: deque[list] = deque()  # [data, source stream or None, flow-controlled length] to send
        self.out_end = False  # the end of stream is to be sent once `out` is empty
        self.out_trailers: Headers | None = None
        self.sent_end = False
        self.received_end = False
        self.reset_code: int | None = None
        self.head: Headers | None = None  # the final response head (an instance's stream)
        self.waiter: asyncio.Future | None = None  # an instance's stream: until its head; a gateway's: until done
        self.task: asyncio.Task | None = None  # a gateway's stream: the request's task
        self.data_sent = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"Stream({self.id}, sent_end={self.sent_end}, received_end={self.received_end}, reset={self.reset_code})"

    # -- pairing ---------------------------------------------------------------------------------------

    def pair(self, peer: Stream) -> None:
        """From now on what this stream receives goes to `peer`, starting with what it held."""
        self.peer = peer
        held, self.held = self.held, None
        for item in held or ():
            self._deliver(item)

    def unpair(self) -> None:
        self.peer = None

    # -- what arrives ------------------------------------------------------------------------------------

    def received(self, item: tuple) -> None:
        if self.held is not None:
            self.held.append(item)
        else:
            self._deliver(item)

    def _deliver(self, item: tuple) -> None:
        peer = self.peer
        kind = item[0]
        if peer is None or peer.closed or peer.sent_end:
            if kind == "data":
                self.ack(item[2])  # nowhere to go: give the window back
            return
        if kind == "data":
            peer.send_data(item[1], self, item[2])
        elif kind == "trailers":
            peer.send_trailers(forwarded(item[1]))
        else:
            peer.send_end()

    def ack(self, length: int) -> None:
        """`length` flow-controlled bytes of this stream were sent on (or dropped): the sender may send more."""
        link = self.link
        if length and not link.lost:
            link.h2.acknowledge_received_data(length, self.id)
            link.mark()

    # -- what is sent --------------------------------------------------------------------------------------

    def send_headers(self, headers: Headers, *, end: bool = False) -> None:
        if self.closed or self.sent_end:
            return
        try:
            self.link.h2.send_headers(self.id, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as error:
            self.link.stream_failed(self, error)
            return
        if end:
            self.sent_end = True
            self.link.sent_all(self)
        self.link.mark()

    def send_data(self, data: bytes | memoryview, source: Stream | None = None, length: int = 0) -> None:
        if self.closed or self.out_end:
            if source is not None:
                source.ack(length)
            return
        self.out.append([data, source, length])
        self.link.flush(self)

    def send_trailers(self, headers: Headers) -> None:
        if not self.closed and not self.out_end:
            self.out_trailers = headers
            self.out_end = True
            self.link.flush(self)

    def send_end(self) -> None:
        if not self.closed and not self.out_end:
            self.out_end = True
            self.link.flush(self)

    def reset(self, code: int = CANCEL) -> None:
        """Reset the stream (RST_STREAM) unless it is closed already; its peer is not told (the caller decides)."""
        if self.closed:
            return
        if not self.link.lost:
            try:
                self.link.h2.reset_stream(self.id, code)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self.link.mark()
        self.reset_code = code
        self.link.close_stream(self)

    def release(self) -> None:
        """Give back every window this stream still holds (held or queued data): nothing more will be sent on."""
        for item in self.held or ():
            if item[0] == "data":
                self.ack(item[2])
        self.held = [] if self.held is not None else None
        out, self.out = self.out, deque()
        for _, source, length in out:
            if source is not None:
                source.ack(length)


class Link(asyncio.Protocol):
    """One HTTP/2 connection, either side. Subclasses say what a new stream, a response head or the end of a
    stream means (`on_*`); this class moves frames, windows and writes."""

    client_side = False

    def __init__(self, max_concurrent_streams: int = 1000):
        config = h2.config.H2Configuration(client_side=self.client_side, header_encoding=None,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=self.client_side, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        self.streams: dict[int, Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.lost = False
        self.goaway: int | None = None  # the peer said it takes no stream above this id
        self._paused = False
        self._blocked: set[Stream] = set()  # streams with data waiting for a window (or for the socket)
        self._marked = False
        self._dispatch: dict[type, Callable] = {
            h2.events.DataReceived: self._data, h2.events.StreamEnded: self._ended,
            h2.events.WindowUpdated: self._window, h2.events.StreamReset: self._reset,
            h2.events.TrailersReceived: self._trailers, h2.events.RequestReceived: self.on_request,
            h2.events.ResponseReceived: self.on_response, h2.events.RemoteSettingsChanged: self._settings,
            h2.events.InformationalResponseReceived: self.on_informational,
            h2.events.ConnectionTerminated: self._terminated,
        }

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.write()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:  # h2 queued a GOAWAY
            log.debug("HTTP/2 protocol error; closing the connection", extra={"error": repr(error)})
            self.close()
            return
        dispatch = self._dispatch
        for event in events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        self.write()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for stream in list(self._blocked):
            self.flush(stream)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for stream in list(self.streams.values()):
            self.stream_failed(stream, exc or ConnectionResetError("connection closed"))
        self.on_lost()

    # -- writing -----------------------------------------------------------------------------------------

    def mark(self) -> None:
        """Frames are waiting in h2: write them at the end of this loop iteration, with whatever else comes."""
        if not self._marked and not self.lost:
            self._marked = True
            self.loop.call_soon(self.write)

    def write(self) -> None:
        self._marked = False
        data = self.h2.data_to_send()
        if data and not self.lost:
            self.transport.write(data)

    def close(self) -> None:
        """Close the connection once what h2 holds for it is written."""
        if not self.lost:
            self.write()
            self.transport.close()

    def flush(self, stream: Stream) -> None:
        """Send what the stream has queued, as far as the peer's windows and the socket allow."""
        h2conn = self.h2
        out = stream.out
        try:
            while out:
                window = min(h2conn.local_flow_control_window(stream.id), h2conn.max_outbound_frame_size)
                if window <= 0 or self._paused:
                    self._blocked.add(stream)
                    return
                item = out[0]
                data = item[0]
                if len(data) > window:
                    view = memoryview(data)
                    h2conn.send_data(stream.id, view[:window])
                    item[0] = view[window:]
                    stream.data_sent += window
                    continue
                out.popleft()
                last = not out and stream.out_end and stream.out_trailers is None
                h2conn.send_data(stream.id, data, end_stream=last)
                stream.data_sent += len(data)
                if item[1] is not None:
                    item[1].ack(item[2])
                if last:
                    stream.sent_end = True
            self._blocked.discard(stream)
            if stream.out_end and not stream.sent_end:
                if stream.out_trailers is not None:
                    h2conn.send_headers(stream.id, stream.out_trailers, end_stream=True)
                else:
                    h2conn.end_stream(stream.id)
                stream.sent_end = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as error:
            self.mark()
            self.stream_failed(stream, error)
            return
        self.mark()
        if stream.sent_end:
            self.sent_all(stream)

    # -- stream bookkeeping --------------------------------------------------------------------------------

    def sent_all(self, stream: Stream) -> None:
        """Our side of the stream is complete."""
        self.on_sent_all(stream)
        if stream.received_end:
            self.close_stream(stream)

    def close_stream(self, stream: Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        stream.release()
        self._blocked.discard(stream)
        if self.streams.pop(stream.id, None) is not None:
            self.on_closed(stream)

    def stream_failed(self, stream: Stream, error: BaseException) -> None:
        """The stream cannot go on (its connection is gone, or h2 refused a frame): it counts as reset."""
        if stream.closed:
            return
        log.debug("HTTP/2 stream failed", extra={"stream": stream.id, "error": repr(error)})
        stream.reset_code = INTERNAL_ERROR if stream.reset_code is None else stream.reset_code
        self.close_stream(stream)
        self.on_reset(stream, INTERNAL_ERROR)

    # -- events ----------------------------------------------------------------------------------------

    def _data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            if not self.lost:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.received(("data", event.data, event.flow_controlled_length))

    def _trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.received(("trailers", event.headers))

    def _ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.received_end:
            return
        stream.received_end = True
        stream.received(("end",))
        if stream.sent_end:
            self.close_stream(stream)

    def _reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.closed:
            return
        stream.reset_code = event.error_code
        self.close_stream(stream)
        self.on_reset(stream, event.error_code)

    def _window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id == 0:
            for stream in list(self._blocked):
                self.flush(stream)
        else:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream in self._blocked:
                self.flush(stream)

    def _settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for stream in list(self._blocked):
                self.flush(stream)
        self.on_settings()

    def _terminated(self, event: h2.events.ConnectionTerminated) -> None:
        """GOAWAY. h2 takes it as the end of the connection at once; HTTP/2 lets the streams the peer already took
        finish (a graceful shutdown): so we keep the state machine open for them and start no new stream."""
        self.goaway = event.last_stream_id
        if event.error_code == NO_ERROR and self.streams:
            self.h2.state_machine.state = ConnectionState.OPEN
        self.on_goaway(event.last_stream_id, event.error_code)

    # -- what subclasses decide ----------------------------------------------------------------------------

    def on_request(self, event: h2.events.RequestReceived) -> None:  # a client's connection never gets one
        self.h2.reset_stream(event.stream_id, PROTOCOL_ERROR)

    def on_response(self, event: h2.events.ResponseReceived) -> None:
        pass

    def on_informational(self, event: h2.events.InformationalResponseReceived) -> None:
        pass

    def on_settings(self) -> None:
        pass

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass

    def on_reset(self, stream: Stream, code: int) -> None:
        pass

    def on_sent_all(self, stream: Stream) -> None:
        pass

    def on_closed(self, stream: Stream) -> None:
        pass

    def on_lost(self) -> None:
        pass
