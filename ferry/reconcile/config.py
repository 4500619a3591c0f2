"""routes.yaml as the controller receives it: read, validated against the revision history, committed to it,
then applied, one at a time. A file with any problem changes nothing: the last good configuration keeps
serving, and the problem is logged, counted and kept for `ferry status`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from ..routing.errors import ConfigError, Problem
from ..routing.fields import HostPort
from ..routing.loader import LoadedRoutes, load_routes, validate
from ..routing.overrides import Overrides
from ..routing.revisions import Revision, RevisionPlan, RevisionStore

log = logging.getLogger("ferry")


@dataclass(frozen=True)
class Config:
    """A routes file that passed every check, and the revision each service's template is (committed)."""

    loaded: LoadedRoutes
    plan: RevisionPlan

    @cached_property
    def planned(self) -> dict[str, Revision]:
        """The plan's revisions by name."""
        return {r.name: r for r in self.plan.current.values()}


class ConfigSource:
    def __init__(self, path: Path, store: RevisionStore, apply: Callable[[Config], Awaitable[None]],
                 registry: CollectorRegistry, *, own: Mapping[HostPort, str] | None = None,
                 overrides: Overrides | None = None):
        self.path = path
        self.overrides = overrides or Overrides()  # ferry's --listen, --backend...: over the file, on every load
        self._own = own or {}  # ferry's own listeners: never a revision's endpoint
        self._store = store
        self._apply = apply
        self._lock = asyncio.Lock()
        self.current: Config | None = None
        self.last_applied: float | None = None
        self.last_error: str | None = None
        self.load_ms: float | None = None
        self._applies = Counter("ferry_config_applies", "routes.yaml applications", ["result"], registry=registry)

    async def apply(self, text: str | None = None, *, label: str | None = None,
                    loaded: LoadedRoutes | None = None) -> bool:
        """Read the routes file ferry was started with, or take `text` sent in its place (named `label` in
        messages: only a name, never a file read, and relative commands still resolve against the routes file's
        folder), or an already `loaded` file, and apply it. False: it is what already serves. ConfigError:
        rejected, nothing changed."""
        try:
            if loaded is None:
                started = time.perf_counter()
                previous = self.current.loaded if self.current else None
                loaded = load_routes(self.path, text, previous=previous, label=label, overrides=self.overrides)
                if loaded is previous:
                    return False  # a save that changed nothing
                self.load_ms = round((time.perf_counter() - started) * 1000, 2)
            async with self._lock:
                config = self._validate(loaded)
                self._store.commit(config.plan)
                await self._apply(config)
                self._store.save_applied(loaded.path, loaded.text)
                self.current = config
        except ConfigError as err:
            self._applies.labels("rejected").inc()
            self.last_error = str(err)
            if self.current is not None:  # at start-up there is none to keep serving: ferry stops, saying why
                log.error("configuration rejected; the last good configuration keeps serving\n%s", err)
            raise
        self._applies.labels("applied").inc()
        self.last_applied, self.last_error = time.time(), None
        log.info("configuration applied", extra={"file": str(loaded.path)})
        return True

    def _validate(self, loaded: LoadedRoutes) -> Config:
        current = self.current
        if current is not None and loaded.spec.backend != current.loaded.spec.backend:
            raise ConfigError(loaded.label or str(loaded.path), [Problem(
                "backend", "where revisions run is chosen when ferry starts: restart `ferry up` to change the "
                "backend (revision names and history are kept)")])
        previous = (current.loaded, current.plan) if current is not None else None
        return Config(loaded, validate(loaded, self._store, previous, own=self._own))

    def status(self) -> dict:
        return {
            "file": str(self.current.loaded.path) if self.current else None,
            "last_applied": self.last_applied,
            "last_error": self.last_error,
            **({"load_ms": self.load_ms} if self.load_ms is not None else {}),
        }
