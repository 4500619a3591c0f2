"""The activator as its own process (`ferry activator`): its main, and how `ferry up` starts or adopts it.

The process holds requests for revisions at zero and proxies them, whether or not ferry runs: a request that
arrives while ferry is down waits (bounded queue, revision timeout) and is answered once a ferry is back and has
woken the revision. It uses its own core, not the control plane's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from ..dataplane import ACTIVATOR, Register, Running, Supervised, child_env
from .control import ActivatorClient, ControlServer
from .server import SHUTDOWN_GRACE_S, Activator

log = logging.getLogger("ferry.activator")

READY_TIMEOUT_S = 15.0

SPEAKS = "http1+h2c"
"""Part of the adoption digest: an activator recorded by a ferry whose activator did not speak h2c yet (same argv) is
replaced, not adopted, since h2c revisions may now be at zero behind it."""


async def serve(host: str, port: int, control: Path, queue_limit: int, stop: asyncio.Event,
                key: str | None = None) -> None:
    """The activator process: serve on host:port and on the control socket until `stop`."""
    registry = CollectorRegistry()
    server: ControlServer | None = None
    activator = Activator(host=host, port=port, queue_limit=queue_limit, registry=registry, key=key,
                          on_demand=lambda revision: server.wake(revision) if server else None)
    server = ControlServer(activator, control, metrics=lambda: generate_latest(registry))
    try:
        await activator.start()
    except OSError as err:
        raise OSError(f"cannot serve the activator on {host}:{port}: {err.strerror or err} "
                      "(use --activator to move it)") from None
    try:
        await server.start()
        log.info("activator ready", extra={"address": f"{host}:{activator.port}", "control": str(control)})
        await stop.wait()
    finally:
        await server.aclose()
        await activator.aclose()


def main(host: str, port: int, control: Path, queue_limit: int, key_file: Path | None) -> int:
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        key = key_file.read_text().strip() if key_file is not None else None
        await serve(host, port, control, queue_limit, stop, key)

    try:
        asyncio.run(run())
    except OSError as err:
        print(f"ferry activator: {err}", file=sys.stderr)
        return 1
    return 0


class ActivatorProcess:
    """`ferry up`'s activator: adopted if the one it recorded still runs with the same settings, else started;
    restarted when it exits. `client` is what the controller talks to (reconnecting by itself)."""

    def __init__(self, host: str, port: int, workdir: Path, *, queue_limit: int, register: Register | None,
                 key_file: Path | None = None, key: str | None = None,
                 on_demand: Callable[[str], None] = lambda revision: None):
        self.socket = workdir / "activator.sock"
        argv = [sys.executable, "-m", "ferry", "activator", "--listen", f"{host}:{port}",
                "--control", str(self.socket), "--queue-limit", str(queue_limit)]
        if key_file is not None:
            argv += ["--key-file", str(key_file)]  # the file, not the key: argv is visible to every user
        self.client = ActivatorClient(self.socket, host, port, on_demand=on_demand, key=key)
        self._process = Supervised(
            ACTIVATOR, "activator", argv, digest=hashlib.sha256("\0".join([*argv, SPEAKS]).encode()).hexdigest(),
            log_path=workdir / "activator.log", ready=self._connected, register=register,
            env={**child_env("PYTHONPATH", "VIRTUAL_ENV"), "PYTHONUNBUFFERED": "1"})
        self._connection: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def adopted(self) -> bool:
        return self._process.adopted

    async def start(self) -> None:
        if self._connection is None:
            self._connection = asyncio.get_running_loop().create_task(self.client.run(), name="activator control")
        await self._process.start()

    async def _connected(self, running: Running) -> None:
        waiting = asyncio.ensure_future(self.client.wait_connected(READY_TIMEOUT_S))
        exited = asyncio.ensure_future(running.wait())
        try:
            await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if not waiting.done():
            waiting.cancel()
            raise RuntimeError(f"the activator exited: {self._process.log_path.read_text()[-2000:].strip()}")
        waiting.result()  # TimeoutError if it never answered

    async def supervise(self) -> None:
        await self._process.supervise()

    async def stop(self) -> None:
        """Queued requests get 503, proxied ones finish (up to its grace period), then it exits."""
        await self._process.stop(SHUTDOWN_GRACE_S + 2)
        if self._connection is not None:
            self._connection.cancel()
            await asyncio.gather(self._connection, return_exceptions=True)
            self._connection = None
