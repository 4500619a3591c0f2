"""Fixtures for the Kubernetes backend's tests: the fake API (kube_fake.py), a client for it, backends on it.

conftest.py imports the fixtures, so every test module can ask for them by name.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client as k8s

from ferry.backends.base import Endpoint
from ferry.backends.kubernetes import KubernetesBackend

from .kube_fake import FakeKubeAPI

NS = "default"


def deployment(fake: FakeKubeAPI, name: str) -> dict[str, Any] | None:
    return fake.get("deployments", name, NS)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Endpoint, ...]]] = []
        self.log: list[tuple[Any, ...]] = []  # endpoints changes and drains, in order

    def __call__(self, revision: str, eps: tuple[Endpoint, ...]) -> None:
        self.events.append((revision, eps))
        self.log.append(("endpoints", revision, eps))

    def last(self, revision: str) -> tuple[Endpoint, ...] | None:
        for rev, eps in reversed(self.events):
            if rev == revision:
                return eps
        return None


@pytest.fixture
async def fake():
    f = FakeKubeAPI()
    await f.start()
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
def api_client(fake: FakeKubeAPI):
    cfg = k8s.Configuration()
    cfg.host = fake.url
    cfg.retries = 0  # ferry's own backoff is what is under test
    api = k8s.ApiClient(cfg)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_backend(api_client, recorder):
    made: list[KubernetesBackend] = []

    def make(**kwargs: Any) -> KubernetesBackend:
        kwargs.setdefault("drain", None)
        kwargs.setdefault("api_retry_s", 10.0)
        b = KubernetesBackend(recorder, namespace=NS, api_client=api_client, **kwargs)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await b.aclose()
        assert not [t for t in threading.enumerate() if t.name.startswith("ferry-kube-")], "leaked watch threads"


