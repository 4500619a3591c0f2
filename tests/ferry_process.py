"""Run `ferry up` as a real subprocess on free loopback ports, and talk to it like a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import aiohttp

from ferry.dataplane import Register
from ferry.envoy.admin import EnvoyAdmin
from ferry.xds.resources import ACTIVATOR_KEY_HEADER

from .helpers import free_port, wait_until

HELLO_APP = Path(__file__).resolve().parent.parent / "examples" / "hello" / "app.py"


def ferry_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The `ferry` command as a user types it, in `cwd`, with `env` added to this process's environment (blocking:
    wrap it in asyncio.to_thread from a test's event loop)."""
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, **(env or {})})


def hello(message: str = "hi", *, concurrency: int | None = None, timeout: str | None = None, scale: str | None = None,
          extra: tuple[str, ...] = (), **env) -> str:
    """Service `hello` running the example app, for write_routes: MESSAGE and `env` in its environment, a readiness
    probe, the template fields given, and `extra` lines at the service's level (traffic:, rollout:)."""
    env_yaml = "".join(f", {k}: '{v}'" for k, v in env.items())
    fields = [f"command: [{sys.executable}, {HELLO_APP}]", f"env: {{MESSAGE: {message}{env_yaml}}}",
              "readiness: {path: /healthz}"]
    fields += [f"{name}: {value}" for name, value in
               (("concurrency", concurrency), ("timeout", timeout), ("scale", scale)) if value is not None]
    return ("\n    hello:\n      template:\n" + "".join(f"        {field}\n" for field in fields)
            + "".join(f"      {line}\n" for line in extra if line))


