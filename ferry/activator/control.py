"""The activator's control channel: ferry and the activator process talk over a Unix socket in the state folder
(private to the user), one JSON object a line.

ferry tells the activator each managed revision's ready instances (`set`, `remove`, and `keep` after a restart),
and asks how many requests it proxies to an instance (`in_flight`, before that instance stops) and for its
Prometheus metrics. The activator tells ferry which revisions to wake (`wake`, with how many requests it holds)
and, four times a second when they changed, its per-revision counts (`stats`) for the autoscaler.

Either side may go away: the activator keeps the last instance sets and keeps holding requests while ferry is down
(and repeats its wake-ups), and ferry resends everything when it connects again (`ActivatorClient`), so a restarted
ferry takes the activator back as it is. Knative runs its activator as its own Deployment for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .server import Activator, RevisionStats

log = logging.getLogger("ferry.activator")

STATS_EVERY_S = 0.25
MAX_LINE = 16 * 1024 * 1024  # a `set` for a revision with many instances is a few KB; metrics text more
REQUEST_TIMEOUT_S = 2.0


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _counts(stats: dict[str, RevisionStats]) -> dict[str, list[int]]:
    return {r: [s.in_flight, s.queued, s.requests_total] for r, s in stats.items()}


# -- the activator's side -------------------------------------------------------------------------------------


class ControlServer:
    """In the activator process: serves one ferry at a time on `path` (a newer connection replaces an older one)."""

    def __init__(self, activator: Activator, path: Path, metrics: Callable[[], bytes] = lambda: b""):
        self._activator = activator
        self._path = path
        self._metrics = metrics
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pusher: asyncio.Task | None = None
        self._last_stats: dict[str, list[int]] | None = None

    def wake(self, revision: str) -> None:
        """The activator's on_demand: tell ferry, if one is connected (the gate repeats it while requests wait)."""
        held = self._activator.stats().get(revision)
        self._send({"op": "wake", "revision": revision, "held": held.in_flight if held else 0})

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path), limit=MAX_LINE)
        os.chmod(self._path, 0o600)
        self._pusher = asyncio.get_running_loop().create_task(self._push_stats(), name="activator stats")

    async def aclose(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(_line(message))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        previous, self._writer = self._writer, writer
        if previous is not None:
            previous.close()
        self._last_stats = None
        self._send({"op": "hello", "pid": os.getpid(), "revisions": _counts(self._activator.stats())})
        log.info("ferry connected to the activator")
        told: set[str] = set()  # revisions this ferry has set: a wake-up it may not have heard is repeated
        try:
            while line := await reader.readline():
                self._handle(json.loads(line), told)
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as err:
            log.warning("control connection failed", extra={"error": repr(err)})
        except asyncio.CancelledError:
            pass  # the activator is shutting down
        finally:
            if self._writer is writer:
                self._writer = None
                log.info("ferry disconnected from the activator; holding on")
            writer.close()

    def _handle(self, message: dict[str, Any], told: set[str]) -> None:
        op = message.get("op")
        activator = self._activator
        if op == "set":
            revision = message["revision"]
            start = message.get("response_start_s")
            activator.set_revision(revision, [tuple(e) for e in message["endpoints"]],
                                   concurrency=int(message["concurrency"]), timeout_s=float(message["timeout_s"]),
                                   response_start_s=float(start) if start is not None else None)
            if revision not in told:
                told.add(revision)
                activator.poke_again(revision)
        elif op == "key":
            activator.set_key(message["key"])
        elif op == "remove":
            activator.remove_revision(message["revision"])
        elif op == "keep":
            keep = set(message["revisions"])
            for revision in [r for r in activator.stats() if r not in keep]:
                activator.remove_revision(revision)
        elif op == "in_flight":
            host, port = message["endpoint"]
            self._send({"op": "reply", "id": message["id"],
                        "value": activator.in_flight(message["revision"], (host, int(port)))})
        elif op == "metrics":
            self._send({"op": "reply", "id": message["id"], "value": self._metrics().decode()})
        else:
            log.warning("unknown control message", extra={"op": op})

    async def _push_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            counts = _counts(self._activator.stats())
            if counts != self._last_stats and self._writer is not None:
                self._last_stats = counts
                self._send({"op": "stats", "revisions": counts})


# -- ferry's side ---------------------------------------------------------------------------------------------


class ActivatorClient:
    """The controller's ActivatorLink to an activator in its own process. Keeps what it was told, so that every
    (re)connection starts by resending it; `run()` keeps connecting until cancelled."""

    def __init__(self, path: Path, host: str, port: int, *, on_demand: Callable[[str], None] = lambda r: None,
                 key: str | None = None):
        self.path = path
        self._key = key  # told on every connection: an adopted activator may hold an older one
        self.host, self.port = host, port
        self.on_demand = on_demand
        self._revisions: dict[str, dict[str, Any]] = {}  # revision -> its `set` message
        self._stats: dict[str, RevisionStats] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}

    # -- the ActivatorLink --------------------------------------------------------------------------------

    def set_revision(self, revision: str, endpoints: Sequence[tuple[str, int]], *, concurrency: int,
                     timeout_s: float, response_start_s: float | None = None) -> None:
        message = {"op": "set", "revision": revision, "endpoints": [[str(h), int(p)] for h, p in endpoints],
                   "concurrency": concurrency, "timeout_s": timeout_s, "response_start_s": response_start_s}
        self._revisions[revision] = message
        self._send(message)

    def remove_revision(self, revision: str) -> None:
        self._revisions.pop(revision, None)
        self._stats.pop(revision, None)
        self._send({"op": "remove", "revision": revision})

    def keep_only_known(self) -> None:
        """After a restart, once this ferry has told the activator every revision it runs: forget the others."""
        self._send({"op": "keep", "revisions": sorted(self._revisions)})

    async def in_flight(self, revision: str, endpoint: tuple[str, int]) -> int:
        """Requests the activator is proxying to that instance now (0 when it cannot be asked)."""
        value = await self._ask({"op": "in_flight", "revision": revision, "endpoint": [endpoint[0], endpoint[1]]})
        return int(value or 0)

    def stats(self) -> dict[str, RevisionStats]:
        return self._stats

    async def metrics(self) -> bytes:
        """The activator's Prometheus metrics (empty when it cannot be asked)."""
        return str(await self._ask({"op": "metrics"}) or "").encode()

    # -- the connection ---------------------------------------------------------------------------------

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def run(self, retry_s: float = 0.05, retry_max_s: float = 1.0) -> None:
        delay = retry_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, retry_max_s)
                continue
            delay = retry_s
            try:
                await self._session(reader, writer)
            except (ConnectionError, ValueError, asyncio.IncompleteReadError) as err:
                log.warning("activator control connection failed; reconnecting", extra={"error": repr(err)})
            finally:
                self._disconnected(writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        if self._key is not None:
            writer.write(_line({"op": "key", "key": self._key}))
        for message in list(self._revisions.values()):
            writer.write(_line(message))
        self._connected.set()
        while line := await reader.readline():
            message = json.loads(line)
            op = message.get("op")
            if op in ("hello", "stats"):
                self._stats = {r: RevisionStats(*counts) for r, counts in message["revisions"].items()}
            elif op == "wake":
                revision = message["revision"]
                stats = self._stats.get(revision)
                self._stats[revision] = RevisionStats(int(message["held"]), stats.queued if stats else 0,
                                                      stats.requests_total if stats else 0)
                self.on_demand(revision)
            elif op == "reply":
                future = self._replies.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message["value"])

    def _disconnected(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:
            self._writer = None
            self._connected.clear()
        writer.close()
        for future in self._replies.values():
            if not future.done():
                future.set_result(None)
        self._replies.clear()

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(_line(message))

    async def _ask(self, message: dict[str, Any]) -> Any:
        if self._writer is None:
            return None
        request_id = next(self._ids)
        future = self._replies[request_id] = asyncio.get_running_loop().create_future()
        self._send({**message, "id": request_id})
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            self._replies.pop(request_id, None)
