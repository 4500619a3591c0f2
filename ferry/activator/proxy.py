"""Forwarding one request to one instance: plain HTTP/1.1 (bodies streamed both ways) and websockets.

Split in two steps, `send` (until the instance's response head) and `relay` (the response back), because
what a failure means depends on the step: before any body byte left, another instance can take the
request; once the client has our status line, the only honest signal left is to cut the connection.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger("ferry.activator")

Address = tuple[str, int]

HOP_BY_HOP = ("Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
              "TE", "Trailer", "Transfer-Encoding", "Upgrade")
"""Headers about one connection, not the message (RFC 9110 7.6.1): never forwarded either way."""

_NOT_FORWARDED_UP = HOP_BY_HOP + ("Expect", "ferry-activator-key")
"""Expect: 100-continue is answered here (the body is streamed anyway), so the instance must not answer it too;
the activator's key is between the gateways and the activator."""

_WEBSOCKET_HANDSHAKE = HOP_BY_HOP + ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                                     "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept", "Expect",
                                     "ferry-activator-key")
"""Each hop makes its own websocket handshake, so these belong to one hop only."""

_CLIENT_DEFAULTS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
"""Headers aiohttp's client adds on its own (Content-Type only to a body)."""

CONNECT_TIMEOUT_S = 2.0
"""An instance that does not accept a TCP connection in 2 s on loopback or LAN is as good as gone: try another."""

MAX_HEADER_BYTES = 65536
"""Envoy accepts headers up to 60 KiB; aiohttp's default 8 KiB would reject what Envoy let through."""

MAX_WEBSOCKET_MESSAGE_BYTES = 16 * 1024 * 1024
"""A websocket message larger than this closes the websocket (1009), either way."""


class InstanceUnreachable(Exception):
    """The instance could not take the request and nothing of the body has left: another instance may."""


class InstanceFailed(Exception):
    """The instance broke the exchange after part of it happened: the request cannot be replayed."""


class StreamedBody:
    """The client's request body, read chunk by chunk as the instance takes it, never held whole.

    `started` tells whether any chunk left: until then the request can still go to another instance."""

    __slots__ = ("_content", "started")

    def __init__(self, content: aiohttp.StreamReader):
        self._content = content
        self.started = False

    def __aiter__(self) -> StreamedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._content.readany()
        if not chunk:
            raise StopAsyncIteration
        self.started = True
        return chunk


def without(headers, names: tuple[str, ...]) -> CIMultiDict[str]:
    """A copy of `headers` minus `names` and minus whatever the Connection header itself names."""
    copy = CIMultiDict(headers)
    connection = copy.get("Connection")
    if connection:
        for token in connection.split(","):
            token = token.strip()
            if token:
                copy.popall(token, None)
    for name in names:
        if name in copy:
            del copy[name]
    return copy


