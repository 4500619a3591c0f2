"""What every backend offers the controller: run a revision's instances, report ready endpoints.

The controller decides *how many* instances a revision should have; a backend only makes it so and
reports which instances are ready to take traffic: local processes (local.py) or Kubernetes Deployments
(kubernetes/). A backend whose workloads outlive ferry also offers what `Durable` declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..routing.revisions import RevisionStore


class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Workload:
    """One revision's runnable template, already resolved against the routes file's folder."""

    service: str
    revision: str
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    readiness_path: str | None = None  # HTTP GET until 200; None = TCP connect
    protocol: str = "http1"  # what the instances speak: http1, or h2c (HTTP/2 without TLS; its readiness GET is HTTP/2)
    timeout_s: float = 300.0  # request timeout; also bounds how long a stopping instance may drain
    # Kubernetes only: the container image (command, when given, overrides its entrypoint), its args, the port it
    # listens on (default 8080) and its resource requests/limits.
    image: str | None = None
    args: tuple[str, ...] | None = None
    port: int | None = None
    resources: Mapping[str, Mapping[str, str]] | None = None


# Called whenever the set of *ready* endpoints of a revision changes (synchronously, on the loop).
EndpointsChanged = Callable[[str, tuple[Endpoint, ...]], None]

# Awaited after an instance has left the endpoints and before it gets SIGTERM: the controller uses it to
# wait until every gateway stopped sending it requests and the in-flight ones finished.
DrainHook = Callable[[str, Endpoint], Awaitable[None]]


@dataclass(frozen=True)
class InstanceCounts:
    ready: int
    total: int
    started: int = 0  # processes started for the revision so far, restarts included


@dataclass(frozen=True)
class InstanceInfo:
    """A read-only view of one instance, for status output and tests."""

    index: int
    pid: int | None
    endpoint: Endpoint | None
    ready: bool
    stopping: bool
    restarts: int
    log_path: Path
    alive: bool = True  # its process (or pod) still runs: a draining instance may still answer
    error: str | None = None  # why it could not be started (the last attempt), if it could not


class Backend(Protocol):
    async def scale(self, workload: Workload, instances: int) -> None:
        """Converge the revision to `instances` running instances (idempotent; returns without waiting for readiness)."""

    def endpoints(self, revision: str) -> tuple[Endpoint, ...]:
        """The revision's ready endpoints now."""

    def counts(self, revision: str) -> InstanceCounts: ...

    def instances(self, revision: str) -> tuple[InstanceInfo, ...]:
        """Every instance of the revision, stopping ones included (for status)."""

    async def stop(self, revision: str) -> None:
        """Take every instance of the revision out of the endpoints, drain, then stop it."""

    async def aclose(self) -> None:
        """Stop what this backend runs for this ferry process: local instances (no process survives); for
        Kubernetes its watches, while Deployments stay for the next ferry to adopt, as workloads outlive
        their controllers there."""


@runtime_checkable
class Durable(Protocol):
    """What a backend adds when its workloads outlive ferry (local instances, Kubernetes' Deployments): taking back
    what still runs (and, on Kubernetes, the revision history kept there), how much of each revision runs, and the
    removal of what no revision wants any more. Backends declare it by subclassing."""

    async def recover(self, store: RevisionStore) -> int:
        """Before the first apply, take in what outlived the last ferry: the workloads that still run (adopted
        as they are), and, where the revision history is kept with them, that history (then every later write
        of `store` goes there too). Returns how many workloads, or revisions new to `store`, it found."""

    def replicas(self, revision: str) -> int | None:
        """How many instances the revision runs now (None: it has no workload): a new ferry adopts that."""

    async def collect_garbage(self, keep: set[str]) -> list[str]:
        """Delete what is kept of revisions not in `keep` (stopped Deployments; instances a restart adopted that
        no apply claimed); returns what was deleted."""
