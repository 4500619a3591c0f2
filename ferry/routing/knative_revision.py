"""A Knative Service's revision template (spec.template) as routes.yaml's `template:`: its annotations as
`scale:`, its one container as command (or image), env, port, protocol, readiness and resources."""

from __future__ import annotations

import re
from typing import Any

from .errors import Loc
from .knative_shapes import (
    AUTOSCALING,
    FERRY_SCALE_BY_KEY,
    HOSTS,
    INFORMATIONAL,
    KPA,
    ROLLOUT,
    ROLLOUT_DURATION,
    SCALE_ANNOTATIONS,
    SCALE_BY_KEY,
    Document,
    GO_DURATION,
    keys,
    mapping,
    strings,
    unknown_annotation,
)
from .messages import describe
from .overrides import Overrides

_SCALE_KNOWN = (*(AUTOSCALING + key for key in (*SCALE_BY_KEY, "class")), *FERRY_SCALE_BY_KEY)
_SCALE_SHOWN = (*(new for new, _, _ in SCALE_ANNOTATIONS.values()), "class")  # in messages (old names too)
_SCALE_REFUSED = {
    "scale-to-zero-pod-retention-period": "ferry keeps no instance past the scale to zero (the activator fronts a "
    "revision for ferry.dev/scale-to-zero-grace-period before it reaches zero): remove it",
    "metric-aggregation-algorithm": "ferry averages its windows linearly (Knative's default): remove it",
}
_SCALE_REFUSED |= {"scaleToZeroPodRetentionPeriod": _SCALE_REFUSED["scale-to-zero-pod-retention-period"],
                   "metricAggregationAlgorithm": _SCALE_REFUSED["metric-aggregation-algorithm"]}
_GO_INT = re.compile(r"[+-]?\d+")
_GO_FLOAT = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf(?:inity)?|NaN)")
_BAD = object()  # a value that could not be converted (the problem is recorded)
# ferry's words in a message about the scale as a whole (min > max), and about a *Seconds field (a number here)
_SCALE_WORDS = tuple((name, SCALE_ANNOTATIONS[name][0]) for name in ("min", "max", "initial", "activation"))
_SECONDS_WORDS = (("e.g. 300s", "e.g. 300"), ("e.g. 30s", "e.g. 30"), ("e.g. 0s (none) or 60s", "e.g. 0 (none) or 60"),
                  ("1h (3600s)", "3600"))
_REVISION_REFUSED = {
    "volumes": "ferry mounts no volumes (a local instance reads this machine's files; ferry's Deployments have "
    "none): remove them",
    "serviceAccountName": "ferry's Deployments run as the namespace's default service account: remove it",
    "imagePullSecrets": "ferry's Deployments pull with the namespace's default credentials: remove it",
    "initContainers": "ferry runs one container per revision, and no init containers: remove them",
}
_CONTAINER_REFUSED = {
    "livenessProbe": "ferry runs no liveness probe (an instance whose process exits is restarted, and one not "
    "ready leaves the endpoints): remove it",
    "startupProbe": "ferry runs no startup probe (readinessProbe keeps traffic away until the instance is "
    "ready): remove it",
    "envFrom": "envFrom reads a ConfigMap or Secret, which ferry has none of: list the variables under env, each "
    "with its value",
    "volumeMounts": "ferry mounts no volumes: remove them",
    "workingDir": "ferry runs a local instance in this file's folder, and a container in its image's working "
    "directory: remove it",
}
_PROBE_REFUSED = {
    "exec": "ferry probes readiness over HTTP (httpGet) or TCP (tcpSocket), not by running a command: use one of "
    "those",
    "grpc": "ferry probes readiness over HTTP (httpGet) or TCP (tcpSocket), not gRPC: use tcpSocket: {} for a "
    "gRPC server",
    **{key: f"ferry's readiness probe keeps its own timing (it probes until the first success): remove {key}"
       for key in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold",
                   "terminationGracePeriodSeconds")},
}


