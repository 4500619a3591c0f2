"""`ferry down`: stop a ferry and its data plane, or the data plane a ferry that died left running."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from .. import dataplane

STOP_TIMEOUT_S = 60.0
INSTANCE_GRACE_S = 10.0


def state_folder(routes: Path | None, state: Path | None) -> Path:
    """Where `ferry up` keeps its state: --state (the database, or its folder), else .ferry beside the routes file,
    else .ferry here."""
    if state is not None:
        return state if state.is_dir() or not state.suffix else state.parent
    return (routes.absolute().parent if routes is not None else Path.cwd()) / ".ferry"


async def down(folder: Path) -> list[str]:
    """Stop whatever runs from `folder`; returns what was stopped, one line each."""
    stopped = []
    pid = dataplane.holder(folder)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # a live ferry stops everything in order itself
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while dataplane.holder(folder) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ferry (pid {pid}) did not stop within {STOP_TIMEOUT_S:g}s")
            await asyncio.sleep(0.1)
        stopped.append(f"ferry (pid {pid}), which stopped its data plane")
    if not (folder / "dataplane.db").exists():
        return stopped
    with dataplane.lock(folder):  # no ferry may start on the folder meanwhile
        register = dataplane.Register(folder)
        try:
            register.forget_dead()
            entries = register.entries()
            # The entry first (no new request comes in), then the activator, then the instances, concurrently.
            for kinds, grace in (((dataplane.ENVOY,), 5.0), ((dataplane.ACTIVATOR, dataplane.INSTANCE),
                                                             INSTANCE_GRACE_S)):
                group = [e for e in entries if e.kind in kinds]
                await asyncio.gather(*(dataplane.Running(e.proc).terminate(grace) for e in group))
                for entry in group:
                    register.remove(entry.kind, entry.key)
                    stopped.append(f"{entry.kind} {entry.key} (pid {entry.proc.pid})")
            for revision in register.scales():
                register.set_scale(revision, None)
            register.set_meta("routes", None)
        finally:
            register.close()
    return stopped
