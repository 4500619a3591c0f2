"""The shapes of ferry's background work: a step run every interval (scrape, tick, rollouts), and a set of
tasks that log their failure and are cancelled together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


LOOP_LAG_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


async def watch_loop_lag(observe: Callable[[float], None], interval: float = 0.025) -> None:
    """Every `interval`, how late a timer fired because the loop was busy: about the longest stretch it was
    blocked around then (a /status build, a snapshot diff, a blocking call). Time this thread spent runnable but
    waiting for a core (other processes on a busy machine; Linux's schedstat) is not taken for a block.
    `observe` gets seconds."""
    loop = asyncio.get_running_loop()
    try:
        stats = open("/proc/thread-self/schedstat", "rb")  # noqa: SIM115 - this thread's, read at every sample
    except OSError:
        stats = None
    try:
        while True:
            waited = _runqueue_wait(stats)
            due = loop.time() + interval
            await asyncio.sleep(interval)
            late = loop.time() - due
            observe(max(0.0, late - (_runqueue_wait(stats) - waited)))
    finally:
        if stats is not None:
            stats.close()


def _runqueue_wait(stats) -> float:
    """Seconds the thread has waited for a core since it started (0 where Linux's schedstat is missing)."""
    if stats is None:
        return 0.0
    try:
        stats.seek(0)
        return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


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


class Background:
    """Tasks started on the side: a failure is logged (never lost), and aclose() cancels what still runs."""

    def __init__(self, log: logging.Logger):
        self._log = log
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("background task failed", extra={"task": task.get_name()}, exc_info=task.exception())

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
