"""`count` concurrent HTTP/1.1 requests, one per connection, all sent before any answer is awaited; prints JSON:
answers by status, errors, seconds until the last answer. Run in its own process (its file descriptors and CPU
stay apart from what is measured):

    python bench/burst.py PORT COUNT '{"Host": "x.localhost", ...}'
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

CONNECTS_AT_ONCE = 256  # below the listeners' accept backlog, so no SYN is dropped and retried a second later


async def one(port: int, request: bytes, sent: asyncio.Event, opened: list[int], connect: asyncio.Semaphore,
              ready: asyncio.Event) -> str:
    async with connect:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        opened[0] += 1
        await ready.wait()  # every connection open first: then all requests go out together
        writer.write(request)
        await writer.drain()
        sent.set()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        return status
    finally:
        writer.close()


async def main(port: int, count: int, headers: dict[str, str]) -> dict:
    request = ("GET / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
               + "Connection: close\r\n\r\n").encode()
    sent, ready, connect = asyncio.Event(), asyncio.Event(), asyncio.Semaphore(CONNECTS_AT_ONCE)
    opened = [0]
    tasks = [asyncio.ensure_future(one(port, request, sent, opened, connect, ready)) for _ in range(count)]
    while opened[0] < count and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    started = time.perf_counter()
    ready.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    statuses = Counter(r if isinstance(r, str) else f"error: {type(r).__name__}" for r in results)
    return {"answers": dict(statuses), "seconds": round(time.perf_counter() - started, 3)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])))))