def read_template(doc: Document, template: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = ("spec", "template")
    keys(doc, template, base, ("metadata", "spec"))
    metadata = mapping(doc, template, "metadata", base, required=False)
    if metadata is not None:
        mloc = (*base, "metadata")
        keys(doc, metadata, mloc, ("name", "annotations"), ignored=("creationTimestamp",), refused={
            "labels": "ferry keeps no labels on a revision (nothing of ferry selects by them): remove them",
            "namespace": "a revision is in its Service's namespace: remove it"})
        if "name" in metadata:
            out["name"] = metadata["name"]
            doc.origin(("template", "name"), (*mloc, "name"))
        scale = _scale(doc, strings(doc, metadata, "annotations", mloc), (*mloc, "annotations"))
        if scale:
            out["scale"] = scale
    spec = mapping(doc, template, "spec", base)
    if spec is None:
        doc.suppressed.add(("template",))
        return out
    sloc = (*base, "spec")
    keys(doc, spec, sloc, ("containers", "containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds",
                            "idleTimeoutSeconds", "enableServiceLinks"), refused=_REVISION_REFUSED)
    if spec.get("enableServiceLinks", False) is not False:
        doc.problem((*sloc, "enableServiceLinks"), "ferry gives an instance no variables of other services (as "
                                                   "enableServiceLinks: false does): remove it")
    for knative, ferry in (("containerConcurrency", "concurrency"), ("timeoutSeconds", "timeout"),
                           ("responseStartTimeoutSeconds", "responseStartTimeout"),
                           ("idleTimeoutSeconds", "idleTimeout")):
        if knative not in spec:
            continue
        value = spec[knative]
        if knative != "containerConcurrency" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            doc.problem((*sloc, knative), f"{knative} is a number of seconds, e.g. 300, got {describe(value)}")
            continue
        out[ferry] = value
        doc.origin(("template", ferry), (*sloc, knative), name=knative, words=_SECONDS_WORDS)
    _container(doc, spec, sloc, overrides, out)
    return out


def _scale(doc: Document, annotations: dict[str, str], base: Loc) -> dict[str, Any]:
    """template.scale from the revision's annotations; the annotations mapping is where model-wide problems go."""
    scale: dict[str, Any] = {}
    given: dict[str, str] = {}  # scale field -> the annotation that set it
    doc.origin(("template", "scale"), base, words=_SCALE_WORDS)
    for key, value in annotations.items():
        loc = (*base, key)
        if key in INFORMATIONAL:
            continue
        short = key.removeprefix(AUTOSCALING) if key.startswith(AUTOSCALING) else None
        entry = SCALE_BY_KEY.get(short) if short is not None else FERRY_SCALE_BY_KEY.get(key)
        if short == "class":
            if value != KPA:
                doc.problem(loc, f"ferry autoscales as Knative's KPA ({KPA}: concurrency or rps, to zero and back); "
                                 f"{value!r} is not run by ferry: write {KPA}, or remove the annotation"
                            if value.startswith("hpa.") else f"expected {KPA}, got {value!r}")
            continue
        if entry is None:
            if short in _SCALE_REFUSED:
                doc.problem(loc, _SCALE_REFUSED[short])
            elif key in (ROLLOUT_DURATION, HOSTS, ROLLOUT):
                doc.problem(loc, "this annotation is the Service's: move it to the Service's metadata.annotations")
            else:
                doc.problem(loc, unknown_annotation(key, _SCALE_KNOWN, _SCALE_SHOWN if short is not None else None))
            continue
        name, kind = entry
        if name in given:
            doc.problem(loc, f"{given[name]} and {key} are the same setting under two names: keep one")
            continue
        given[name] = key
        converted = _convert(doc, loc, key, value, kind)
        if converted is not _BAD:
            scale[name] = converted
            doc.origin(("template", "scale", name), loc, name=key)
    return scale


def _convert(doc: Document, loc: Loc, key: str, value: str, kind: str) -> Any:
    """An annotation's text as the scale field takes it (Knative parses them as Go does); _BAD when it cannot be."""
    if kind == "int" and _GO_INT.fullmatch(value):
        return int(value)
    if kind == "float" and _GO_FLOAT.fullmatch(value):
        return float(value)
    if kind == "duration" and (GO_DURATION.fullmatch(value) or value == "0"):
        return value if value != "0" else 0
    if kind == "metric":
        if value in ("cpu", "memory"):
            doc.problem(loc, f"metric {value} is scaled by Knative's HPA class, which ferry does not run: ferry "
                             "scales on concurrency or rps")
            return _BAD
        return value
    example = {"int": ("a whole number", '"3"'), "float": ("a number", '"100"'),
               "duration": ("a duration with a unit", '"60s" or "1m30s"')}[kind]
    doc.problem(loc, f"{key} takes {example[0]} in a string, e.g. {example[1]}, got {value!r}")
    return _BAD


def _container(doc: Document, spec: dict[str, Any], sloc: Loc, overrides: Overrides, out: dict[str, Any]) -> None:
    loc = (*sloc, "containers")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        doc.problem(loc if "containers" in spec else sloc,
                    "required field 'containers' is missing: add one container, e.g. containers: [{image: ..., "
                    "command: [...]}]" if "containers" not in spec else
                    f"expected a list of one container, got {describe(containers)}" if not isinstance(containers, list)
                    else "containers is empty: add one container" if not containers else
                    f"expected a container (a mapping with image, command, ...), got {describe(containers[0])}")
        doc.suppressed.add(("template",))
        return
    for i in range(1, len(containers)):
        doc.problem((*loc, i), "a second container (a sidecar): ferry runs one container per revision: remove it, "
                               "or do its work in the first one")
    container, cloc = containers[0], (*loc, 0)
    keys(doc, container, cloc, ("name", "image", "command", "args", "env", "ports", "readinessProbe", "resources"),
          refused=_CONTAINER_REFUSED)
    local = overrides.kind == "local"
    for key in ("image", "resources", *(() if local else ("command", "args"))):
        if key in container:
            out[key] = container[key]
            doc.origin(("template", key), (*cloc, key), below="append")
    if local:
        _argv(doc, container, cloc, out)
    elif "image" not in container:
        doc.problem(cloc, "no image: on backend kubernetes a revision runs its container's image: add image: "
                          "<reference>, e.g. ghcr.io/me/hello:1.0")
        doc.suppressed.add(("template",))
    _env(doc, container.get("env"), (*cloc, "env"), out)
    _port(doc, container.get("ports"), (*cloc, "ports"), out)
    _readiness(doc, container.get("readinessProbe"), (*cloc, "readinessProbe"), out)


def _argv(doc: Document, container: dict[str, Any], cloc: Loc, out: dict[str, Any]) -> None:
    """Backend local runs the container's command and args as the instance's argv (the image is not pulled)."""
    command, args = container.get("command"), container.get("args", [])
    if command is None:
        doc.problem(cloc, "no command: on backend local ferry runs the container's command as a process and does not "
                          "pull its image: add command: [program, args...] (relative paths resolve against this "
                          "file's folder), or run ferry with --backend kubernetes")
        doc.suppressed.add(("template",))
        return
    for key, value in (("command", command), ("args", args)):
        if not isinstance(value, list):
            doc.problem((*cloc, key), f"expected a list, got {describe(value)}" + (
                f": write it as a YAML list, e.g. [{', '.join(value.split())}]" if isinstance(value, str) else ""))
            doc.suppressed.add(("template",))
            return
    out["command"] = [*command, *args]
    doc.origin(("template", "command"), (*cloc, "command"))
    for i in range(len(command) + len(args)):
        doc.origin(("template", "command", i), (*cloc, "command", i) if i < len(command)
                   else (*cloc, "args", i - len(command)))


def _env(doc: Document, env: Any, loc: Loc, out: dict[str, Any]) -> None:
    if env is None:
        return
    doc.origin(("template", "env"), loc)
    if not isinstance(env, list):
        doc.problem(loc, f"expected a list of {{name: ..., value: ...}}, got {describe(env)}")
        return
    variables: dict[Any, Any] = {}
    first: dict[Any, int] = {}
    for i, item in enumerate(env):
        iloc = (*loc, i)
        if not isinstance(item, dict):
            doc.problem(iloc, f"expected {{name: ..., value: ...}}, got {describe(item)}")
            continue
        keys(doc, item, iloc, ("name", "value"), refused={"valueFrom": "valueFrom reads a Secret, ConfigMap or "
              "field of the Pod, which ferry has none of: write the value itself with value: ..."})
        name = item.get("name")
        if name is None or isinstance(name, (dict, list)):
            doc.problem(iloc if name is None else (*iloc, "name"), "required field 'name' is missing: add it"
                        if name is None else f"expected a string, got {describe(name)}")
            continue
        if name in first:
            doc.problem((*iloc, "name"), f"{name} is already set by env[{first[name]}] (Kubernetes would keep the "
                                         "last): remove one")
            continue
        first[name] = i
        if "valueFrom" not in item:
            variables[name] = item.get("value", "")  # Kubernetes: no value is the empty string
            doc.origin(("template", "env", name), iloc)
    out["env"] = variables


def _port(doc: Document, ports: Any, loc: Loc, out: dict[str, Any]) -> None:
    if ports is None:
        return
    if not isinstance(ports, list):
        doc.problem(loc, f"expected a list of one port, got {describe(ports)}")
        return
    for i in range(1, len(ports)):
        doc.problem((*loc, i), "Knative serves one port per container: remove it")
    if not ports or not isinstance(ports[0], dict):
        if ports:
            doc.problem((*loc, 0), f"expected a port (containerPort, name), got {describe(ports[0])}")
        return
    port, ploc = ports[0], (*loc, 0)
    keys(doc, port, ploc, ("containerPort", "name", "protocol"), refused={
        key: f"the gateway reaches the container's port itself: remove {key}" for key in ("hostPort", "hostIP")})
    name = port.get("name")
    if name == "h2c":
        out["protocol"] = "h2c"
        doc.origin(("template", "protocol"), (*ploc, "name"))
    elif name not in (None, "", "http1"):
        doc.problem((*ploc, "name"), f"expected h2c (HTTP/2 without TLS, gRPC) or http1, got {describe(name)}: the "
                                     "port's name says which protocol the container speaks")
    if port.get("protocol", "TCP") != "TCP":
        doc.problem((*ploc, "protocol"), f"expected TCP, got {describe(port['protocol'])}")
    if "containerPort" in port:
        out["port"] = port["containerPort"]
        doc.origin(("template", "port"), (*ploc, "containerPort"))


def _readiness(doc: Document, probe: Any, loc: Loc, out: dict[str, Any]) -> None:
    if probe is None:
        return
    doc.origin(("template", "readiness"), loc)
    if not isinstance(probe, dict):
        doc.problem(loc, f"expected a probe (httpGet or tcpSocket), got {describe(probe)}")
        return
    keys(doc, probe, loc, ("httpGet", "tcpSocket", "successThreshold"), refused=_PROBE_REFUSED)
    if probe.get("successThreshold", 1) != 1:
        doc.problem((*loc, "successThreshold"), "ferry takes an instance as ready at its first successful probe "
                                                "(successThreshold 1): remove it")
    if "httpGet" in probe and "tcpSocket" in probe:
        doc.problem(loc, "give httpGet or tcpSocket, not both")
    serving = out.get("port")
    for kind in ("httpGet", "tcpSocket"):
        action = probe.get(kind)
        if kind not in probe:
            continue
        if not isinstance(action, dict):
            doc.problem((*loc, kind), f"expected a mapping, got {describe(action)}")
            continue
        allowed = ("path", "port", "scheme") if kind == "httpGet" else ("port",)
        keys(doc, action, (*loc, kind), allowed, refused={
            "httpHeaders": "ferry's readiness GET sends no extra headers: remove them",
            "host": "ferry probes the instance's own address: remove host"})
        if action.get("port", 0) not in (0, serving or 8080, "h2c", "http1") or isinstance(action.get("port"), bool):
            doc.problem((*loc, kind, "port"), "ferry probes the port the container serves on: remove port")
        if action.get("scheme", "HTTP") != "HTTP":
            doc.problem((*loc, kind, "scheme"), f"expected HTTP, got {describe(action['scheme'])}")
    http = probe.get("httpGet")
    if isinstance(http, dict):
        out["readiness"] = {"path": http.get("path", "/")}  # Kubernetes' default path
        doc.origin(("template", "readiness", "path"), (*loc, "httpGet", "path") if "path" in http else (*loc, "httpGet"))
    else:
        out["readiness"] = {}  # a TCP connect, Knative's default probe


