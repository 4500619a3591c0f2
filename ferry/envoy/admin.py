"""Envoy admin API client: liveness, and the per-cluster stats the autoscaler and the drain read."""

from __future__ import annotations

import asyncio
import json
import re


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

    async def cluster_stats(self, names: list[str] | None = None, stats: tuple[str, ...] = ("upstream_rq_active",)) -> dict[str, dict[str, int]]:
        """{cluster: {stat: value}} for counters and gauges, filtered on Envoy's side (cheap at any scale)."""
        cluster_re = "|".join(re.escape(n) for n in names) if names else "[^.]+(?:/[^.]+)?"
        filter_re = f"^cluster\\.({cluster_re})\\.({'|'.join(stats)})$"
        status, body = await self.get(f"/stats?format=json&filter={_quote(filter_re)}")
        if status != 200:
            raise RuntimeError(f"envoy admin /stats answered {status}")
        out: dict[str, dict[str, int]] = {}
        pattern = re.compile(filter_re)
        for stat in json.loads(body).get("stats", []):
            if "value" not in stat:
                continue
            match = pattern.match(stat["name"])
            if match:
                out.setdefault(match.group(1), {})[match.group(2)] = stat["value"]
        return out


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


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
