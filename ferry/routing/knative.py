"""Knative Service manifests (serving.knative.dev/v1) read as routes.yaml.

Each document is translated into the routes.yaml data shape (`services.<metadata.name>`), remembering for every
routes path it fills the Knative path it came from. The loader then validates the result with the same RoutesFile
and cross checks as a routes.yaml, and every problem found there is reported at its Knative origin: file, line,
Knative path (`services.hello.template.scale.min` is the `autoscaling.knative.dev/min-scale` annotation). What
ferry cannot honour (a second container, valueFrom, volumes, liveness probes, unknown annotations or fields, ...)
is a problem of its own, never dropped; all of them are reported in one pass.

Paths: in a file of several documents a path starts with the document's position in the file, from 0, as YAML
counts documents (`---` starts the next one; a `---` on the first line does not add one):
`[1].spec.template.spec.containers[1]`. A file of one Service has plain paths: `spec.traffic[0].percent`.

The mapping back (routes.yaml -> Knative, for `ferry export` and `ferry convert`) is knative_export.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import Node

from .errors import Problem, parse_path
from .knative_revision import read_template
from .knative_shapes import (
    API_VERSION,
    AUTOSCALING,
    FERRY_SCALE_BY_KEY,
    GO_DURATION,
    HOSTS,
    INFORMATIONAL,
    KIND,
    ROLLOUT,
    ROLLOUT_DURATION,
    SERVER_SET,
    VISIBILITY,
    Document,
    keys,
    mapping,
    strings,
    unknown_annotation,
)
from .messages import describe
from .overrides import Overrides

_ROUTES_PATH = re.compile(r"services\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+|\[\d+\])*")
# routes.yaml words in ferry's messages -> what a Knative file writes instead
_WORDING = (
    ("add gateway.internal (e.g. internal: 127.0.0.1:8081) or make the service public",
     f"start ferry with --internal HOST:PORT (e.g. --internal 127.0.0.1:8081), or remove the {VISIBILITY} label"),
    ("choose another template.name", "choose another spec.template.metadata.name"),
    ("choose a new template.name", "choose a new spec.template.metadata.name"),
    ("readiness: {} (a TCP connect)", "readinessProbe: {tcpSocket: {}} (a TCP connect)"),
    ("keep revision to pin it", "keep revisionName to pin it"),
    ("add revision: <name> or", "add revisionName: <name> or"),
)


def is_candidate(text: str) -> bool:
    """Whether `text` may hold Knative documents: a cheap look, so that a routes.yaml is parsed once."""
    return "apiVersion" in text or text.startswith("kind") or "\nkind" in text


_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)


def split_documents(text: str) -> list[tuple[int, str]] | None:
    """The text's documents as text blocks, each from its `---` line on, with its first line (from 0), without
    parsing: a `---` at the start of a line always starts a document (no scalar holds one). None for what a plain
    split cannot follow: document end markers (...) and directives (%YAML)."""
    if text.startswith(("...", "%")) or "\n..." in text or "\n%" in text:
        return None
    cuts = [m.start() for m in _DOCUMENT_START.finditer(text)]
    if not cuts or cuts[0] != 0:
        cuts.insert(0, 0)
    blocks, line = [], 0
    for start, end in zip(cuts, [*cuts[1:], len(text)], strict=True):
        blocks.append((line, text[start:end]))
        line += text.count("\n", start, end)
    return blocks


def is_knative(documents: list[tuple[Any, Node]]) -> bool:
    """A file of Knative documents: any document names an apiVersion or a kind (the rest must then too)."""
    return any(isinstance(data, dict) and ("apiVersion" in data or "kind" in data) for data, _ in documents)


@dataclass
class Translation:
    services: dict[str, dict[str, Any]]  # routes.yaml's `services:` data
    problems: list[Problem]  # what ferry cannot honour, located in the Knative documents
    documents: dict[str, Document] = field(default_factory=dict, repr=False)  # service -> its document
    source: tuple[list[tuple[Any, Node]], Overrides] | None = field(default=None, repr=False)  # to translate again

    def locate(self, problems: Iterable[Problem]) -> list[Problem]:
        """Problems found in the routes.yaml data (routes paths, no lines), at their Knative origins."""
        problems = list(problems)
        if problems and self.source is not None:  # translated without origins: once more, keeping them
            return translate(*self.source, locating=True).locate(problems)
        located = []
        for p in problems:
            loc = parse_path(p.path)
            document = self.documents.get(str(loc[1])) if len(loc) >= 2 and loc[0] == "services" else None
            if document is None:  # the gateway or backend, from ferry's flags: no place in this file
                located.append(Problem(p.path, self._reword(p.message), p.line))
                continue
            if loc[2:] in document.suppressed:
                continue
            where, message = document.knative(loc[2:], p.message)
            located.append(Problem(document.path(where), self._reword(message), document.line(where)))
        return located

    def _reword(self, message: str) -> str:
        message = _ROUTES_PATH.sub(lambda m: self._path(m.group(0)), message)
        for routes, knative in _WORDING:
            message = message.replace(routes, knative)
        return message

    def _path(self, routes_path: str) -> str:
        loc = parse_path(routes_path)
        document = self.documents.get(str(loc[1])) if len(loc) >= 2 else None
        return document.path(document.knative(loc[2:], "")[0]) if document is not None else routes_path


def translate(documents: list[tuple[Any, Node]], overrides: Overrides, *, locating: bool = False) -> Translation:
    """The routes.yaml `services:` of a file of Knative Service documents, with every problem ferry finds in them
    that the routes.yaml schema would not (the schema's own come later, through Translation.locate, which
    translates again `locating`: keeping where each routes path came from costs a valid file for nothing)."""
    numbered = sum(data is not None for data, _ in documents) > 1
    translation = Translation({}, [], source=None if locating else (documents, overrides))
    for index, (data, node) in enumerate(documents):
        if data is None:
            continue  # an empty document (a trailing ---)
        document = Document(index, node, numbered, locating=locating)
        read = _service(document, data, overrides)
        if read is not None:
            name, raw = read
            first = translation.documents.get(name)
            if first is not None:
                document.problem(("metadata", "name"), f"service {name} is already defined by document "
                                 f"{first.path(())} (line {first.line(())}): rename one, or remove one")
            else:
                translation.services[name] = raw
                translation.documents[name] = document
        translation.problems += document.problems
    return translation


# -- the Service ------------------------------------------------------------------------------------------------


def _service(doc: Document, data: Any, overrides: Overrides) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(data, dict):
        doc.problem((), f"expected a Knative Service (a mapping with apiVersion: {API_VERSION}, kind: Service, "
                        f"metadata and spec), got {describe(data)}")
        return None
    if not _is_service(doc, data):
        return None
    keys(doc, data, (), ("apiVersion", "kind", "metadata", "spec"), ignored=("status",))
    metadata = mapping(doc, data, "metadata", ())
    spec = mapping(doc, data, "spec", ())
    if metadata is None:
        return None
    keys(doc, metadata, ("metadata",), ("name", "namespace", "labels", "annotations"), ignored=SERVER_SET,
          refused={"generateName": "ferry names a service by metadata.name: write name: <service name> instead"})
    name = metadata.get("name")
    if name is None:
        doc.problem(("metadata",), "required field 'name' is missing: add name: <service name> (a DNS label, "
                                   "e.g. hello)")
        return None
    if not isinstance(name, str):
        doc.problem(("metadata", "name"), f"expected a string, got {describe(name)}")
        return None
    _namespace(doc, metadata.get("namespace"), overrides)
    raw: dict[str, Any] = {}
    for key, value in strings(doc, metadata, "labels", ("metadata",)).items():
        loc = ("metadata", "labels", key)
        if key == VISIBILITY and value == "cluster-local":
            raw["visibility"] = "private"
            doc.origin(("visibility",), loc)
        elif key == VISIBILITY:
            doc.problem(loc, f"expected cluster-local (a private service, served on --internal's listener only), "
                             f"got {value!r}: write cluster-local, or remove the label for a public service")
        elif key == "serving.knative.dev/visibility":
            doc.problem(loc, f"this is the visibility label's old name: write {VISIBILITY}: cluster-local")
        else:
            doc.problem(loc, f"ferry keeps no labels but {VISIBILITY} (nothing of ferry selects by them): remove it")
    _service_annotations(doc, strings(doc, metadata, "annotations", ("metadata",)), raw)
    if spec is None:
        doc.suppressed.add(("template",))
        return name, raw
    keys(doc, spec, ("spec",), ("template", "traffic"))
    template = mapping(doc, spec, "template", ("spec",))
    raw["template"] = read_template(doc, template, overrides) if template is not None else {}
    doc.origin(("template",), ("spec", "template") if template is not None else ("spec",))
    if template is None:
        doc.suppressed.add(("template",))
    if "traffic" in spec:
        raw["traffic"] = _traffic(doc, spec["traffic"])
    return name, raw


def _is_service(doc: Document, data: dict[str, Any]) -> bool:
    """Whether the document is a Service ferry reads. An older version of it (v1beta1) is read all the same (its
    spec is the same), with a problem saying so; anything else is one problem, and nothing more is said of it."""
    api, kind = data.get("apiVersion"), data.get("kind")
    if api == API_VERSION and kind == KIND:
        return True
    if api is None and kind is None:
        routes = [key for key in ("services", "gateway", "backend") if key in data]
        if routes:
            doc.problem((), f"this document is a routes.yaml mapping (it has {', '.join(routes)}:) in a file of Knative "
                            "Services, and a file holds one format: put it in a file of its own, or write its "
                            "services as Knative Services (`ferry convert` prints them)")
        else:
            doc.problem((), f"expected a Knative Service: add apiVersion: {API_VERSION} and kind: {KIND}")
        return False
    if kind == KIND and api is None:
        doc.problem((), f"required field 'apiVersion' is missing: add apiVersion: {API_VERSION}")
        return True
    if kind == KIND and isinstance(api, str) and api.startswith("serving.knative.dev/"):
        doc.problem(("apiVersion",), f"apiVersion {api} is an older version of Knative's Service; ferry reads "
                                     f"{API_VERSION} (its spec is the same): write apiVersion: {API_VERSION}")
        return True
    if kind is None:
        doc.problem((), f"required field 'kind' is missing: add kind: {KIND}")
        return api == API_VERSION
    if kind == "List":
        doc.problem(("kind",), "a List (what `kubectl get -o yaml` prints for several objects): write each of its "
                               "items as a document of its own, with --- between them")
    elif api == API_VERSION and kind in ("Configuration", "Route", "Revision"):
        doc.problem(("kind",), f"ferry reads kind Service, not {kind}: a Service holds its Configuration "
                               "(spec.template) and its Route (spec.traffic): write them as one Service")
    else:
        what = f"{api} {kind}" if api is not None else f"kind {kind}"
        doc.problem(("kind",), f"ferry reads Knative Services ({API_VERSION} {KIND}), not {what}: remove this "
                               "document, or keep it in a file of its own")
    return False


def _namespace(doc: Document, namespace: Any, overrides: Overrides) -> None:
    expected = overrides.expected_namespace
    if namespace is None or namespace == expected:
        return
    if not isinstance(namespace, str):
        doc.problem(("metadata", "namespace"), f"expected a string, got {describe(namespace)}")
        return
    given = "from --namespace" if overrides.namespace else "the default, without --namespace"
    doc.problem(("metadata", "namespace"), f"namespace {namespace!r} is not the one ferry serves, {expected} ({given}): "
                f"run ferry with --namespace {namespace}, or remove namespace")


def _service_annotations(doc: Document, annotations: dict[str, str], raw: dict[str, Any]) -> None:
    base = ("metadata", "annotations")
    for key, value in annotations.items():
        loc = (*base, key)
        if key in INFORMATIONAL:
            continue
        if key in (ROLLOUT_DURATION, ROLLOUT) and "rollout" in raw:
            doc.problem(loc, f"{ROLLOUT_DURATION} and {ROLLOUT} both set the rollout: keep one")
        elif key == ROLLOUT_DURATION:
            if not GO_DURATION.fullmatch(value) and value != "0":
                doc.problem(loc, f"{key} takes a duration with a unit, e.g. \"120s\" or \"2m\", got {value!r}")
            elif re.fullmatch(r"[0.]+[a-z]*", value) is None:  # 0 (any unit) is Knative's "no gradual rollout"
                raw["rollout"] = {"strategy": "gradual", "duration": value}
                doc.origin(("rollout",), loc)
                doc.origin(("rollout", "duration"), loc, name=key)
        elif key == ROLLOUT:
            rollout = _json_mapping(value)
            if rollout is None:
                doc.problem(loc, f"{key} takes a rollout block as a JSON mapping, e.g. "
                                 "'{\"strategy\": \"canary\", \"steps\": [10, 50, 100]}'")
            else:
                raw["rollout"] = rollout
                doc.origin(("rollout",), loc, below="message")
        elif key == HOSTS:
            raw["hosts"] = [host.strip() for host in value.split(",")]
            doc.origin(("hosts",), loc)
        elif key.startswith(AUTOSCALING) or key in FERRY_SCALE_BY_KEY:
            doc.problem(loc, "autoscaling is set per revision: move this annotation to spec.template.metadata."
                             "annotations")
        else:
            doc.problem(loc, unknown_annotation(key, (ROLLOUT_DURATION, HOSTS, ROLLOUT)))


def _json_mapping(value: str) -> dict[str, Any] | None:
    try:
        data = json.loads(value)
    except ValueError:
        try:
            data = yaml.safe_load(value)  # a YAML flow mapping: {strategy: canary}
        except yaml.YAMLError:
            return None
    return data if isinstance(data, dict) else None


def _traffic(doc: Document, traffic: Any) -> Any:
    doc.origin(("traffic",), ("spec", "traffic"))
    if not isinstance(traffic, list):
        return traffic  # the schema says it is not a list, at spec.traffic
    targets: list[Any] = []
    for i, target in enumerate(traffic):
        loc = ("spec", "traffic", i)
        doc.origin(("traffic", i), loc)
        if not isinstance(target, dict):
            targets.append(target)
            continue
        keys(doc, target, loc, ("revisionName", "latestRevision", "percent", "tag"), refused={
            "configurationName": "a Service's traffic goes to its own revisions: use revisionName or latestRevision",
            "url": "url is Knative's report of a tag's address (status), not something to ask for: remove it"})
        routed: dict[str, Any] = {}
        for knative, ferry in (("revisionName", "revision"), ("latestRevision", "latestRevision"),
                               ("percent", "percent"), ("tag", "tag")):
            if knative in target:
                routed[ferry] = target[knative]
                doc.origin(("traffic", i, ferry), (*loc, knative))
        targets.append(routed)
    return targets


