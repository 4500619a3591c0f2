"""The activator's test fixtures: real aiohttp instances on free loopback ports, activators, a client; all closed
even when a test fails. Registered in conftest.py, used by test_activator.py and test_security_activator.py."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from ferry.activator import Activator
from ferry.xds.resources import REVISION_HEADER

REV = "hello-00001"
HEADERS = {REVISION_HEADER: REV}


@dataclass
class Instance:
    """A real aiohttp server on a free loopback port that records what it saw."""

    address: tuple[str, int]
    runner: web.AppRunner
    requests: int = 0
    active: int = 0
    max_active: int = 0
    seen: list[web.Request] = field(default_factory=list)


@pytest.fixture
async def instances():
    started: list[Instance] = []

    async def start(handler=None, *, name: str = "instance") -> Instance:
        async def default(request: web.Request) -> web.StreamResponse:
            return web.Response(text=f"hello from {name}")

        app = web.Application()
        instance: Instance

        async def counting(request: web.Request) -> web.StreamResponse:
            instance.requests += 1
            instance.active += 1
            instance.max_active = max(instance.max_active, instance.active)
            instance.seen.append(request)
            try:
                return await (handler or default)(request)
            finally:
                instance.active -= 1

        app.router.add_route("*", "/{path:.*}", counting)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        instance = Instance(("", 0), runner)
        started.append(instance)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        instance.address = ("127.0.0.1", runner.addresses[0][1])
        return instance

    yield start
    for instance in started:
        await instance.runner.cleanup()


@pytest.fixture
async def make_activator():
    made: list[Activator] = []

    async def make(**kwargs) -> Activator:
        activator = Activator(port=0, **kwargs)
        made.append(activator)
        await activator.start()
        return activator

    yield make
    for activator in made:
        await activator.aclose()


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def url(activator: Activator, path: str = "/") -> str:
    return f"http://127.0.0.1:{activator.port}{path}"


def dead_address() -> tuple[str, int]:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ("127.0.0.1", s.getsockname()[1])


async def get(client: aiohttp.ClientSession, activator: Activator, path: str = "/", **kwargs) -> tuple[int, str]:
    async with client.get(url(activator, path), headers=kwargs.pop("headers", HEADERS), **kwargs) as response:
        return response.status, await response.text()