class FerryProcess:
    def __init__(self, workdir: Path, *, envoy: bool = True, delta: bool = True, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.workdir = workdir
        self.routes = workdir / "routes.yaml"
        self.gateway_port = free_port()
        self.api_port = free_port()
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.activator_port = free_port()
        self.envoy = envoy
        self.delta = delta
        self.extra = extra
        # ferry's own environment; where `ferry up` notes its token file for the CLI: this test's own
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(workdir / ".runtime"), **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / "ferry.log"

    @property
    def api(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def ca(self) -> Path | None:
        """With --xds-ca (mutual TLS), the API is HTTPS with a certificate of this CA."""
        return Path(self.extra[self.extra.index("--xds-ca") + 1]) if "--xds-ca" in self.extra else None

    def session(self, **kwargs) -> aiohttp.ClientSession:
        """A client of this ferry's API: its token, and its CA when it serves HTTPS."""
        ssl_context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        return aiohttp.ClientSession(headers=self.headers, connector=aiohttp.TCPConnector(ssl=ssl_context), **kwargs)

    @property
    def state_folder(self) -> Path:
        """Where this ferry keeps its state and its data plane's register: that of --state (a state.db), else .ferry
        beside the routes file."""
        if "--state" in self.extra:
            return Path(self.extra[self.extra.index("--state") + 1]).parent
        return self.routes.parent / ".ferry"

    @property
    def token_file(self) -> Path:
        if "--token-file" in self.extra:  # replicas share one (a Secret, in Kubernetes)
            return Path(self.extra[self.extra.index("--token-file") + 1])
        return self.state_folder / "api-token"

    @property
    def headers(self) -> dict[str, str]:
        """What ferry's API wants of a client: its token (ferry made it at start)."""
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    @property
    def activator_key(self) -> dict[str, str]:
        """What a gateway adds to requests for ferry's activator (ferry made the key at start)."""
        key = (self.state_folder / "activator-key").read_text().strip()
        return {ACTIVATOR_KEY_HEADER: key}

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def write_routes(self, services_yaml: str, *, gateway: str = "") -> None:
        """Write routes.yaml atomically (as editors do), with this harness's gateway port and `gateway` lines
        (e.g. "tagHeader: true", or a nested block such as tls:, dedented) in the gateway block."""
        lines = textwrap.dedent(gateway).splitlines()
        extra = "".join(f"  {line.rstrip()}\n" for line in lines if line.strip())
        text = f"gateway:\n  listen: 127.0.0.1:{self.gateway_port}\n  domain: localhost\n{extra}services:\n"
        text += textwrap.indent(textwrap.dedent(services_yaml).strip("\n"), "  ") + "\n"
        tmp = self.routes.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.routes)

    async def start(self) -> None:
        argv = [
            sys.executable, "-m", "ferry", "up", str(self.routes),
            "--api", f"127.0.0.1:{self.api_port}", "--xds", f"127.0.0.1:{self.xds_port}",
            "--admin", f"127.0.0.1:{self.admin_port}", "--activator", f"127.0.0.1:{self.activator_port}",
            "--cluster-linger", "2", "--test-hooks", *self.extra,
        ]
        if not self.envoy:
            argv.append("--no-envoy")
        if not self.delta:
            argv.append("--sotw")
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, cwd=self.workdir, env=self.env
            )
        await wait_until(self._api_up, 30, f"ferry API on {self.api}; log:\n{self.log_text}")

    @property
    def log_text(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    async def _api_up(self) -> bool:
        if self.proc.returncode is not None:
            raise AssertionError(f"ferry exited with {self.proc.returncode}:\n{self.log_text}")
        try:
            await self.status()
            return True
        except (aiohttp.ClientError, OSError):
            return False

    async def status(self) -> dict:
        return await self.get_json("/status")

    async def get_json(self, path: str) -> dict:
        async with self.session() as session:
            async with session.get(f"{self.api}{path}", timeout=aiohttp.ClientTimeout(total=5)) as response:
                return await response.json()

    async def post(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        async with self.session() as session:
            async with session.post(f"{self.api}{path}", json=body if body is not None else {}) as response:
                return response.status, await response.json()

    async def converged(self, gateways: int = 1) -> bool:
        """Every service routed as the file says, and every gateway running the current config."""
        try:
            status = await self.status()
        except aiohttp.ClientConnectorError:
            if self.proc.returncode is not None:
                raise AssertionError(f"ferry exited with {self.proc.returncode}:\n{self.log_text}") from None
            raise AssertionError(f"ferry's API stopped answering; log:\n{self.log_text}") from None
        if "services" not in status:
            return False  # e.g. 503 from a replica that does not lead yet
        return (
            all(s["routed"] for s in status["services"].values())
            and sum(1 for g in status["gateways"] if g["connected"]) >= gateways
            and all(g["in_sync"] for g in status["gateways"] if g["connected"])
        )

    async def wait_converged(self, timeout: float = 30, gateways: int = 1) -> dict:
        await wait_until(lambda: self.converged(gateways), timeout, f"ferry to converge; log:\n{self.log_text}")
        return await self.status()

    async def stop(self) -> None:
        """SIGTERM ferry, which stops its data plane; if ferry died (a test killed it), `ferry down` stops what it
        left running."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        where = ("--state", str(self.state_folder)) if "--state" in self.extra else (str(self.routes),)
        down = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ferry", "down", *where, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        await down.wait()

    def dataplane(self) -> dict[str, int]:
        """What ferry recorded of its data plane: "<kind> <key>" -> pid."""
        register = Register(self.state_folder)
        try:
            return {f"{e.kind} {e.key}": e.proc.pid for e in register.entries()}
        finally:
            register.close()

    async def envoy_updates(self) -> dict[str, int]:
        """Configs the local Envoy accepted or refused, per xDS type (update_attempt also counts reconnections)."""
        return await update_counts(EnvoyAdmin("127.0.0.1", self.admin_port))

    async def kill(self) -> None:
        self.proc.kill()
        await self.proc.wait()


async def get(session: aiohttp.ClientSession, url: str, host: str, **headers) -> tuple[int, str]:
    async with session.get(url, headers={"Host": host, **headers}) as response:
        return response.status, response.headers.get("x-revision", "")


# Every config ferry pushes, by the counter Envoy keeps for it: CDS, LDS, EDS (per cluster), RDS (per route table)
# and SRDS (the host scopes, `scoped_rds.ferry_hosts`). update_attempt and update_failure also count reconnections.
UPDATE_COUNTERS = (r"^(cluster_manager\.cds|listener_manager\.lds|cluster\.[^.]+|http\.[^.]+\.(rds|scoped_rds)\.[^.]+)"
                   r"\.update_(success|rejected)$")


async def update_counts(admin: EnvoyAdmin) -> dict[str, int]:
    """A gateway's accepted and refused configs per xDS resource: unchanged across a resync means nothing was
    re-sent. EDS counters are per cluster, which Envoy keeps only with all its stats (routes.yaml `gateway.stats:
    all`, or BootstrapOptions(all_stats=True)): without them this fails rather than compare less than it says."""
    _, body = await admin.get(f"/stats?filter={urllib.parse.quote(UPDATE_COUNTERS)}")
    counts = {name: int(value) for name, value in (line.split(": ") for line in body.decode().strip().splitlines())}
    assert {"cluster_manager.cds.update_success", "listener_manager.lds.update_success",
            "http.ferry.rds.hello.update_success", "http.ferry.scoped_rds.ferry_hosts.update_success"} <= set(counts), \
        counts
    eds = [n for name, n in counts.items()  # cluster.ferry_xds is static: it never counts an update
           if name.startswith("cluster.") and not name.startswith("cluster.ferry_") and name.endswith("update_success")]
    assert any(eds), f"no EDS update counted (does this Envoy keep all its stats?): {counts}"
    return counts
