"""The routes.yaml v1 schema: what each field may hold, checked one object at a time.

Rules that relate objects to each other (percents summing to 100, unique tags, who owns a host,
revision names) live in checks.py and revisions.py, so that one pass reports every problem.
Models are frozen and hashable: the controller compares old and new specs with == and keeps them in sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from .fields import (
    ActivationScale,
    Address,
    Args,
    Bool,
    BurstCapacity,
    Command,
    Domain,
    Duration,
    Endpoints,
    EnvName,
    FailureLimit,
    GracePeriod,
    Host,
    HostPort,
    HttpPath,
    IdleTimeout,
    Image,
    Kubeconfig,
    KubeContext,
    LatencyLimit,
    Namespace,
    NonNegativeInt,
    OsStr,
    PanicThreshold,
    PanicWindowPercent,
    Percent,
    Port,
    Quantity,
    ResponseStartTimeout,
    RevisionName,
    RevisionRef,
    RolloutDuration,
    RolloutInterval,
    RolloutSteps,
    ScaleDownDelay,
    ScaleRate,
    ScaleTarget,
    ServiceName,
    StableWindow,
    SuccessRate,
    Tag,
    Utilization,
    is_loopback,
    quantity_value,
)
from .certificates import GatewayTls
from .messages import describe

__all__ = [
    "PREVIEW_TAG",
    "Analysis",
    "Backend",
    "Gateway",
    "HostPort",
    "Readiness",
    "Resources",
    "Rollout",
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


def _raise_at(problems: list[tuple[tuple[str, ...], str, Any]]) -> NoReturn:
    """Fail a model validator with one error per (location under the model, message, input): each problem is
    reported at its own path (and line), like a field's own error, instead of all at the model's."""
    raise ValidationError.from_exception_data(
        "Template",
        [InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": message}) for loc, message, value in problems],
    )


def _freeze(value: Any) -> Any:
    return frozenset(value.items()) if isinstance(value, dict) else value


_FIELDS_SETS: dict[frozenset[str], set[str]] = {}  # see _Model.model_post_init


class _Model(BaseModel):
    """Closed (unknown fields are errors, not silently ignored) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __hash__(self) -> int:  # pydantic's frozen hash fails on dict fields (env, services)
        return hash((type(self), *map(_freeze, self.__dict__.values())))

    def model_post_init(self, context: Any, /) -> None:
        """Models with the same fields given share one set of those names (pydantic keeps a set per model: 8 MiB
        of 40,000 sets at 10,000 services, of 14 distinct contents). Safe as the models are frozen: pydantic
        changes the set only on assignment, and model_copy(update=...) changes a copy."""
        fields = self.__pydantic_fields_set__
        shared = _FIELDS_SETS.setdefault(frozenset(fields), fields)
        if shared is not fields:
            object.__setattr__(self, "__pydantic_fields_set__", shared)


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


BackendKind = Literal["local", "kubernetes"]
_BACKEND_KINDS = ("local", "kubernetes")
# The backend of the routes file being validated, for its templates: what a template may hold depends on it
# (a command runs locally, an image on Kubernetes). RoutesFile sets it around the validation of its fields;
# None (a Template or ServiceSpec validated on its own, or a file whose backend kind is itself invalid)
# checks only what is wrong on every backend.
_BACKEND_KIND: ContextVar[BackendKind | None] = ContextVar("ferry_routes_backend_kind", default=None)


@contextmanager
def backend_kind(kind: BackendKind | None) -> Iterator[None]:
    """Validate templates as the file with this backend would: `with backend_kind("kubernetes"): Template(...)`."""
    token = _BACKEND_KIND.set(kind)
    try:
        yield
    finally:
        _BACKEND_KIND.reset(token)


# Set while validating services translated from Knative Service manifests (knative.py): their container's image,
# port and resources are recorded in the template on backend local too (they count in its digest and come back
# on export), though the local backend runs `command` and ignores them. A routes.yaml on backend local still
# refuses them: written there, they would be a mistake.
_RECORD_CONTAINER: ContextVar[bool] = ContextVar("ferry_record_container", default=False)


@contextmanager
def container_recorded() -> Iterator[None]:
    """Validate templates that come from a Knative container: its Kubernetes fields are kept on any backend."""
    token = _RECORD_CONTAINER.set(True)
    try:
        yield
    finally:
        _RECORD_CONTAINER.reset(token)


