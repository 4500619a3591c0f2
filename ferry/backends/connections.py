"""Who is still connected to a local instance: the drain signal for a removed endpoint.

Envoy forgets a host the moment EDS removes it (it is gone from /clusters), yet finishes the requests
already sent to it and then closes those connections; idle ones it closes at once. So once the
gateways have acknowledged the removal, an instance with no established connection left from anyone
but ferry itself and its activator process (which counts its own requests exactly, and keeps idle
connections in its pool) has nothing in flight.

Linux /proc only; elsewhere nothing is seen and the drain relies on the app's graceful SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, NamedTuple

ESTABLISHED = "01"
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


class Socket(NamedTuple):
    local_port: int
    remote_port: int
    state: str
    inode: int


def parse_table(text: str) -> list[Socket]:
    """Rows of /proc/net/tcp{,6}: 'sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...'."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        sockets.append(
            Socket(int(fields[1].rpartition(":")[2], 16), int(fields[2].rpartition(":")[2], 16), fields[3], int(fields[9]))
        )
    return sockets


def foreign_clients(port: int, sockets: Iterable[Socket], own_inodes: set[int]) -> int:
    """Established connections to `port` whose client end is not one of our own sockets.

    On loopback both ends are in the table: the client end is the row going from the peer's port to
    `port`. A client end we cannot find (another network namespace) counts as foreign.
    """
    sockets = list(sockets)
    client_inode = {(s.local_port, s.remote_port): s.inode for s in sockets}
    count = 0
    for s in sockets:
        if s.local_port == port and s.state == ESTABLISHED:
            inode = client_inode.get((s.remote_port, port))
            if inode is None or inode not in own_inodes:
                count += 1
    return count


def socket_inodes(pid: int | str = "self") -> set[int]:
    """The sockets a process holds open."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connected_clients(port: int, exempt_pids: Iterable[int] = ()) -> int:
    """How many connections processes other than ferry and `exempt_pids` (the activator) hold open to local
    `port` right now: the gateways'."""
    sockets: list[Socket] = []
    for table in TABLES:
        try:
            sockets += parse_table(table.read_text())
        except OSError:
            continue
    if not sockets:
        return 0
    own = socket_inodes()
    for pid in exempt_pids:
        own |= socket_inodes(pid)
    return foreign_clients(port, sockets, own)
