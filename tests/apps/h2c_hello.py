"""An HTTP/2-only revision (h2c with prior knowledge, python-hyper's h2; no HTTP/1.1 at all) on 127.0.0.1:$PORT:
GET /healthz answers $HEALTHZ (default 200), GET /headers the request's headers as JSON; anything else answers 200
"<revision>: <method> <path> <body bytes>"."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import h2.config
import h2.connection
import h2.events
import h2.exceptions

REVISION = os.environ.get("K_REVISION", "local")
HEALTHZ = os.environ.get("HEALTHZ", "200").encode()


class Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        self.requests: dict[int, tuple[dict[bytes, bytes], int]] = {}
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = (dict(event.headers), 0)
            elif isinstance(event, h2.events.DataReceived):
                head, size = self.requests[event.stream_id]
                self.requests[event.stream_id] = (head, size + len(event.data))
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.answer(event.stream_id)
        self.transport.write(self.conn.data_to_send())

    def answer(self, stream_id: int) -> None:
        head, size = self.requests.pop(stream_id)
        path = head.get(b":path", b"/")
        if path == b"/healthz":
            status, body = HEALTHZ, b"ok\n"
        elif path == b"/headers":
            status, body = b"200", json.dumps({k.decode(): v.decode() for k, v in head.items()}).encode()
        else:
            status, body = b"200", REVISION.encode() + b": " + head[b":method"] + b" " + path + b" %d\n" % size
        self.conn.send_headers(stream_id, [(b":status", status), (b"content-length", str(len(body)).encode())])
        self.conn.send_data(stream_id, body, end_stream=True)


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", int(os.environ.get("PORT", "8080")))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