class Resources(_Model):
    """A container's resource requests and limits (Kubernetes' `resources`): quantities like 500m or 256Mi."""

    requests: dict[Literal["cpu", "memory"], Quantity] = {}
    limits: dict[Literal["cpu", "memory"], Quantity] = {}

    _empty_means_default = field_validator("requests", "limits", mode="before")(_none_as_empty)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        over = [
            (
                ("requests", key),
                f"requests.{key} {request} is more than limits.{key} {self.limits[key]}; Kubernetes refuses a "
                "request above its limit: lower the request or raise the limit",
                request,
            )
            for key, request in self.requests.items()
            if key in self.limits and quantity_value(request) > quantity_value(self.limits[key])
        ]
        if over:
            _raise_at(over)
        return self


# What a local template writes instead of each Kubernetes-only field.
_KUBERNETES_ONLY = {
    "image": "image runs on backend kubernetes; ferry runs local revisions from command: set backend: kubernetes "
    "at the top of the file, or use command",
    "args": "args are the container's arguments on backend kubernetes; ferry runs local revisions from command: "
    "put them in command, or set backend: kubernetes at the top of the file",
    "port": "port is the container's port on backend kubernetes; a local revision listens on the port ferry gives "
    "it in $PORT: remove it, or set backend: kubernetes at the top of the file",
    "resources": "resources are the container's requests and limits on backend kubernetes; local revisions run "
    "without them: remove them, or set backend: kubernetes at the top of the file",
}


