"""Run a step every interval until cancelled: the shape of ferry's background loops (scrape, tick, rollouts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def every(interval: float, step: Callable[[], Awaitable[None]], log: logging.Logger, what: str) -> None:
    """A failing step is logged and the loop goes on; a slow one delays the next, with no catch-up burst."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", what)
        next_at = max(next_at + interval, loop.time())
        await asyncio.sleep(next_at - loop.time())
