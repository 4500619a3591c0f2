"""ferry's services written back: as Knative Service manifests (`ferry export`, `ferry convert` of a routes.yaml),
and as routes.yaml (`ferry convert` of Knative documents).

The inverse of knative.py: a manifest written here reads back to the same ServiceSpec, so applying an export makes
no new revision. Only what differs from ferry's defaults is written (as the template digest counts it), durations
as exact seconds ("60s", "0.25s"), and a revision name only when the template has one. What Knative has no field
for travels in ferry.dev/ annotations (extra hosts, a rollout other than gradual, the scale rates and grace
period); a template of `endpoints` (instances ferry does not run) has no Knative form at all.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import yaml

from .knative_shapes import (
    API_VERSION,
    FERRY_SCALE_ANNOTATIONS,
    HOSTS,
    KIND,
    ROLLOUT,
    ROLLOUT_DURATION,
    SCALE_ANNOTATIONS,
    VISIBILITY,
)
from .schema import DEFAULT_CANARY_STEPS, Backend, RoutesFile, Scale, ServiceSpec, Template

_AUTOSCALING = "autoscaling.knative.dev/"
_DURATIONS = frozenset({"timeout", "responseStartTimeout", "idleTimeout", "stableWindow", "zeroGracePeriod",
                        "scaleDownDelay", "interval", "duration", "maxLatencyP99"})
# Written by a Knative container; backend local records them from a Knative file, but a routes.yaml on local
# refuses them (they would do nothing there).
_CONTAINER_ONLY = ("image", "port", "resources")


class NotExpressible(ValueError):
    """The service has something a Knative Service cannot hold; the message says what and what to do."""


def duration(seconds: float) -> str:
    """Seconds as a duration both Go and ferry read back to the same float: 60 -> "60s", 0.25 -> "0.25s"."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{format(Decimal(repr(float(seconds))), 'f')}s"


