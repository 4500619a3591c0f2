"""Shared test utilities: free loopback ports, waiting on conditions, routes files and their problems."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import textwrap
import time
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from ferry.routing import ConfigError, LoadedRoutes, Problem, load_routes

_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768+ here), never the same twice in a run.

    The ports a test gives ferry are bound only later (Envoy's listener and admin); a port taken with
    bind(0) would come from the range the kernel also hands to instances and client sockets meanwhile,
    and a collision made a test fail now and then.
    """
    low, _ = _ephemeral_range()
    while True:
        port = random.randrange(10_000, max(low, 20_000))
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


async def wait_until(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0, what: str = "condition",
                     interval: float = 0.02):
    """Poll a condition until true; fail with `what` after `timeout` (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def h2_exchange(sock: socket.socket, headers: list[tuple[str, str]]) -> tuple[dict[bytes, bytes], bytes]:
    """One HTTP/2 request (`headers`, pseudo-headers included, no body) on a connected socket, blocking, with the
    h2 library (prior knowledge on a plain socket, ALPN h2 on a TLS one): (response headers, body)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(conn.get_next_available_stream_id(), headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    head: dict[bytes, bytes] = {}
    body = b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the connection closed before the response ended")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                head = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                return head, body
        sock.sendall(conn.data_to_send())


# -- routes files ----------------------------------------------------------------------------------------


def write_routes(tmp_path: Path, text: str) -> Path:
    """`text` (dedented) as tmp_path/routes.yaml."""
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str) -> LoadedRoutes:
    return load_routes(write_routes(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[Problem]:
    """Every problem ferry finds in `text`, which must have some; each names the file."""
    path = write_routes(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    assert info.value.file == str(path)
    return list(info.value.problems)


def only(tmp_path: Path, text: str) -> Problem:
    """The one problem in `text`."""
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# -- the Grafana dashboard in deploy/ -------------------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "ferry.json"
_SERIES_NAME = re.compile(r"\b(ferry_[a-z0-9_]+)\b")


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the Grafana dashboard: panel targets and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return exprs


def dashboard_series() -> set[str]:
    """The ferry series the dashboard queries."""
    return {name for expr in dashboard_exprs() for name in _SERIES_NAME.findall(expr)}
