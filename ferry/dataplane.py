"""What outlives ferry: the processes it starts for the data plane (Envoy, the activator, revision instances),
recorded in the state folder so that a restarted ferry adopts them, and `ferry down` stops them once ferry is gone.

Docker's live-restore, for ferry's local mode: a crash of ferry's process takes no part of the data plane with it.
A record names a process by pid, start time (field 22 of /proc/<pid>/stat) and boot, so a pid the kernel has
since given to another process is never mistaken for ours (that one started later, or in another boot). The
command line is recorded too, for people and `ferry down`; it is not part of the identity, since a program may
legitimately exec another (a pyenv shim runs `bash .../pyenv exec python3`, then the real python3). Records live in SQLite (`dataplane.db` beside
state.db, WAL, private to the user): a SIGKILL at any moment leaves them consistent.

`Running` is one such process, whether this ferry started it (a child) or adopted it (its parent died).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("ferry.dataplane")

ENVOY, ACTIVATOR, INSTANCE = "envoy", "activator", "instance"  # the kinds of record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processes (
    kind       TEXT NOT NULL,      -- envoy | activator | instance
    key        TEXT NOT NULL,      -- which one: the node id, "activator", <revision>/<index>
    pid        INTEGER NOT NULL,
    start_time INTEGER NOT NULL,   -- /proc/<pid>/stat field 22: with the pid and the boot, a process's identity
    boot       TEXT NOT NULL,      -- /proc/sys/kernel/random/boot_id
    argv       TEXT NOT NULL,      -- JSON list: its command line as /proc/<pid>/cmdline read when it started
    data       TEXT NOT NULL,      -- JSON object: what adopting it needs (ports, digests, paths)
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS scales (  -- instances each revision should run, as last decided
    revision TEXT PRIMARY KEY,
    scale    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Proc:
    """A process: no other process will ever have its pid, start time and boot together."""

    pid: int
    start_time: int
    boot: str
    argv: tuple[str, ...] = ()

    def same(self, other: Proc | None) -> bool:
        return other is not None and (self.pid, self.start_time, self.boot) == (other.pid, other.start_time,
                                                                                other.boot)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


BOOT = _boot_id()


def identify(pid: int) -> Proc | None:
    """The live process `pid` (None: no such process, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": the comm may hold spaces and parens
    if fields[0] in ("Z", "X"):
        return None
    argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0")[:-1])
    return Proc(pid, int(fields[19]), BOOT, argv)


def is_running(proc: Proc) -> bool:
    return proc.same(identify(proc.pid))


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group `pid` leads (every data-plane process runs in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def exited(pid: int, poll_s: float = 0.1) -> None:
    """Until the process `pid` (not necessarily a child) has exited: a pidfd turns readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (an old kernel): poll
        while identify(pid) is not None:
            await asyncio.sleep(poll_s)
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class Running:
    """A data-plane process: a child this ferry started, or one it adopted from a ferry that died."""

    def __init__(self, proc: Proc, child: asyncio.subprocess.Process | None = None):
        self.proc = proc
        self.child = child

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        if self.child is not None:
            return self.child.returncode is None
        return is_running(self.proc)

    async def wait(self) -> int | None:
        """Until it exits; its exit code when it is our child (an adopted process's is not ours to read)."""
        if self.child is not None:
            return await self.child.wait()
        await exited(self.pid)
        return None

    async def terminate(self, grace_s: float) -> bool:
        """SIGTERM its group, SIGKILL it after `grace_s`; then SIGKILL whatever it left behind. False: it
        ignored SIGTERM."""
        signal_group(self.pid, signal.SIGTERM)
        polite = True
        try:
            await asyncio.wait_for(self.wait(), grace_s)
        except TimeoutError:
            polite = False
            signal_group(self.pid, signal.SIGKILL)
            await self.wait()
        signal_group(self.pid, signal.SIGKILL)
        return polite


# What a child process inherits of ferry's environment: nothing else (ferry's may hold credentials).
INHERITED_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME")
INHERITED_ENV_PREFIXES = ("LC_",)


def child_env(*extra: str) -> dict[str, str]:
    """The environment a child starts from: INHERITED_ENV, LC_*, and the names in `extra`, as ferry has them."""
    return {k: v for k, v in os.environ.items()
            if k in INHERITED_ENV or k in extra or k.startswith(INHERITED_ENV_PREFIXES)}


async def spawn(argv: list[str], **kwargs: Any) -> Running:
    """Start a data-plane process in its own session (a Ctrl-C at ferry's terminal does not reach it, and it
    outlives ferry); its identity is read back once it runs."""
    child = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                                                 **kwargs)
    proc = identify(child.pid) or Proc(child.pid, 0, BOOT, tuple(argv))
    return Running(proc, child)


class Entry(NamedTuple):
    kind: str
    key: str
    proc: Proc
    data: dict[str, Any]


def _private(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


class Register:
    """The data plane's records in the state folder. One ferry writes them at a time (see `lock`)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / "dataplane.db"
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # survives a crash of the process; WAL keeps it whole
        self._db.executescript(_SCHEMA)
        for suffix in ("", "-wal", "-shm"):
            _private(Path(f"{self.path}{suffix}"))

    def close(self) -> None:
        self._db.close()

    def put(self, kind: str, key: str, proc: Proc, **data: Any) -> None:
        self._db.execute(
            "INSERT INTO processes VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET"
            " pid = excluded.pid, start_time = excluded.start_time, boot = excluded.boot, argv = excluded.argv,"
            " data = excluded.data",
            (kind, key, proc.pid, proc.start_time, proc.boot, json.dumps(list(proc.argv)), json.dumps(data)))

    def remove(self, kind: str, key: str) -> None:
        self._db.execute("DELETE FROM processes WHERE kind = ? AND key = ?", (kind, key))

    def entries(self, kind: str | None = None) -> list[Entry]:
        rows = self._db.execute(
            "SELECT kind, key, pid, start_time, boot, argv, data FROM processes"
            + (" WHERE kind = ?" if kind else "") + " ORDER BY kind, key", (kind,) if kind else ())
        return [Entry(k, key, Proc(pid, start, boot, tuple(json.loads(argv))), json.loads(data))
                for k, key, pid, start, boot, argv, data in rows]

    def get(self, kind: str, key: str) -> Entry | None:
        return next((e for e in self.entries(kind) if e.key == key), None)

    def set_scale(self, revision: str, scale: int | None) -> None:
        if scale is None:
            self._db.execute("DELETE FROM scales WHERE revision = ?", (revision,))
        else:
            self._db.execute("INSERT INTO scales VALUES (?, ?) ON CONFLICT (revision) DO UPDATE SET"
                             " scale = excluded.scale", (revision, scale))

    def scales(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT revision, scale FROM scales"))

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                             (key, value))

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def forget_dead(self) -> list[Entry]:
        """Drop the records of processes that are gone (or whose pid another process now has); returns them."""
        dead = [e for e in self.entries() if not is_running(e.proc)]
        for entry in dead:
            self.remove(entry.kind, entry.key)
        return dead


class Locked(RuntimeError):
    """Another ferry holds the state folder."""


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Hold the state folder for this ferry: one ferry writes its state and runs its data plane at a time. The
    kernel releases the lock when the process dies, however it dies."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "ferry.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise Locked(f"another ferry (pid {holder}) runs with the state folder {folder}: stop it "
                         f"(`ferry down --state {folder}`), or give this one its own --state") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def holder(folder: Path) -> int | None:
    """The pid of the ferry holding the state folder's lock, or None if no ferry holds it."""
    path = folder / "ferry.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Supervised:
    """One data-plane process ferry keeps running (Envoy, the activator). `start()` adopts the one recorded under
    (kind, key) when it still runs with the same configuration (`digest`), and starts one otherwise, replacing a
    recorded one whose configuration differs; `supervise()` restarts it with backoff whenever it exits; `stop()`
    ends it and its record. Without a register nothing is recorded or adopted (a gateway a test starts)."""

    def __init__(self, kind: str, key: str, argv: list[str], *, digest: str, log_path: Path,
                 ready: Callable[[Running], Awaitable[None]], register: Register | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None):
        self.kind, self.key = kind, key
        self.argv, self.digest = argv, digest
        self.log_path = log_path
        self._ready = ready
        self._register = register
        self._env, self._cwd = env, cwd
        self.running: Running | None = None
        self.adopted = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.running.pid if self.running is not None else None

    async def start(self) -> None:
        entry = self._register.get(self.kind, self.key) if self._register is not None else None
        if entry is not None and is_running(entry.proc):
            if entry.data.get("digest") == self.digest:
                self.running, self.adopted = Running(entry.proc), True
                log.info("adopted", extra={"part": self.kind, "pid": entry.proc.pid})
                await self._ready(self.running)
                return
            log.warning("its configuration changed: replacing it", extra={"part": self.kind, "pid": entry.proc.pid})
            await Running(entry.proc).terminate(5.0)
        self.adopted = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            self.running = await spawn(self.argv, stdout=fd, stderr=fd, env=self._env or child_env(), cwd=self._cwd)
        finally:
            os.close(fd)
        if self._register is not None:
            self._register.put(self.kind, self.key, self.running.proc, digest=self.digest)
        log.info("started", extra={"part": self.kind, "pid": self.running.pid})
        try:
            await self._ready(self.running)
        except BaseException:
            await self.stop()
            raise

    async def supervise(self, max_backoff_s: float = 10.0) -> None:
        """Restart it whenever it exits, with backoff; until cancelled."""
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            code = await self.running.wait()
            self.restarts += 1
            if loop.time() - started > 30:
                backoff = 0.1
            log.error("exited; restarting", extra={"part": self.kind, "code": code, "restart_in_s": backoff,
                                                  "log_tail": tail(self.log_path, 5)})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            try:
                await self.start()
            except (OSError, RuntimeError, TimeoutError) as err:
                log.error("failed to restart", extra={"part": self.kind, "error": str(err)})

    async def stop(self, grace_s: float = 5.0) -> None:
        running = self.running
        if running is not None and running.alive:
            if not await running.terminate(grace_s):
                log.warning("ignored SIGTERM, killed", extra={"part": self.kind, "pid": running.pid})
            log.info("stopped", extra={"part": self.kind, "pid": running.pid})
        if self._register is not None:
            self._register.remove(self.kind, self.key)


def tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
