"""The routes.yaml v1 schema: what each field may hold, checked one object at a time.

Rules that relate objects to each other (percents summing to 100, unique tags, who owns a host,
revision names) live in checks.py and revisions.py, so that one pass reports every problem.
Models are frozen and hashable: the controller compares old and new specs with == and keeps them in sets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .fields import (
    ActivationScale,
    Address,
    Bool,
    BurstCapacity,
    Command,
    Domain,
    Duration,
    Endpoints,
    EnvName,
    GracePeriod,
    Host,
    HostPort,
    HttpPath,
    NonNegativeInt,
    PanicThreshold,
    PanicWindowPercent,
    Percent,
    RevisionName,
    RevisionRef,
    ScaleDownDelay,
    ScaleRate,
    ScaleTarget,
    ServiceName,
    StableWindow,
    Str,
    Tag,
    Utilization,
)

__all__ = [
    "Gateway",
    "HostPort",
    "Readiness",
    "RoutesFile",
    "Scale",
    "ServiceSpec",
    "Template",
    "TrafficTarget",
    "service_hosts",
    "tag_host",
]


def _none_as_empty(value: Any) -> Any:
    """`services:` with nothing under it (every service commented out) means no services, not an error."""
    return {} if value is None else value


def _freeze(value: Any) -> Any:
    return frozenset(value.items()) if isinstance(value, dict) else value


class _Model(BaseModel):
    """Closed (unknown fields are errors, not silently ignored) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __hash__(self) -> int:  # pydantic's frozen hash fails on dict fields (env, services)
        return hash((type(self), *map(_freeze, self.__dict__.values())))


class Readiness(_Model):
    path: HttpPath | None = None  # HTTP GET until 200; None = TCP connect


class Scale(_Model):
    """Autoscaling bounds and goal for one revision: Knative's autoscaling.knative.dev annotations (KPA),
    with Knative's defaults and ranges. Percentages are written as percentages (70, not 0.7); durations
    like timeout (60s, 1m, or a number of seconds). ferry.autoscaler.settings turns this into Settings."""

    min: NonNegativeInt = 0
    max: NonNegativeInt = 0  # 0 = unbounded
    initial: NonNegativeInt = 1
    target: ScaleTarget | None = None  # filled in from metric: 100 concurrent requests or 200 rps
    metric: Literal["concurrency", "rps"] = "concurrency"
    utilization: Utilization = 70.0  # percent of target an instance is sized for, 1..100
    activation: ActivationScale = 1  # scale from zero to at least this many instances
    stableWindow: StableWindow = 60.0  # seconds, whole, 6s..1h
    panicWindowPercent: PanicWindowPercent = 10.0  # panic window as percent of the stable window, 1..100
    panicThreshold: PanicThreshold = 200.0  # percent of the ready instances that starts panic mode, 110..1000
    maxScaleUpRate: ScaleRate = 1000.0  # at most this many times the ready instances per decision, > 1
    maxScaleDownRate: ScaleRate = 2.0  # keep at least ready / this many instances per decision, > 1
    zeroGracePeriod: GracePeriod = 30.0  # seconds the activator fronts a revision before it reaches zero
    scaleDownDelay: ScaleDownDelay = 0.0  # seconds, whole, 0..1h: scale down to the highest want in this window
    burstCapacity: BurstCapacity = 211.0  # load to absorb without the activator; 0 = none, -1 = unlimited

    @model_validator(mode="before")
    @classmethod
    def _default_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("target") is None:
            return {**data, "target": 200.0 if data.get("metric") == "rps" else 100.0}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Scale:
        if not self.max:  # 0: unbounded
            return self
        over = [
            f"{name} {value} is greater than max {self.max}: {fix}"
            for name, value, fix in (
                ("min", self.min, "raise max or lower min"),
                ("initial", self.initial, "lower initial or raise max"),
                ("activation", self.activation, "lower activation or raise max"),
            )
            if value > self.max
        ]
        if over:
            raise ValueError("; ".join(over) + " (max 0 means unbounded)")
        return self


class Template(_Model):
    """What one revision runs. Any change makes a new, immutable revision."""

    name: RevisionName | None = None
    command: Command | None = None  # argv, no shell; relative paths resolve against the routes file's folder
    endpoints: Endpoints | None = None  # already-running instances instead of a command
    env: dict[EnvName, Str] = {}
    readiness: Readiness | None = None
    concurrency: NonNegativeInt = 0  # max in-flight requests per instance; 0 = unlimited
    timeout: Duration = 300.0  # seconds
    scale: Scale = Scale()

    @model_validator(mode="after")
    def _one_way_to_run(self) -> Template:
        if self.command is not None and self.endpoints is not None:
            raise ValueError("give either command (ferry runs the instances) or endpoints (already running), not both")
        if self.command is None and self.endpoints is None:
            raise ValueError("no command or endpoints: add command: [program, args...] or endpoints: [host:port, ...]")
        return self


class TrafficTarget(_Model):
    revision: RevisionRef | None = None
    latestRevision: Bool = False  # the latest *ready* revision
    percent: Percent = 0
    tag: Tag | None = None  # also served at <tag>-<service>.<domain>, 100% to this target's revision

    @model_validator(mode="after")
    def _one_revision(self) -> TrafficTarget:
        if self.revision is not None and self.latestRevision:
            raise ValueError(
                f"names revision {self.revision} and latestRevision: true; a target follows one or the other, "
                "not both: keep revision to pin it, or latestRevision to follow the latest ready revision"
            )
        if self.revision is None and not self.latestRevision:
            raise ValueError("names no revision: add revision: <name> or latestRevision: true")
        return self


class ServiceSpec(_Model):
    hosts: tuple[Host, ...] = ()  # extra hosts besides <service>.<domain>
    template: Template
    traffic: tuple[TrafficTarget, ...] | None = None  # None = 100% to the latest ready revision


class Gateway(_Model):
    listen: Address = HostPort("127.0.0.1", 8080)
    domain: Domain = "localhost"


class RoutesFile(_Model):
    gateway: Gateway = Gateway()
    services: dict[ServiceName, ServiceSpec] = {}

    _empty_means_default = field_validator("gateway", "services", mode="before")(_none_as_empty)


def service_hosts(name: str, spec: ServiceSpec, gateway: Gateway) -> list[str]:
    """Every host that routes to the service's split: <service>.<domain> first, then the extra hosts."""
    return [f"{name}.{gateway.domain}", *spec.hosts]


def tag_host(tag: str, service: str, gateway: Gateway) -> str:
    """The host that sends 100% to a tagged target's revision (Knative's <tag>-<service>.<domain>)."""
    return f"{tag}-{service}.{gateway.domain}"
