"""Shared test utilities: free loopback ports, waiting on conditions, HTTP through a gateway."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Awaitable, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0, what: str = "condition",
                     interval: float = 0.02):
    """Poll a condition until true; fail with `what` after `timeout` (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