class Template(_Model):
    """What one revision runs. Any change makes a new, immutable revision.

    Backend local runs `command` as processes; backend kubernetes runs `image` (with `command` overriding its
    entrypoint, `args`, `port`, `resources`) as Deployments; on either, `endpoints` are instances that already
    run. The Kubernetes-only fields default to None, so templates without them keep their digest."""

    name: RevisionName | None = None
    command: Command | None = None  # argv, no shell; relative paths resolve against the routes file's folder
    endpoints: Endpoints | None = None  # already-running instances instead of a command
    env: dict[EnvName, OsStr] = {}
    readiness: Readiness | None = None
    concurrency: NonNegativeInt = 0  # max in-flight requests per instance; 0 = unlimited
    timeout: Duration = 300.0  # seconds, until the whole response (Knative's timeoutSeconds)
    # Knative's responseStartTimeoutSeconds: until the response's head, once an instance has the request (the
    # activator enforces it, Envoy cannot); None = timeout
    responseStartTimeout: ResponseStartTimeout | None = None
    idleTimeout: IdleTimeout = 0.0  # Knative's idleTimeoutSeconds: no byte either way for this long; 0 = none
    scale: Scale = Scale()
    # http1, or h2c: HTTP/2 without TLS to the instances (gRPC). Clients may speak either to the gateway.
    protocol: Literal["http1", "h2c"] = "http1"
    # backend kubernetes only
    image: Image | None = None  # an OCI image reference
    args: Args | None = None  # the container's args (command, when given, replaces the image's entrypoint)
    port: Port | None = None  # the port the container listens on; None = 8080
    resources: Resources | None = None

    # Checked against the backend before their own value: on backend local, "remove it" is the fix whatever it holds.
    @field_validator("image", "args", "port", "resources", mode="wrap")
    @classmethod
    def _kubernetes_only(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if value is not None and _BACKEND_KIND.get() == "local" and not _RECORD_CONTAINER.get():
            raise ValueError(_KUBERNETES_ONLY[str(info.field_name)])
        return handler(value)

    @model_validator(mode="after")
    def _response_starts_within_the_timeout(self) -> Template:
        start = self.responseStartTimeout
        if start is not None and start > self.timeout:
            raise ValueError(f"responseStartTimeout ({start:g}s) is longer than timeout ({self.timeout:g}s), which "
                             "bounds the whole response: lower it, or raise timeout")
        return self

    @property
    def response_start_timeout(self) -> float:
        """How long an instance may take to start its response (timeout when not set)."""
        return self.timeout if self.responseStartTimeout is None else self.responseStartTimeout

    @model_validator(mode="after")
    def _h2c_readiness_on_kubernetes_is_a_connect(self) -> Template:
        """An h2c revision scales like any other (the activator holds and forwards h2c too). Its readiness GET is
        HTTP/2 on backend local (ferry's own probe), but the kubelet's httpGet is HTTP/1.1, which an HTTP/2-only
        server cannot answer: on backend kubernetes its readiness is a TCP connect."""
        if (self.protocol == "h2c" and self.readiness is not None and self.readiness.path is not None
                and _BACKEND_KIND.get() == "kubernetes"):
            raise ValueError("protocol h2c on backend kubernetes needs readiness: {} (a TCP connect): the kubelet's "
                             "readiness GET is HTTP/1.1, which an HTTP/2-only server cannot answer (on backend local, "
                             "ferry's readiness GET for h2c is HTTP/2)")
        return self

    @model_validator(mode="after")
    def _one_way_to_run(self) -> Template:
        kind = _BACKEND_KIND.get()
        if kind == "kubernetes":
            return self._runs_on_kubernetes()
        if self.command is not None and self.endpoints is not None:
            raise ValueError("give either command (ferry runs the instances) or endpoints (already running), not both")
        if kind is None and self.image is not None and self.endpoints is not None:
            raise ValueError(_IMAGE_AND_ENDPOINTS)
        if self.command is None and self.endpoints is None and self.image is None:  # local: image is refused above
            raise ValueError("no command or endpoints: add command: [program, args...] or endpoints: [host:port, ...]")
        return self

    def _runs_on_kubernetes(self) -> Template:
        if self.image is not None:
            if self.endpoints is not None:
                raise ValueError(_IMAGE_AND_ENDPOINTS)
            return self
        if self.endpoints is None and self.command is None:
            raise ValueError(
                "no image or endpoints: add image: <reference> (backend kubernetes runs containers, "
                "e.g. image: ghcr.io/me/hello:1.0) or endpoints: [host:port, ...]"
            )
        problems: list[tuple[tuple[str, ...], str, Any]] = [
            (("endpoints", i), f"endpoint {e} is a loopback address: in a cluster it names the gateway's own pod, not "
             "an instance; give the instance's address", str(e))
            for i, e in enumerate(self.endpoints or ()) if is_loopback(e.host)]
        if self.command is not None:
            problems.append(
                (
                    ("command",),
                    "command overrides the entrypoint of the container's image, and endpoints run no container: "
                    "remove command, or replace endpoints with image: <reference>"
                    if self.endpoints is not None
                    else "on backend kubernetes, command overrides the entrypoint of the container's image, and "
                    "there is no image: add image: <reference>, e.g. image: ghcr.io/me/hello:1.0 (to run command "
                    "as a local process, set backend: local)",
                    list(self.command),
                )
            )
        if self.endpoints is not None:
            for field in ("args", "port", "resources"):
                if getattr(self, field) is not None:
                    problems.append(
                        (
                            (field,),
                            f"{field} is for the container of an image, and endpoints run no container: remove {field}",
                            getattr(self, field),
                        )
                    )
        if problems:
            _raise_at(problems)
        return self


_IMAGE_AND_ENDPOINTS = (
    "give either image (ferry runs it on Kubernetes) or endpoints (already running), not both"
)


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


# A blue-green rollout serves its new revision at this tag's host, <tag>-<service>.<domain>, before promotion.
PREVIEW_TAG = "preview"
DEFAULT_CANARY_STEPS = (5, 25, 50, 100)
DEFAULT_GRADUAL_DURATION = 120.0  # seconds: Knative's default rollout-duration is 0 (off); this is ferry's
_PROMOTES = {
    "canary": "a canary rollout promotes after its last passing step",
    "gradual": "a gradual rollout promotes when its duration has passed",
}


class Analysis(_Model):
    """How a rollout judges its new revision at each check, from Envoy's stats for that revision."""

    minRequests: NonNegativeInt = 50  # fewer answers than this: the check waits (inconclusive), never passes
    successRate: SuccessRate = 99.0  # percent of answers that are not 5xx, 0..100
    maxLatencyP99: LatencyLimit | None = None  # seconds; None = latency is not judged
    failureLimit: FailureLimit = 1  # failed checks before the rollout rolls back


class Rollout(_Model):
    """How a new revision takes over the service's main traffic: canary steps, a blue-green preview, or
    Knative's gradual rollout. Service-level, not part of the template: changing it makes no new revision.

    Canary `steps` and gradual `duration` are filled in when omitted, so they are never None for their
    strategy (and always None for the others); `autoPromote` may only be written for blue-green."""

    strategy: Literal["canary", "blue-green", "gradual"]
    steps: RolloutSteps | None = Field(None, validate_default=True)  # canary: percents, strictly increasing
    interval: RolloutInterval = 30.0  # seconds at each step; blue-green: how long the preview must pass
    duration: RolloutDuration | None = Field(None, validate_default=True)  # gradual: Knative's rollout-duration
    analysis: Analysis = Analysis()
    autoPromote: Bool = True  # blue-green: promote after a passing interval, else wait for `ferry rollout promote`
    sticky: Bool = False  # canary/gradual: a cookie keeps each client on the revision it first got

    _empty_means_default = field_validator("analysis", mode="before")(_none_as_empty)

    # Field validators, not a model validator: each problem is reported at its own field (and line).
    # `strategy` is declared first, so it is in info.data once valid. steps and duration are checked against
    # the strategy before their own value ("remove them" is the fix, whatever they hold).

    @field_validator("steps", mode="wrap")
    @classmethod
    def _steps_are_for_canary(
        cls, steps: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> tuple[int, ...] | None:
        strategy = info.data.get("strategy")
        if steps is not None and strategy not in (None, "canary"):
            raise ValueError(f"steps are for strategy canary, not {strategy}: remove them or use strategy: canary")
        steps = handler(steps)
        return DEFAULT_CANARY_STEPS if steps is None and strategy == "canary" else steps

    @field_validator("duration", mode="wrap")
    @classmethod
    def _duration_is_for_gradual(
        cls, duration: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> float | None:
        strategy = info.data.get("strategy")
        if duration is not None and strategy not in (None, "gradual"):
            raise ValueError(
                f"duration is for strategy gradual (Knative's rollout-duration), not {strategy}: remove it "
                "(interval sets the time at each step) or use strategy: gradual"
            )
        duration = handler(duration)
        return DEFAULT_GRADUAL_DURATION if duration is None and strategy == "gradual" else duration

    @field_validator("autoPromote")  # runs only when written: the default is not validated
    @classmethod
    def _auto_promote_is_for_blue_green(cls, auto_promote: bool, info: ValidationInfo) -> bool:
        strategy = info.data.get("strategy")
        if strategy is not None and strategy != "blue-green":
            raise ValueError(
                f"autoPromote is for strategy blue-green, not {strategy}: remove it ({_PROMOTES[strategy]}) "
                "or use strategy: blue-green"
            )
        return auto_promote

    @field_validator("sticky")
    @classmethod
    def _sticky_needs_a_split(cls, sticky: bool, info: ValidationInfo) -> bool:
        if sticky and info.data.get("strategy") == "blue-green":
            raise ValueError(
                "sticky is for canary and gradual rollouts, where clients share the main host; blue-green "
                "previews on its own host and switches at once: remove sticky"
            )
        return sticky


class ServiceSpec(_Model):
    # public: on gateway.listen (and gateway.internal); private: on gateway.internal only (Knative's cluster-local)
    visibility: Literal["public", "private"] = "public"
    hosts: tuple[Host, ...] = ()  # extra hosts besides <service>.<domain>
    template: Template
    traffic: tuple[TrafficTarget, ...] | None = None  # None = 100% to the latest ready revision
    rollout: Rollout | None = None  # None = a new revision takes the traffic as soon as it is ready


ACCESS_LOG_FORMS = "stdout, a file path (relative to the routes file's folder, e.g. logs/access.log) or off"


def _access_log(value: Any) -> str:
    """gateway.accessLog: `stdout`, a file PATH or `off` (YAML reads a bare off as false)."""
    if value is False:
        return "off"
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"expected {ACCESS_LOG_FORMS}, got {describe(value)}")
    if value.strip() != value:
        raise ValueError(f"expected {ACCESS_LOG_FORMS}, got {value!r}: remove the spaces around it")
    return value


def _sampling(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a share of requests to trace from 0 to 1 (e.g. 1.0 or 0.05), got {describe(value)}")
    return float(value)


class GatewayTracing(_Model):
    """gateway.tracing: spans of every request, sent by Envoy over OTLP/gRPC to a collector."""

    otlp: Address  # the collector's OTLP gRPC address, HOST:PORT (e.g. 127.0.0.1:4317)
    sampling: Annotated[float, PlainValidator(_sampling)] = 1.0  # the share of requests traced, 0..1

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping {{otlp: HOST:PORT, sampling: 0..1}}, got {describe(data)}")
        return data


class Gateway(_Model):
    listen: Address = HostPort("127.0.0.1", 8080)
    domain: Domain = "localhost"
    # The listener of private services (Knative's cluster-local gateway): it serves every service, public or private;
    # gateway.listen serves public ones only. None: no private services.
    internal: Address | None = None
    # Knative's tag-header-based-routing: a `ferry-tag` or `Knative-Serving-Tag` header on a service's main host picks
    # that tag's revision. Off by default, as in Knative: it lets any client reach a tagged (or previewed,
    # un-promoted) revision, and feed its rollout analysis.
    tagHeader: Bool = False
    # Which stats ferry's Envoy keeps: `ferry` (what autoscaling, rollouts and status read; a small Envoy at 10,000
    # services) or `all` (Envoy's defaults, ~100 per cluster). Read when ferry starts its Envoy.
    stats: Literal["ferry", "all"] = "ferry"
    # HTTPS: a listener whose certificates are chosen by SNI and reach the gateways over SDS (certificates.py).
    tls: GatewayTls | None = None
    # Request logs: one JSON line per request from Envoy (xds/resources.py ACCESS_LOG_FORMAT; never Authorization
    # or cookies) to Envoy's stdout or to a file (relative to the routes file's folder); off by default.
    accessLog: Annotated[str, PlainValidator(_access_log)] = "off"
    # Traces: spans over OTLP/gRPC to gateway.tracing.otlp, sampled at `sampling` (0..1); None: no tracing.
    tracing: GatewayTracing | None = None

    @model_validator(mode="after")
    def _one_listener_per_address(self) -> Gateway:
        if self.internal is not None and self.internal == self.listen:
            _raise_at([(("internal",), f"gateway.internal is gateway.listen ({self.listen}): private services need a "
                        "listener of their own: give another port, e.g. "
                        f"{HostPort(self.listen.host, self.listen.port + 1)}", str(self.internal))])
        return self


    @model_validator(mode="after")
    def _https_listens_apart(self) -> Gateway:
        if self.tls is not None and self.tls.listen in (self.listen, self.internal):
            which = "gateway.listen" if self.tls.listen == self.listen else "gateway.internal"
            _raise_at([(("tls", "listen"), f"gateway.tls.listen is {which} ({self.tls.listen}): HTTPS needs a "
                        f"listener of its own: give another port, e.g. {HostPort(self.tls.listen.host, 8443 if self.tls.listen.port != 8443 else 8444)}",
                        str(self.tls.listen))])
        return self


_KUBERNETES_FIELD = "{} is only for kind: kubernetes: remove it or set kind: kubernetes"


class Backend(_Model):
    """Where revisions run: local processes (the default) or Kubernetes Deployments in one namespace.
    `backend: kubernetes` is short for `backend: {kind: kubernetes}`."""

    kind: BackendKind = "local"
    namespace: Namespace = "default"  # kubernetes: where revisions run
    kubeconfig: Kubeconfig | None = None  # relative to the routes file's folder, ~ expanded; None = in-cluster or ~/.kube/config
    context: KubeContext | None = None  # a context of the kubeconfig; None = its current context

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"kind": data}
        if isinstance(data, (bool, int, float, list, tuple)):
            raise ValueError(
                f"expected local, kubernetes or a mapping (kind: kubernetes, namespace: ...), got {describe(data)}"
            )
        return data

    @field_validator("namespace", "kubeconfig", "context", mode="wrap")
    @classmethod
    def _only_for_kubernetes(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("kind") == "local":  # runs only when written: defaults are not validated
            raise ValueError(_KUBERNETES_FIELD.format(info.field_name))
        return handler(value)


def _written_kind(data: Any) -> BackendKind | None:
    """The backend kind a routes file's raw data names, for its templates: local when there is no backend;
    None when it is not a valid kind (that error is reported at backend)."""
    if not isinstance(data, dict):
        return None
    backend = data.get("backend")
    kind = backend.get("kind", "local") if isinstance(backend, dict) else backend
    if isinstance(backend, Backend):
        kind = backend.kind
    elif backend is None:
        kind = "local"
    return kind if kind in _BACKEND_KINDS else None


class RoutesFile(_Model):
    gateway: Gateway = Gateway()
    backend: Backend = Backend()
    services: dict[ServiceName, ServiceSpec] = {}

    _empty_means_default = field_validator("gateway", "backend", "services", mode="before")(_none_as_empty)

    @model_validator(mode="wrap")
    @classmethod
    def _templates_know_the_backend(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> RoutesFile:
        with backend_kind(_written_kind(data)):
            return handler(data)


def service_hosts(name: str, spec: ServiceSpec, gateway: Gateway) -> list[str]:
    """Every host that routes to the service's split: <service>.<domain> first, then the extra hosts."""
    return [f"{name}.{gateway.domain}", *spec.hosts]


def tag_host(tag: str, service: str, gateway: Gateway) -> str:
    """The host that sends 100% to a tagged target's revision (Knative's <tag>-<service>.<domain>)."""
    return f"{tag}-{service}.{gateway.domain}"