def is_websocket(request: web.BaseRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


class Forwarder:
    """Owns the one client session (a shared keep-alive pool) used to reach every instance."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, enable_cleanup_closed=False),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # Content-Encoding passes through untouched
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )
        self._websockets: set[web.WebSocketResponse] = set()

    async def close_websockets(self) -> None:
        """Tell every client websocket we are going away, so a shutdown does not wait on idle sessions."""
        await asyncio.gather(*(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY) for ws in list(self._websockets)),
                             return_exceptions=True)

    async def aclose(self) -> None:
        await self._session.close()

    # -- HTTP ------------------------------------------------------------------------------------------

    async def send(self, request: web.BaseRequest, address: Address) -> aiohttp.ClientResponse:
        """Send the request to `address` and return once its response head arrived.

        Raises InstanceUnreachable when the request can go elsewhere, InstanceFailed when it cannot."""
        body = StreamedBody(request.content) if request.body_exists else None
        if body is not None and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        url = URL(f"http://{address[0]}:{address[1]}{request.raw_path}", encoded=True)
        headers = without(request.headers, _NOT_FORWARDED_UP)
        # aiohttp would add these when absent; the instance must see the client's headers, not ours.
        # Asked per request, and only for what is missing: a skip list costs aiohttp a header copy each time.
        missing = [name for name in _CLIENT_DEFAULTS if name not in headers]
        try:
            return await self._session.request(
                request.method, url, headers=headers, data=body, skip_auto_headers=missing or None,
                allow_redirects=False, compress=None)
        except aiohttp.ClientError as error:
            if body is None or not body.started:
                raise InstanceUnreachable(f"{type(error).__name__}: {error}") from error
            raise InstanceFailed(f"{type(error).__name__}: {error}") from error

    async def relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Stream the instance's response to the client as it arrives; status and headers as the instance set them.

        If the instance breaks off mid-body, the client connection is cut: a truncated body must not look whole.
        The same happens when the caller is cancelled (timeout) after the response started. A complete but
        broken answer noticed before anything was sent raises InstanceFailed."""
        headers = without(upstream.headers, HOP_BY_HOP)
        content = upstream.content
        if content.is_eof():
            # The whole answer is already here (the common small response): one write, head and body together.
            try:
                body = content.read_nowait()
            except aiohttp.ClientError as error:  # a malformed body; nothing sent to the client yet
                upstream.close()
                raise InstanceFailed(f"{type(error).__name__}: {error}") from error
            upstream.release()
            return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        complete = False
        try:
            await response.prepare(request)
            read = content.readany
            while chunk := await read():
                await response.write(chunk)
            complete = True
        except aiohttp.ClientError as error:
            log.debug("response relay broken off", extra={"url": str(upstream.url), "error": repr(error)})
            abort(request)
        except BaseException:
            abort(request)
            raise
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()
        return response

    # -- websockets ------------------------------------------------------------------------------------

    async def connect_websocket(self, request: web.BaseRequest, address: Address) -> aiohttp.ClientWebSocketResponse:
        """Open the instance's side of a websocket; raises InstanceUnreachable if it cannot be reached."""
        url = URL(f"http://{address[0]}:{address[1]}{request.raw_path}", encoded=True)
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            return await self._session.ws_connect(
                url, headers=without(request.headers, _WEBSOCKET_HANDSHAKE), protocols=protocols,
                compress=0, max_msg_size=MAX_WEBSOCKET_MESSAGE_BYTES, autoping=True)
        except aiohttp.WSServerHandshakeError as error:
            raise InstanceFailed(f"websocket handshake refused by the instance: {error.status} {error.message}") \
                from error
        except aiohttp.ClientError as error:
            raise InstanceUnreachable(f"{type(error).__name__}: {error}") from error

    async def relay_websocket(self, request: web.BaseRequest,
                              upstream: aiohttp.ClientWebSocketResponse) -> web.WebSocketResponse:
        """Accept the client's websocket and pipe messages both ways until either side closes."""
        downstream = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (),
                                           max_msg_size=MAX_WEBSOCKET_MESSAGE_BYTES, autoping=True)
        self._websockets.add(downstream)
        try:
            await downstream.prepare(request)
            to_client = asyncio.get_running_loop().create_task(_pipe(upstream, downstream))
            try:
                await _pipe(downstream, upstream)
                await to_client  # ends once the close handshake, started by either side, is done
            finally:
                if not to_client.done():
                    to_client.cancel()
                await asyncio.gather(to_client, return_exceptions=True)
        finally:
            self._websockets.discard(downstream)
            await upstream.close()
        return downstream


async def _pipe(source, sink) -> None:
    """Copy messages from one websocket to the other; a close on `source` closes `sink` with the same code."""
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.ERROR:
            break
    if not sink.closed:
        await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)


def abort(request: web.BaseRequest) -> None:
    """Cut the client's connection at once (no final chunk), so a broken response cannot pass for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.abort()
