"""gateway.tls while ferry runs: what the gateways serve for it, and following its certificate files.

`HttpsState` stages, through the controller's publisher, the HTTPS listener and one SDS secret per certificate
entry. A routes.yaml change to gateway.tls replaces them as the file now says (with the certificates read when it
was loaded); a change to the certificate files alone is a rotation: a new version of the same secrets, which Envoy
serves to new handshakes at once without draining a connection (the listener does not change).

`watch_certificates` follows the files as watch.py follows the routes file (the folders, so that editors that save
by rename and Kubernetes' `..data` symlink swaps are seen). A pair is read and checked whole (routing/certificates):
a certificate written before its key is a mismatch for a moment, which is never published, and is reported only if
it lasts (REPORT_AFTER_S); the next read that finds the pair whole publishes it and clears the report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..routing.certificates import GatewayTls, KeyPair, paths, read_certificates, summaries
from ..routing.loader import LoadedRoutes, problems_in
from ..xds import https, resources as xds
from .publisher import Publisher

log = logging.getLogger("ferry.certs")

REPORT_AFTER_S = 1.0  # a pair still broken this long after a change is an error (not a save in two steps)
RETRY_S = 0.25  # while a pair is broken, read it again this often (a save may be missed between two events)


class HttpsState:
    """The HTTPS listener and the secrets the controller published for gateway.tls."""

    def __init__(self, publisher: Publisher):
        self._publisher = publisher
        self.tls: GatewayTls | None = None
        self.loaded: LoadedRoutes | None = None  # the routes file applied last: its folder, and lines for errors
        self.pairs: dict[str, KeyPair] = {}  # secret name -> what is published
        self.error: str | None = None  # the certificate files' problem, while it lasts
        self.rotated_at: float | None = None
        self.changed = asyncio.Event()  # gateway.tls changed: the watch follows other files
        self._configured = False
        self.observe = xds.NO_OBSERVE  # what the listener's HTTP connection manager records (request logs, traces)

    def configure(self, loaded: LoadedRoutes, observe: xds.Observe = xds.NO_OBSERVE) -> bool:
        """Stage what `loaded`'s gateway.tls needs, if it changed (True then: route tables need rebuilding for
        the redirect). A change of `observe` alone re-puts the listener (and returns False)."""
        self.loaded = loaded
        tls = loaded.spec.gateway.tls
        if self._configured and tls == self.tls:
            if observe != self.observe:
                self.observe = observe
                if tls is not None:
                    self._put_listener(tls, loaded)
            return False
        self.observe = observe
        self._configured = True  # the first time even without TLS: a cache taken over may hold another's listener
        self.tls = tls
        self.error = None
        self.changed.set()
        if tls is None:
            self._publisher.delete(xds.LISTENER, https.HTTPS_LISTENER_NAME)
            for name in self.pairs:
                self._publisher.delete(xds.SECRET, name)
            self.pairs = {}
            return True
        pairs = {pair.name: pair for pair in loaded.certificates}
        for name in set(self.pairs) - set(pairs):
            self._publisher.delete(xds.SECRET, name)
        self._put(pairs)
        self._put_listener(tls, loaded)
        return True

    def _put_listener(self, tls: GatewayTls, loaded: LoadedRoutes) -> None:
        chains = [https.TlsChain(pair.name, pair.hosts) for pair in loaded.certificates]
        self._publisher.put(xds.LISTENER, https.https_listener(tls.listen.host, tls.listen.port, chains,
                                                               groups=tls.groups, observe=self.observe))

    def rotate(self, tls: GatewayTls, pairs: tuple[KeyPair, ...]) -> bool:
        """Stage new contents of the same certificate entries (read from the files); False if gateway.tls is no
        longer `tls`, or nothing changed."""
        if tls != self.tls or {p.name for p in pairs} != set(self.pairs):
            return False
        changed = {p.name: p for p in pairs if self.pairs[p.name] != p}
        if not changed:
            return False
        self._put(changed)
        self.rotated_at = time.time()
        return True

    def _put(self, pairs: dict[str, KeyPair]) -> None:
        for name, pair in pairs.items():
            if self.pairs.get(name) != pair:
                self._publisher.put(xds.SECRET, https.secret(name, pair.chain, pair.key))
        self.pairs.update(pairs)

    def redirect(self) -> xds.HttpsRedirect | None:
        """What route tables do with plain-HTTP requests for HTTPS hosts (gateway.tls.redirect)."""
        if self.tls is None or not self.tls.redirect:
            return None
        return xds.HttpsRedirect(self.tls.hosts(), self.tls.listen.port)

    def status(self) -> dict:
        if self.tls is None:
            return {}
        return {"certificates": summaries(list(self.pairs.values())), "certificates_error": self.error,
                "certificates_rotated_at": self.rotated_at}


Rotate = Callable[[GatewayTls, tuple[KeyPair, ...]], Awaitable[bool]]


async def watch_certificates(state: HttpsState, rotate: Rotate) -> None:
    """Follow gateway.tls's certificate files until cancelled: a pair that changed and is whole is handed to
    `rotate` (the controller publishes it)."""
    while True:
        state.changed.clear()
        # No LoadedRoutes in this frame: it waits for as long as ferry runs, and would keep a whole routes file's
        # objects alive long after the next apply (~50 MiB at 10,000 services).
        if state.tls is None or state.loaded is None:
            await state.changed.wait()
            continue
        try:
            await _watch(state, state.tls, state.loaded.base_dir, rotate)
        except (OSError, RuntimeError) as err:  # a watched folder went away, inotify limits: watch again shortly
            log.warning("watching the certificate files failed; trying again", extra={"error": str(err)})
            try:
                await asyncio.wait_for(state.changed.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


async def _watch(state: HttpsState, tls: GatewayTls, base_dir: Path, rotate: Rotate) -> None:
    """Until gateway.tls changes."""
    from watchfiles import Change, awatch

    files = paths(tls, base_dir)
    names = {p.absolute() for p in files} | {p.resolve() for p in files}
    folders = sorted({str(p.parent) for p in names if p.parent.is_dir()})
    if not folders:  # a folder that does not exist yet: look again in a while
        try:
            await asyncio.wait_for(state.changed.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        return

    def touches(kind: Change, changed: str) -> bool:
        path = Path(changed)
        return path in names or path.name.startswith("..")

    reader = _Reader(state, tls, rotate)
    first = True
    async for changes in awatch(*folders, debounce=10, step=5, recursive=False, rust_timeout=100,
                                yield_on_timeout=True):
        if state.changed.is_set() or state.tls is not tls:
            return
        # The first yield proves the watch is in place: read once more, for a change made before it was.
        if first or any(touches(kind, p) for kind, p in changes) or reader.due():
            first = False
            if state.loaded is not None:  # (always: gateway.tls came with it)
                await reader.read(state.loaded)


class _Reader:
    """Reads the pairs after a change; remembers a problem, to retry it and to report it only if it lasts."""

    def __init__(self, state: HttpsState, tls: GatewayTls, rotate: Rotate):
        self.state, self.tls, self.rotate = state, tls, rotate
        self.broken_since: float | None = None
        self.last_try = 0.0
        self.reported: str | None = None

    def due(self) -> bool:
        return self.broken_since is not None and time.monotonic() - self.last_try >= RETRY_S

    async def read(self, loaded: LoadedRoutes) -> None:
        now = self.last_try = time.monotonic()
        pairs, problems = read_certificates(self.tls, loaded.base_dir)
        if problems:
            if self.broken_since is None:
                self.broken_since = now
            if now - self.broken_since < REPORT_AFTER_S:
                return
            message = str(problems_in(loaded, problems))
            self.state.error = message
            if message != self.reported:
                self.reported = message
                log.error("certificate files rejected; the gateways keep serving the last good ones\n%s", message)
            return
        if self.broken_since is not None:
            if self.reported is not None:
                log.info("certificate files are whole again")
            self.broken_since, self.reported = None, None
        self.state.error = None
        if await self.rotate(self.tls, pairs):
            log.info("certificates reloaded", extra={"certificates": ", ".join(
                f"{p.name} {p.sha256[:12]}" for p in pairs)})
