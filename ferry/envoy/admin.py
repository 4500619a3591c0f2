"""Envoy admin API client: liveness, and the stats the autoscaler and rollout analysis read."""

from __future__ import annotations

import asyncio


class EnvoyAdmin:
    def __init__(self, host: str = "127.0.0.1", port: int = 9901, timeout: float = 2.0):
        self.host, self.port, self.timeout = host, port, timeout

    async def get(self, path: str) -> tuple[int, bytes]:
        """A tiny HTTP/1.1 GET: the admin API is local, and this keeps aiohttp sessions out of hot loops."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), self.timeout)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return status, body

    async def alive(self) -> bool:
        try:
            status, _ = await self.get("/ready")
            return status in (200, 503)  # 503 = still initialising, but the process answers
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            return False

    async def fetch(self, path: str, timeout: float) -> bytes:
        """The body of a 200 answer within `timeout` seconds in all; anything else raises."""
        status, body = await asyncio.wait_for(self.get(path), timeout)
        if status != 200:
            raise RuntimeError(f"envoy admin {path.split('?')[0]} answered {status}")
        return body

def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)
