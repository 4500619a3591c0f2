"""A minimal keep-alive HTTP/1.1 app for benchmarks: answers everything with 200 'ok' as fast as asyncio can.

The example app (threads, stdlib http.server) would cap throughput before ferry's parts do; this one lets the
benchmark measure Envoy and the activator instead. Listens on 127.0.0.1:$PORT (after $START_DELAY_S seconds);
/healthz is 200 at once.
"""

from __future__ import annotations

import asyncio
import os
import signal

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\nx-revision: %s\r\n\r\nok\n"


def next_message(buffer: bytes) -> tuple[bytes, int] | None:
    """The first complete HTTP/1.1 message in `buffer` (Content-Length framing): (lower-cased head, end), or None."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].lower()
    marker = head.find(b"content-length:")
    length = int(head[marker + 15:].split(b"\r\n", 1)[0]) if marker >= 0 else 0
    end = head_end + 4 + length
    return (head, end) if len(buffer) >= end else None


class Responder(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := next_message(self.buffer)) is not None:
            self.buffer = self.buffer[message[1]:]
            self.transport.write(self.response)


async def main() -> None:
    revision = os.environ.get("K_REVISION", "fast").encode()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.sleep(float(os.environ.get("START_DELAY_S", "0")))  # a slow start, to hold requests at zero
    server = await loop.create_server(
        lambda: Responder(RESPONSE % revision), "127.0.0.1", int(os.environ.get("PORT", "8080")), backlog=1024
    )
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
