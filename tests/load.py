"""A bounded load generator: N concurrent clients through the gateway, counting every outcome."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp

from .helpers import wait_until


class Load:
    def __init__(self, url: str, host: str, *, concurrency: int = 8, max_seconds: float = 120.0):
        self.url, self.host = url, host
        self.concurrency = concurrency
        self.max_seconds = max_seconds  # a bound, so a test that forgets to stop cannot run forever
        self.statuses: collections.Counter[int] = collections.Counter()
        self.revisions: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.bad: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failures(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + sum(self.errors.values())

    async def __aenter__(self) -> "Load":
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))
        deadline = time.monotonic() + self.max_seconds
        self._tasks = [asyncio.create_task(self._worker(deadline)) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()

    async def _worker(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                async with self._session.get(self.url, headers={"Host": self.host}) as response:
                    await response.read()
                    self.statuses[response.status] += 1
                    self.revisions[response.headers.get("x-revision", "?")] += 1
                    if not 200 <= response.status < 300 and len(self.bad) < 20:
                        self.bad.append(f"{time.strftime('%H:%M:%S')} {response.status} {dict(response.headers)} "
                                        f"{(await response.text())[:200]}")
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
                self.errors[type(err).__name__] += 1
                if len(self.bad) < 20:
                    self.bad.append(repr(err))

    async def wait_for(self, requests: int, timeout: float = 60.0) -> None:
        """Until `requests` more requests have completed."""
        target = self.total + requests
        try:
            await wait_until(lambda: self.total >= target, timeout, f"{requests} more requests", interval=0.01)
        except AssertionError as err:
            raise AssertionError(f"{err}: load at {self.total}/{target}, {self.failures} failed {self.bad[:3]}") from None


async def count_revisions(url: str, host: str, requests: int, concurrency: int = 16) -> collections.Counter[str]:
    """Exactly `requests` requests; a Counter of the revision that answered each (status != 200 -> 'status:N')."""
    counts: collections.Counter[str] = collections.Counter()
    remaining = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url, headers={"Host": host}) as response:
                    await response.read()
                    key = response.headers.get("x-revision", "?") if response.status == 200 else f"status:{response.status}"
                    counts[key] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts
