"""Run each revision's instances as local processes: the no-Kubernetes backend.

One supervisor task per instance starts the process, probes it until ready, and restarts it with backoff
when it dies. Stopping is separate and ordered the way Knative does it: leave the endpoints, let the
gateways drain, SIGTERM, and SIGKILL only after a grace period. Every process gets its own session, so a
Ctrl-C at ferry's terminal does not hit it, and ferry's death does not end it: instances keep serving while
ferry is down. With a register (ferry/dataplane.py), every instance and each revision's scale are recorded,
and a restarted ferry adopts the instances it finds still running (`recover`) instead of starting new ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ..dataplane import INSTANCE, Register, Running, child_env, is_running, signal_group, spawn, tail
from ..statedir import open_private
from .base import Durable, DrainHook, Endpoint, EndpointsChanged, InstanceCounts, InstanceInfo, Workload
from .connections import connected_clients

log = logging.getLogger("ferry.backends.local")


async def _http2_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, path: str) -> bool:
    """An HTTP/2 GET with prior knowledge (h2c) on an open connection: True if it is answered 200."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority.encode()),
                          (b":path", path.encode()), (b"user-agent", b"ferry-probe")], end_stream=True)
    writer.write(conn.data_to_send())
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                return dict(event.headers).get(b":status") == b"200"
            if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return False
        writer.write(conn.data_to_send())  # SETTINGS acknowledged, windows
    return False

PROBE_TIMEOUT_S = 0.3  # one probe; a healthy local app answers in well under a millisecond
ADOPTION_PROBES = 5  # an adopted instance is ready if one of these probes (a probe interval apart) passes


class _Instance:
    def __init__(self, host: str, revision: str, index: int, log_path: Path) -> None:
        self.host = host
        self.revision = revision
        self.index = index  # smallest free number: names the log file, reused so churn does not pile up files
        self.log_path = log_path
        self.proc: Running | None = None
        self.port: int | None = None
        self.started_at = 0.0
        self.ready = False
        self.ready_since: float | None = None
        self.announced = False  # was it ever in the published endpoints (since its last start)?
        self.stopping = False
        self.restarts = 0
        self.supervisor: asyncio.Task[None] | None = None
        self.stopper: asyncio.Task[None] | None = None
        self.error: str | None = None  # why it could not be started, for status
        self.digest: str | None = None  # what it runs (workload_digest)
        self.readiness: str | None = None  # its readiness path
        self.http2 = False  # its readiness GET is HTTP/2 with prior knowledge (an h2c revision's)

    @property
    def endpoint(self) -> Endpoint | None:
        return None if self.port is None else Endpoint(self.host, self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    @property
    def key(self) -> str:
        return f"{self.revision}/{self.index}"


class _Revision:
    def __init__(self, name: str, workload: Workload | None) -> None:
        self.name = name
        self.workload = workload  # None: adopted instances no apply has claimed yet
        self.instances: list[_Instance] = []  # in start order: the newest is last
        self.published: tuple[Endpoint, ...] = ()


def workload_digest(workload: Workload) -> str:
    """What an instance runs: an adopted one serves its revision only if it runs the same."""
    text = repr((workload.command, str(workload.cwd), sorted(workload.env.items()), workload.readiness_path))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class LocalProcessBackend(Durable):
    """The Backend protocol (ferry.backends.base) on local processes; Durable, as instances outlive ferry."""

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
        register: Register | None = None,
        exempt_pids: Callable[[], Iterable[int]] = tuple,
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
        self._register = register
        self._exempt_pids = exempt_pids  # processes whose connections to an instance are no drain signal (the activator)
        self._scales: dict[str, int] = {}  # the last ferry's decisions, as recorded (recover)
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
        self._record_scale(workload.revision, instances)
        rev = self._revisions.get(workload.revision)
        if rev is None:
            if instances == 0:
                return
            rev = self._revisions[workload.revision] = _Revision(workload.revision, workload)
        if rev.workload is None:
            self._claim(rev, workload)
        rev.workload = workload  # new instances use the latest template given
        active = [i for i in rev.instances if not i.stopping]
        if len(active) < instances:
            self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        self._record_scale(revision, None)
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

    # ---- Durable: what outlives ferry ---------------------------------------------------------------

    async def recover(self, store: object = None) -> int:
        """Adopt the instances the last ferry recorded that still run (the same process: pid, start time and
        command line), each probed so that those ready are served at once; forget the others. Returns how many
        were adopted. The revision history needs no sharing here: it is this folder's SQLite."""
        if self._register is None:
            return 0
        self._scales = self._register.scales()
        live = []
        for entry in self._register.entries(INSTANCE):
            if is_running(entry.proc):
                live.append(entry)
            else:
                self._register.remove(INSTANCE, entry.key)
        ready = await asyncio.gather(*(self._probe_adopted(e.data["port"], e.data.get("readiness"),
                                                           bool(e.data.get("http2"))) for e in live))
        now = asyncio.get_running_loop().time()
        for entry, is_ready in zip(live, ready, strict=True):
            name = entry.data["revision"]
            rev = self._revisions.get(name) or self._revisions.setdefault(name, _Revision(name, None))
            inst = _Instance(self._host, name, int(entry.data["index"]), Path(entry.data["log"]))
            inst.proc, inst.port, inst.announced = Running(entry.proc), int(entry.data["port"]), True
            inst.ready, inst.ready_since, inst.started_at = is_ready, now if is_ready else None, now
            inst.digest, inst.readiness = entry.data["digest"], entry.data.get("readiness")
            inst.http2 = bool(entry.data.get("http2"))
            rev.instances.append(inst)
            inst.supervisor = asyncio.create_task(self._supervise(rev, inst), name=f"ferry-supervise-{entry.key}")
        for rev in self._revisions.values():
            rev.published = tuple(i.endpoint for i in rev.instances if i.ready)
        if live:
            log.info("instances adopted", extra={"instances": len(live), "ready": sum(ready)})
        return len(live)

    def replicas(self, revision: str) -> int | None:
        """The instances the last ferry decided the revision should run (None: it did not run it)."""
        return self._scales.get(revision)

    async def collect_garbage(self, keep: set[str]) -> list[str]:
        """Stop (drained, as any stop) the adopted instances of revisions no apply claimed: once the applies after
        a restart are done, every revision wanted has been scaled (claimed). Nothing else is kept here, so `keep`
        (which stopped revisions to retain) does not apply."""
        gone = [name for name, rev in self._revisions.items() if rev.workload is None]
        for name in gone:
            await self.stop(name)
        return gone

    def _claim(self, rev: _Revision, workload: Workload) -> None:
        """The first scale() of a revision with adopted instances: those that run another template stop."""
        digest = workload_digest(workload)
        self._begin_stop(rev, [i for i in rev.instances if i.digest != digest])

    async def _probe_adopted(self, port: int, path: str | None, http2: bool = False) -> bool:
        """Ready unless it plainly is not (refuses connections, or answers not 200): it was serving, and a busy
        machine may make its probes time out; the liveness probes take it out if it keeps not answering."""
        for _ in range(ADOPTION_PROBES):
            if await self._probe(int(port), path, timeouts_pass=True, http2=http2):
                return True
            await asyncio.sleep(self._probe_interval)
        return False

    def _record_scale(self, revision: str, instances: int | None) -> None:
        if self._register is not None and self._scales.get(revision, -1) != instances:
            self._register.set_scale(revision, instances)
            if instances is None:
                self._scales.pop(revision, None)
            else:
                self._scales[revision] = instances

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
                error=i.error,
            )
            for i in rev.instances
        )

    # ---- starting and supervising -------------------------------------------------------------------

    def _start_instance(self, rev: _Revision) -> None:
        used = {i.index for i in rev.instances}
        index = next(n for n in range(1, len(used) + 2) if n not in used)
        inst = _Instance(self._host, rev.name, index, self._log_dir / f"{rev.name}-{index}.log")
        rev.instances.append(inst)
        inst.supervisor = asyncio.create_task(self._supervise(rev, inst), name=f"ferry-supervise-{rev.name}-{index}")

    async def _supervise(self, rev: _Revision, inst: _Instance) -> None:
        """Keep one instance running: start (unless it was adopted running), probe, and on an unexpected exit
        restart with backoff, or let it go if it was adopted and no apply has claimed its revision."""
        loop = asyncio.get_running_loop()
        delay = self._backoff_initial_s
        while True:
            proc = inst.proc if inst.alive else None
            if proc is None and rev.workload is not None:
                try:
                    proc = await self._spawn(rev.workload, inst)
                    self._started[rev.name] = self._started.get(rev.name, 0) + 1
                    inst.error = None
                except (OSError, ValueError) as e:  # ValueError: what the OS cannot take (a NUL byte)
                    inst.error = f"failed to start: {e}"
                    log.warning(
                        "instance failed to start",
                        extra={"revision": rev.name, "index": inst.index, "error": str(e),
                               "retry_in_s": round(delay, 1)},
                    )
            if proc is not None:
                prober = asyncio.create_task(self._probe_loop(rev, inst, proc),
                                             name=f"ferry-probe-{rev.name}-{inst.index}")
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
                signal_group(proc.pid, signal.SIGKILL)  # children it left behind
                self._forget(inst)
                if stayed_ready:
                    delay = self._backoff_initial_s
                tail_text = tail(inst.log_path)
                log.warning(
                    "instance exited unexpectedly; its log ends:\n%s",
                    tail_text,
                    extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "exit_code": code,
                           "restart_in_s": round(delay, 1), "log_tail": tail_text},
                )
                if rev.workload is None:  # adopted, and unclaimed: nothing to restart it from
                    self._remove(rev, inst)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
            inst.restarts += 1

    async def _spawn(self, wl: Workload, inst: _Instance) -> Running:
        env = {**child_env(), **wl.env}  # ferry's own environment may hold credentials: only the basics
        argv = [_resolve(wl, env.get("PATH")), *wl.command[1:]]
        port = _free_port(self._host)
        env.update(PORT=str(port), K_SERVICE=wl.service, K_CONFIGURATION=wl.service, K_REVISION=wl.revision)
        with os.fdopen(open_private(inst.log_path), "ab") as logf:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            logf.write(f"--- ferry: {stamp} starting {wl.revision} instance {inst.index} on port {port}\n".encode())
            logf.flush()
            proc = await spawn(argv, cwd=wl.cwd, env=env, stdout=logf, stderr=logf)
        inst.proc, inst.port = proc, port
        inst.digest, inst.readiness = workload_digest(wl), wl.readiness_path
        inst.http2 = wl.protocol == "h2c"
        inst.started_at = asyncio.get_running_loop().time()
        inst.announced = False
        if self._register is not None:
            self._register.put(INSTANCE, inst.key, proc.proc, revision=wl.revision, index=inst.index, port=port,
                               digest=inst.digest, readiness=inst.readiness, log=str(inst.log_path),
                               **({"http2": True} if inst.http2 else {}))
        log.info(
            "instance started",
            extra={"revision": wl.revision, "index": inst.index, "pid": proc.pid, "port": port},
        )
        return proc

    def _forget(self, inst: _Instance) -> None:
        if self._register is not None:
            self._register.remove(INSTANCE, inst.key)

    def _remove(self, rev: _Revision, inst: _Instance) -> None:
        rev.instances.remove(inst)
        if not rev.instances and self._revisions.get(rev.name) is rev:
            del self._revisions[rev.name]

    async def _probe_loop(self, rev: _Revision, inst: _Instance, proc: Running) -> None:
        """Fast probes until ready (cold starts matter), then slow ones; 3 misses in a row take it out."""
        loop = asyncio.get_running_loop()
        path, port, http2 = inst.readiness, inst.port, inst.http2
        assert port is not None
        if not inst.ready:  # an adopted instance may be ready already
            while not await self._probe(port, path, http2=http2):
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
            if await self._probe(port, path, http2=http2):
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

    async def _probe(self, port: int, path: str | None, *, timeouts_pass: bool = False, http2: bool = False) -> bool:
        """HTTP GET path expecting 200 (HTTP/2 with prior knowledge if `http2`), or a bare TCP connect when there is
        no path. A probe that times out fails, unless `timeouts_pass`."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self._host, port)
                try:
                    if path is None:
                        return True
                    if http2:
                        return await _http2_get(reader, writer, f"{self._host}:{port}", path)
                    writer.write(
                        f"GET {path} HTTP/1.1\r\nHost: {self._host}:{port}\r\nUser-Agent: ferry-probe\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    status = (await reader.readline()).split()
                    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"
                finally:
                    writer.close()
        except TimeoutError:
            return timeouts_pass
        except (OSError, ValueError, h2.exceptions.ProtocolError):
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
            if proc is None or not proc.alive:
                return
            timeout_s = rev.workload.timeout_s if rev.workload is not None else self._stop_grace_s
            if self._drain is not None and inst.announced and ep is not None:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._drain(rev.name, ep)
                        await self._wait_for_clients_to_leave(ep.port)
                except TimeoutError:
                    log.warning("drain timed out", extra={"revision": rev.name, "endpoint": str(ep),
                                                     "after_s": timeout_s})
                except Exception:
                    log.exception("drain hook failed", extra={"revision": rev.name, "endpoint": str(ep)})
            await self._terminate(rev, inst, proc)
        except Exception:
            log.exception("stopping instance failed: revision=%s index=%d", rev.name, inst.index)
        finally:
            if inst.alive:  # cancelled or failed midway
                signal_group(inst.proc.pid, signal.SIGKILL)
            else:
                self._forget(inst)
                self._remove(rev, inst)

    async def _wait_for_clients_to_leave(self, port: int) -> None:
        """Gateways finish what they sent the instance, then close their connections to it."""
        while connected_clients(port, self._exempt_pids()):
            await asyncio.sleep(self._probe_interval)

    async def _terminate(self, rev: _Revision, inst: _Instance, proc: Running) -> None:
        """SIGTERM the process group, SIGKILL it if it outlives the grace period (and what it left behind)."""
        if not await proc.terminate(self._stop_grace_s):
            log.warning(
                "instance ignored SIGTERM, killed it",
                extra={"revision": rev.name, "index": inst.index, "pid": proc.pid, "grace_s": self._stop_grace_s},
            )
        code = proc.child.returncode if proc.child is not None else None
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
        procs = [i.proc for i in insts if i.alive]
        for p in procs:
            signal_group(p.pid, signal.SIGKILL)
        reaps = [asyncio.ensure_future(p.wait()) for p in procs]
        try:
            if tasks or reaps:
                await asyncio.wait(tasks + reaps, timeout=5.0)
        finally:
            for r in reaps:
                r.cancel()
            for inst in insts:
                self._forget(inst)
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
