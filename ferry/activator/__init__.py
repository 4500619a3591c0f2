"""Holds requests for revisions at zero (or short of capacity), wakes them, and proxies to ready instances.

Modules: `balancing` (which instance, pure), `poke` (when to wake a revision, pure), `gate` (per-revision
FIFO queue and per-instance breakers), `proxy` (HTTP/1.1 and websocket forwarding), `h2link` (HTTP/2 connections
and the pairing of a gateway's stream with an instance's), `h2c` (h2c and gRPC: telling h2c from HTTP/1.1 on the one
port, the gateways' connections, the pool of h2c connections to instances, gRPC-status answers), `metrics`, `server`
(the server and the `Activator` ferry drives), `control` and `process` (the activator as its own process).
"""

from .server import Activator, RevisionStats

__all__ = ["Activator", "RevisionStats"]