def _number(value: float) -> str:
    """An annotation's number, read back exactly (Knative parses them with Go's ParseFloat)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _seconds(value: float) -> int | float:
    """Knative's *Seconds fields are whole numbers; ferry's may hold fractions, which it reads back as written."""
    return int(value) if float(value).is_integer() else value


def default_target(metric: str) -> float:
    return Scale.model_validate({"metric": metric}).target or 0.0


# -- Knative -------------------------------------------------------------------------------------------------------


def service_manifest(name: str, spec: ServiceSpec, backend: Backend) -> dict[str, Any]:
    """The Knative Service of one service: template, annotations that differ from the defaults, traffic as the
    spec says it (not as a rollout or `ferry traffic` moved it)."""
    template = spec.template
    if template.endpoints is not None:
        raise NotExpressible(
            f"service {name} routes to endpoints ({', '.join(map(str, template.endpoints))}), instances ferry does "
            "not run; a Knative Service runs a container: give the template a command (backend local) or an image "
            "(backend kubernetes) to export it")
    metadata: dict[str, Any] = {"name": name}
    if backend.kind == "kubernetes":
        metadata["namespace"] = backend.namespace
    if spec.visibility == "private":
        metadata["labels"] = {VISIBILITY: "cluster-local"}
    annotations: dict[str, str] = {}
    if spec.hosts:
        annotations[HOSTS] = ",".join(spec.hosts)
    if spec.rollout is not None:
        rollout = spec.rollout.model_dump(mode="json", exclude_defaults=True)
        if spec.rollout.strategy == "gradual" and set(rollout) == {"strategy", "duration"}:
            annotations[ROLLOUT_DURATION] = duration(spec.rollout.duration or 0.0)
        else:
            annotations[ROLLOUT] = json.dumps(rollout, separators=(",", ":"))
    if annotations:
        metadata["annotations"] = annotations
    revision: dict[str, Any] = {}
    written = template.model_dump(exclude_defaults=True)
    for ferry, knative in (("concurrency", "containerConcurrency"), ("timeout", "timeoutSeconds"),
                           ("responseStartTimeout", "responseStartTimeoutSeconds"),
                           ("idleTimeout", "idleTimeoutSeconds")):
        if written.get(ferry) is not None:
            revision[knative] = written[ferry] if ferry == "concurrency" else _seconds(written[ferry])
    revision["containers"] = [_container(template)]
    template_metadata: dict[str, Any] = {}
    if template.name is not None:
        template_metadata["name"] = template.name
    scale = scale_annotations(template.scale)
    if scale:
        template_metadata["annotations"] = scale
    out: dict[str, Any] = {"template": {"metadata": template_metadata, "spec": revision} if template_metadata
                           else {"spec": revision}}
    if spec.traffic is not None:
        out["traffic"] = [
            {**({"revisionName": t.revision} if t.revision is not None else {"latestRevision": True}),
             "percent": t.percent, **({"tag": t.tag} if t.tag is not None else {})}
            for t in spec.traffic]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": out}


def scale_annotations(scale: Scale) -> dict[str, str]:
    """template.scale as the revision's annotations: the fields that differ from Knative's defaults only."""
    written = scale.model_dump(exclude_defaults=True)
    if written.get("target") == default_target(scale.metric):
        del written["target"]  # filled in from the metric when left out
    annotations = {}
    for field, value in written.items():
        key, kind = ((_AUTOSCALING + SCALE_ANNOTATIONS[field][0], SCALE_ANNOTATIONS[field][2])
                     if field in SCALE_ANNOTATIONS else FERRY_SCALE_ANNOTATIONS[field])
        annotations[key] = (str(value) if kind in ("int", "metric") else duration(value) if kind == "duration"
                            else _number(value))
    return annotations


def _container(template: Template) -> dict[str, Any]:
    container: dict[str, Any] = {}
    if template.image is not None:
        container["image"] = template.image
    if template.command is not None:
        container["command"] = list(template.command)
    if template.args is not None:
        container["args"] = list(template.args)
    if template.env:
        container["env"] = [{"name": name, "value": value} for name, value in template.env.items()]
    port: dict[str, Any] = {"name": "h2c"} if template.protocol == "h2c" else {}
    if template.port is not None:
        port["containerPort"] = template.port
    if port:
        container["ports"] = [port]
    if template.readiness is not None:
        path = template.readiness.path
        container["readinessProbe"] = {"httpGet": {"path": path}} if path is not None else {"tcpSocket": {}}
    if template.resources is not None:
        container["resources"] = template.resources.model_dump(mode="json", exclude_defaults=True)
    return container


def manifests(routes: RoutesFile) -> list[dict[str, Any]]:
    """Every service of a routes file as a Knative Service; NotExpressible names each one that cannot be."""
    documents, problems = [], []
    for name, spec in routes.services.items():
        try:
            documents.append(service_manifest(name, spec, routes.backend))
        except NotExpressible as err:
            problems.append(str(err))
    if problems:
        raise NotExpressible("\n".join(problems))
    return documents


# -- routes.yaml ---------------------------------------------------------------------------------------------------


def routes_document(routes: RoutesFile) -> tuple[dict[str, Any], list[str]]:
    """A routes file's data as a routes.yaml writes it (defaults left out), and notes on what it leaves out: on
    backend local, a Knative container's image, port and resources (a routes.yaml on local refuses them)."""
    data: dict[str, Any] = {}
    gateway = routes.gateway.model_dump(mode="json", exclude_defaults=True)
    if gateway:
        data["gateway"] = gateway
    backend = routes.backend.model_dump(mode="json", exclude_defaults=True)
    if backend:
        data["backend"] = backend["kind"] if set(backend) == {"kind"} else backend
    notes: list[str] = []
    services: dict[str, Any] = {}
    for name, spec in routes.services.items():
        service = spec.model_dump(mode="json", exclude_defaults=True)
        template = service["template"]
        scale = template.get("scale", {})
        if scale.get("target") == default_target(spec.template.scale.metric):
            del scale["target"]
        if "scale" in template and not scale:
            del template["scale"]
        rollout = service.get("rollout", {})
        if rollout.get("strategy") == "canary" and tuple(rollout.get("steps", ())) == DEFAULT_CANARY_STEPS:
            del rollout["steps"]
        if routes.backend.kind == "local":
            left = {key: template.pop(key) for key in _CONTAINER_ONLY if key in template}
            if left:
                notes.append(f"service {name}: left out {', '.join(f'{k} {v}' for k, v in left.items())}: backend "
                             "local runs command and does not pull images (with --backend kubernetes they are kept)")
        services[name] = _readable(service)
    data["services"] = services
    return data, notes


def _readable(value: Any, key: str = "") -> Any:
    """Durations as "60s", whole floats as integers (ferry's number fields take both): read back the same."""
    if isinstance(value, dict):
        return {k: _readable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_readable(v) for v in value]
    if isinstance(value, float) and key in _DURATIONS:
        return duration(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


class _Dumper(yaml.SafeDumper):
    """Block mappings, lists of scalars on one line ([python3, app.py]), long lines kept whole."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump(documents: list[dict[str, Any]]) -> str:
    """YAML documents, `---` between them."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                         width=1 << 16)
