"""Holds requests for revisions at zero (or short of capacity), wakes them, and proxies to ready instances.

Modules: `balancing` (which instance, pure), `poke` (when to wake a revision, pure), `gate` (per-revision
FIFO queue and per-instance breakers), `proxy` (HTTP and websocket forwarding), `metrics`, `server` (the
aiohttp server and the `Activator` ferry drives).
"""

from .server import Activator, RevisionStats

__all__ = ["Activator", "RevisionStats"]
