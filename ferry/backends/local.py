"""Run each revision's instances as local processes: the no-Kubernetes backend.

One supervisor task per instance starts the process, probes it until ready, and restarts it with backoff
when it dies. Stopping is separate and ordered the way Knative does it: leave the endpoints, let the
gateways drain, SIGTERM, and SIGKILL only after a grace period. Every process gets its own session (so a
Ctrl-C at ferry's terminal does not hit it directly) and, through setpriv, a parent-death SIGKILL (so even a
SIGKILLed ferry leaves no orphan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from ferry.backends.base import (
    DrainHook,
    Endpoint,
    EndpointsChanged,
    InstanceCounts,
    InstanceInfo,
    Workload,
)
from ferry.backends.connections import connected_clients

log = logging.getLogger("ferry.backends.local")

SETPRIV = "/usr/bin/setpriv"
PROBE_TIMEOUT_S = 0.3  # one probe; a healthy local app answers in well under a millisecond
LOG_TAIL_BYTES = 4096
LOG_TAIL_LINES = 20


class _Instance:
    def __init__(self, host: str, index: int, log_path: Path) -> None:
        self.host = host
        self.index = index  # smallest free number: names the log file, reused so churn does not pile up files
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.started_at = 0.0
        self.ready = False
        self.ready_since: float | None = None
        self.announced = False  # was it ever in the published endpoints (since its last start)?
        self.stopping = False
        self.restarts = 0
        self.supervisor: asyncio.Task[None] | None = None
        self.stopper: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> Endpoint | None:
        return None if self.port is None else Endpoint(self.host, self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class _Revision:
    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.instances: list[_Instance] = []  # in start order: the newest is last
        self.published: tuple[Endpoint, ...] = ()

    @property
    def name(self) -> str:
        return self.workload.revision


class LocalProcessBackend:
    """The Backend protocol (ferry.backends.base) on local processes."""

    def __init__(
        self,
        on_endpoints: EndpointsChanged,
        *,
        drain: DrainHook | None = None,
        log_dir: Path,
        host: str = "127.0.0.1",
        probe_interval: float = 0.01,  # until first ready: a cold start waits on this
        stop_grace_s: float = 10.0,
        liveness_interval: float = 1.0,
        liveness_failures: int = 3,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        backoff_reset_s: float = 10.0,
    ) -> None:
        self._on_endpoints = on_endpoints
        self._drain = drain
        self._log_dir = Path(log_dir)
        self._host = host
        self._probe_interval = probe_interval
        self._stop_grace_s = stop_grace_s
        self._liveness_interval = liveness_interval
        self._liveness_failures = liveness_failures
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_reset_s = backoff_reset_s
        self._setpriv = SETPRIV if os.access(SETPRIV, os.X_OK) else None
        self._revisions: dict[str, _Revision] = {}
        self._started: dict[str, int] = {}  # processes spawned per revision, across scale to zero and back
        self._closed = False

    # ---- Backend protocol ---------------------------------------------------------------------------

    async def scale(self, workload: Workload, instances: int) -> None:
        """Start or stop instances so that `instances` of them run; scale-down drains in the background."""
        if self._closed:
            raise RuntimeError("backend is closed")
        if instances < 0:
            raise ValueError(f"instances must be >= 0, got {instances}")
        rev = self._revisions.get(workload.revision)
        if rev is None:
            if instances == 0:
                return
            rev = self._revisions[workload.revision] = _Revision(workload)
        rev.workload = workload  # new instances use the latest template given
        active = [i for i in rev.instances if not i.stopping]
        if len(active) < instances:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            for _ in range(instances - len(active)):
                self._start_instance(rev)
        elif len(active) > instances:
            # Not-ready instances first (they serve nothing), then the newest (least warm).
            by_preference = sorted(active, key=lambda i: (i.ready, -rev.instances.index(i)))
            self._begin_stop(rev, by_preference[: len(active) - instances])

    def endpoints(self, revision: str) -> tuple[Endpoint, ...]:
        rev = self._revisions.get(revision)
        return rev.published if rev else ()

    def counts(self, revision: str) -> InstanceCounts:
        """ready = published endpoints; total = instances not being stopped (starting, ready or restarting)."""
        rev = self._revisions.get(revision)
        started = self._started.get(revision, 0)
        if rev is None:
            return InstanceCounts(ready=0, total=0, started=started)
        return InstanceCounts(ready=len(rev.published), total=sum(not i.stopping for i in rev.instances), started=started)

    async def stop(self, revision: str) -> None:
        """Stop every instance of the revision and wait until all have exited (drains included)."""
        self._started.pop(revision, None)
        rev = self._revisions.get(revision)
        if rev is None:
            return
        self._begin_stop(rev, [i for i in rev.instances if not i.stopping])
        stoppers = [i.stopper for i in rev.instances if i.stopper is not None]
        if stoppers:
            await asyncio.wait(stoppers)  # not gather: a cancelled caller must not cancel the stops

    async def aclose(self) -> None:
        """Stop everything concurrently; if cancelled midway, SIGKILL whatever is left before returning."""
        self._closed = True
        try:
            for rev in list(self._revisions.values()):
                self._begin_stop(rev, [i for i in rev.instances if not i.stopping])
            stoppers = [i.stopper for i in self._all_instances() if i.stopper is not None]
            if stoppers:
                await asyncio.wait(stoppers)
        finally:
            await self._kill_all()

    # ---- extras -------------------------------------------------------------------------------------

    def instances(self, revision: str) -> tuple[InstanceInfo, ...]:
        """Every instance of the revision (including stopping ones), for `ferry status` and tests."""
        rev = self._revisions.get(revision)
        if rev is None:
            return ()
        return tuple(
            InstanceInfo(
                index=i.index,
                pid=i.proc.pid if i.alive else None,
                alive=i.alive,
                endpoint=i.endpoint,
                ready=i.ready and not i.stopping,
                stopping=i.stopping,
                restarts=i.restarts,
                log_path=i.log_path,
            )
            for i in rev.instances
        )

    # ---- starting and supervising -------------------------------------------------------------------

    def _start_instance(self, rev: _Revision) -> None:
        used = {i.index for i in rev.instances}
        index = next(n for n in range(1, len(used) + 2) if n not in used)
        inst = _Instance(self._host, index, self._log_dir / f"{rev.name}-{index}.log")
        rev.instances.append(inst)
        inst.supervisor = asyncio.create_task(self._supervise(rev, inst), name=f"ferry-supervise-{rev.name}-{index}")

    async def _supervise(self, rev: _Revision, inst: _Instance) -> None:
        """Keep one instance running: start, probe, and on an unexpected exit restart with backoff."""
        loop = asyncio.get_running_loop()
        delay = self._backoff_initial_s
        while True:
            try:
                proc = await self._spawn(rev.workload, inst)
                self._started[rev.name] = self._started.get(rev.name, 0) + 1
            except OSError as e:
                log.warning(
                    "instance failed to start",
                    extra={"revision": rev.name, "index": inst.index, "error": str(e), "retry_in_s": round(delay, 1)},
                )
            else:
                prober = asyncio.create_task(self._probe_loop(rev, inst, proc), name=f"ferry-probe-{rev.name}-{inst.index}")
                try:
                    code = await proc.wait()
                finally:
                    prober.cancel()
                    await asyncio.wait([prober])
                if inst.stopping:  # the stopper owns it from here (defensive: it cancels us first)
                    return
                stayed_ready = inst.ready_since is not None and loop.time() - inst.ready_since >= self._backoff_reset_s
                inst.ready, inst.ready_since = False, None
                self._publish(rev)  # out of the endpoints before anything else
                _signal_group(proc.pid, signal.SIGKILL)  # children it left behind
                if stayed_ready:
                    delay = self._backoff_initial_s
                tail = _tail(inst.log_path)
                log.warning(
                    "instance exited unexpectedly; its log ends:\n%s",
                    tail,
                    extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "exit_code": code,
                           "restart_in_s": round(delay, 1),
                           "log_tail": tail},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
            inst.restarts += 1

    async def _spawn(self, wl: Workload, inst: _Instance) -> asyncio.subprocess.Process:
        env = {**os.environ, **wl.env}
        argv = [_resolve(wl, env.get("PATH")), *wl.command[1:]]
        if self._setpriv:
            argv = [self._setpriv, "--pdeathsig", "KILL", "--", *argv]
        port = _free_port(self._host)
        env.update(PORT=str(port), K_SERVICE=wl.service, K_CONFIGURATION=wl.service, K_REVISION=wl.revision)
        with open(inst.log_path, "ab") as logf:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            logf.write(f"--- ferry: {stamp} starting {wl.revision} instance {inst.index} on port {port}\n".encode())
            logf.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=wl.cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True,
            )
        inst.proc, inst.port = proc, port
        inst.started_at = asyncio.get_running_loop().time()
        inst.announced = False
        log.info(
            "instance started",
            extra={"revision": wl.revision, "index": inst.index, "pid": proc.pid, "port": port},
        )
        return proc

    async def _probe_loop(self, rev: _Revision, inst: _Instance, proc: asyncio.subprocess.Process) -> None:
        """Fast probes until ready (cold starts matter), then slow ones; 3 misses in a row take it out."""
        loop = asyncio.get_running_loop()
        path, port = rev.workload.readiness_path, inst.port
        assert port is not None
        while not await self._probe(port, path):
            await asyncio.sleep(self._probe_interval)
        self._set_ready(rev, inst, True)
        log.info(
            "instance ready",
            extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "port": port,
                   "after_s": round(loop.time() - inst.started_at, 3)},
        )
        failures = 0
        while True:
            await asyncio.sleep(self._liveness_interval)
            if await self._probe(port, path):
                failures = 0
                if not inst.ready:
                    self._set_ready(rev, inst, True)
                    log.info("instance ready again",
                             extra={"revision": rev.name, "index": inst.index, "pid": proc.pid})
            else:
                failures += 1
                if failures == self._liveness_failures and inst.ready:
                    self._set_ready(rev, inst, False)
                    log.warning(
                        "instance failing probes, out of endpoints",
                        extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "failures": failures},
                    )

    async def _probe(self, port: int, path: str | None) -> bool:
        """HTTP GET path expecting 200, or a bare TCP connect when there is no path."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self._host, port)
                try:
                    if path is None:
                        return True
                    writer.write(
                        f"GET {path} HTTP/1.1\r\nHost: {self._host}:{port}\r\nUser-Agent: ferry-probe\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    status = (await reader.readline()).split()
                    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError):
            return False

    def _set_ready(self, rev: _Revision, inst: _Instance, ready: bool) -> None:
        inst.ready = ready
        inst.ready_since = asyncio.get_running_loop().time() if ready else None
        self._publish(rev)

    def _publish(self, rev: _Revision) -> None:
        """Report the ready endpoints if they changed; a failing callback must not kill a supervisor."""
        ready = [i for i in rev.instances if i.ready and not i.stopping and i.port is not None]
        for i in ready:
            i.announced = True
        eps = tuple(Endpoint(i.host, i.port) for i in ready)
        if eps == rev.published:
            return
        rev.published = eps
        try:
            self._on_endpoints(rev.name, eps)
        except Exception:
            log.exception("on_endpoints callback failed: revision=%s", rev.name)

    # ---- stopping -----------------------------------------------------------------------------------

    def _begin_stop(self, rev: _Revision, victims: list[_Instance]) -> None:
        """Take the victims out of the endpoints right now (one callback), then drain+stop each in a task."""
        victims = [i for i in victims if not i.stopping]
        if not victims:
            return
        for inst in victims:
            inst.stopping = True
        self._publish(rev)
        for inst in victims:
            inst.stopper = asyncio.create_task(self._stop_instance(rev, inst), name=f"ferry-stop-{rev.name}-{inst.index}")

    async def _stop_instance(self, rev: _Revision, inst: _Instance) -> None:
        try:
            if inst.supervisor is not None:
                inst.supervisor.cancel()
                await asyncio.wait([inst.supervisor])
            proc, ep = inst.proc, inst.endpoint
            if proc is None or proc.returncode is not None:
                return
            if self._drain is not None and inst.announced and ep is not None:
                try:
                    async with asyncio.timeout(rev.workload.timeout_s):
                        await self._drain(rev.name, ep)
                        await self._wait_for_clients_to_leave(ep.port)
                except TimeoutError:
                    log.warning("drain timed out", extra={"revision": rev.name, "endpoint": str(ep),
                                                     "after_s": rev.workload.timeout_s})
                except Exception:
                    log.exception("drain hook failed", extra={"revision": rev.name, "endpoint": str(ep)})
            await self._terminate(rev, inst, proc)
        except Exception:
            log.exception("stopping instance failed: revision=%s index=%d", rev.name, inst.index)
        finally:
            if inst.proc is not None and inst.proc.returncode is None:  # cancelled or failed midway
                _signal_group(inst.proc.pid, signal.SIGKILL)
            else:
                rev.instances.remove(inst)
                if not rev.instances and self._revisions.get(rev.name) is rev:
                    del self._revisions[rev.name]

    async def _wait_for_clients_to_leave(self, port: int) -> None:
        """Gateways finish what they sent the instance, then close their connections to it."""
        while connected_clients(port):
            await asyncio.sleep(self._probe_interval)

    async def _terminate(self, rev: _Revision, inst: _Instance, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, SIGKILL it if it outlives the grace period."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), self._stop_grace_s)
        except TimeoutError:
            log.warning(
                "instance ignored SIGTERM, killing it",
                extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "grace_s": self._stop_grace_s},
            )
            _signal_group(proc.pid, signal.SIGKILL)
            code = await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # anything it forked and left behind
        log.info(
            "instance stopped",
            extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "exit_code": code},
        )

    def _all_instances(self) -> list[_Instance]:
        return [i for rev in self._revisions.values() for i in rev.instances]

    async def _kill_all(self) -> None:
        """Last resort of aclose: cancel every task, SIGKILL every group, and reap (bounded)."""
        insts = self._all_instances()
        tasks = [t for i in insts for t in (i.supervisor, i.stopper) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        procs = [i.proc for i in insts if i.proc is not None and i.proc.returncode is None]
        for p in procs:
            _signal_group(p.pid, signal.SIGKILL)
        reaps = [asyncio.ensure_future(p.wait()) for p in procs]
        try:
            if tasks or reaps:
                await asyncio.wait(tasks + reaps, timeout=5.0)
        finally:
            for r in reaps:
                r.cancel()
            self._revisions.clear()


def _resolve(wl: Workload, path_env: str | None) -> str:
    """command[0] with a slash is relative to the workload's folder; a bare name is looked up on PATH."""
    if not wl.command:
        raise FileNotFoundError(f"revision {wl.revision}: empty command")
    exe = wl.command[0]
    if "/" in exe:
        resolved: str | None = str(Path(wl.cwd) / exe)
        if not os.access(resolved, os.X_OK):
            raise FileNotFoundError(f"{resolved}: not an executable file")
    else:
        resolved = shutil.which(exe, path=path_env)
        if resolved is None:
            raise FileNotFoundError(f"{exe}: not found on PATH")
    return resolved


def _free_port(host: str) -> int:
    """A port the kernel just considered free; if the app loses the race it crashes and retries elsewhere."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-LOG_TAIL_LINES:])
