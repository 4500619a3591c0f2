"""The pieces knative.py and knative_revision.py share: Knative's names, one document being read (its problems and
where each routes.yaml path came from), and the checks of a mapping's shape, each problem in Knative's terms."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from yaml.nodes import Node

from . import yamlsource
from .errors import Loc, Problem, format_path
from .messages import describe

API_VERSION = "serving.knative.dev/v1"
KIND = "Service"
VISIBILITY = "networking.knative.dev/visibility"
ROLLOUT_DURATION = "serving.knative.dev/rollout-duration"
AUTOSCALING = "autoscaling.knative.dev/"
KPA = "kpa.autoscaling.knative.dev"
# ferry's own settings that Knative has no field for, so that a routes.yaml service written as a Knative Service
# comes back whole (knative_export.py writes them; Knative ignores annotations outside its own domains).
HOSTS = "ferry.dev/hosts"  # extra hosts, comma-separated (Knative maps domains with DomainMapping objects)
ROLLOUT = "ferry.dev/rollout"  # a rollout: block as JSON (Knative has only gradual's rollout-duration)

# template.scale field -> (annotation under autoscaling.knative.dev/, its old camelCase name, value type)
SCALE_ANNOTATIONS: dict[str, tuple[str, str | None, str]] = {
    "min": ("min-scale", "minScale", "int"),
    "max": ("max-scale", "maxScale", "int"),
    "initial": ("initial-scale", "initialScale", "int"),
    "activation": ("activation-scale", None, "int"),
    "metric": ("metric", None, "metric"),
    "target": ("target", None, "float"),
    "utilization": ("target-utilization-percentage", "targetUtilizationPercentage", "float"),
    "stableWindow": ("window", None, "duration"),
    "panicWindowPercent": ("panic-window-percentage", "panicWindowPercentage", "float"),
    "panicThreshold": ("panic-threshold-percentage", "panicThresholdPercentage", "float"),
    "scaleDownDelay": ("scale-down-delay", "scaleDownDelay", "duration"),
    "burstCapacity": ("target-burst-capacity", "targetBurstCapacity", "float"),
}
# Knative sets these only in its config-autoscaler ConfigMap, for the whole cluster; ferry takes them per revision.
FERRY_SCALE_ANNOTATIONS: dict[str, tuple[str, str]] = {
    "maxScaleUpRate": ("ferry.dev/max-scale-up-rate", "float"),
    "maxScaleDownRate": ("ferry.dev/max-scale-down-rate", "float"),
    "zeroGracePeriod": ("ferry.dev/scale-to-zero-grace-period", "duration"),
}
SCALE_BY_KEY = {key: (name, kind) for name, (new, old, kind) in SCALE_ANNOTATIONS.items()
                 for key in (new, old) if key is not None}
FERRY_SCALE_BY_KEY = {key: (name, kind) for name, (key, kind) in FERRY_SCALE_ANNOTATIONS.items()}
# Written by kubectl, kn or Knative's webhook to say who did what: they ask nothing of ferry.
INFORMATIONAL = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", "serving.knative.dev/creator",
    "serving.knative.dev/lastModifier", "client.knative.dev/user-image", "client.knative.dev/updateTimestamp",
})
# What the API server writes into an object it stores (`kubectl get -o yaml`): a report, not a wish.
SERVER_SET = frozenset({"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"})

GO_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|s|m|h))+")  # Go's time.ParseDuration, as ferry reads it


@dataclass
class Origin:
    loc: Loc  # in the Knative document
    name: str | None = None  # Knative's name of the field, put in place of ferry's at the start of a message
    below: Literal["append", "message", "drop"] = "drop"  # a routes path under this one: the same shape below,
    # the rest said in the message (a JSON annotation), or this place only
    words: tuple[tuple[str, str], ...] = ()  # ferry's words -> Knative's, in a message about this very place


class Document:
    """One document being read: its problems and, for its Service, where each routes path came from."""

    def __init__(self, index: int, node: Node | None, numbered: bool, *, locating: bool = True):
        self.index, self.node, self.numbered = index, node, numbered
        self.locating = locating  # keep the origins (only to locate problems: a valid file needs none)
        self.problems: list[Problem] = []
        self.origins: dict[Loc, Origin] = {(): Origin(("metadata", "name"))}
        self.suppressed: set[Loc] = set()  # routes paths whose problems are already said in Knative's terms

    def path(self, loc: Loc) -> str:
        inner = format_path(loc)
        if not self.numbered:
            return inner
        return f"[{self.index}]" + (inner if not inner or inner.startswith("[") else "." + inner)

    def line(self, loc: Loc) -> int | None:
        return yamlsource.line_of(self.node, loc)

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append(Problem(self.path(loc), message, self.line(loc)))

    def origin(self, routes: Loc, knative: Loc, name: str | None = None,
               below: Literal["append", "message", "drop"] = "drop", words: tuple[tuple[str, str], ...] = ()) -> None:
        if self.locating:
            self.origins[routes] = Origin(knative, name, below, words)

    def knative(self, rest: Loc, message: str) -> tuple[Loc, str]:
        """Where a problem at `services.<name>.<rest>` is in this document, and its message in Knative's words."""
        depth = next(d for d in range(len(rest), -1, -1) if rest[:d] in self.origins)
        origin, tail = self.origins[rest[:depth]], rest[depth:]
        loc = origin.loc
        if tail and origin.below == "append":
            loc = loc + tail
        elif tail and origin.below == "message":
            message = f"{format_path(tail)}: {message}"
        elif not tail and origin.name and rest and message.startswith(f"{rest[-1]} "):
            message = origin.name + message[len(str(rest[-1])):]
        for ferry, knative in origin.words if not tail else ():
            message = re.sub(rf"(?<![\w-]){re.escape(ferry)}(?![\w-])", knative, message)
        return loc, message



def keys(doc: Document, mapping: dict[Any, Any], loc: Loc, allowed: tuple[str, ...], *,
          refused: dict[str, str] | None = None, ignored: Iterable[str] = ()) -> None:
    """A problem for each key ferry does not read there: a known one with its reason, others with the list."""
    if len(mapping) <= len(allowed) and all(key in allowed for key in mapping):
        return  # the usual case, made cheap
    for key in mapping:
        if key in allowed or key in ignored:
            continue
        if not isinstance(key, str):
            doc.problem(loc, f"field names are text, got {describe(key)}: remove it or quote it")
        elif refused and key in refused:
            doc.problem((*loc, key), refused[key])
        else:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) or [
                a for a in allowed if a.lower() == key.lower()]
            guess = f"; did you mean '{close[0]}'?" if close else ""
            doc.problem((*loc, key), f"unknown or unsupported field '{key}'{guess}: ferry reads {', '.join(allowed)} "
                                     "here: remove it")


def mapping(doc: Document, parent: dict[str, Any], key: str, loc: Loc, *, required: bool = True) -> dict | None:
    value = parent.get(key)
    if value is None:
        if required:
            doc.problem(loc if key not in parent else (*loc, key), f"required field '{key}' is missing: add it")
        return None
    if not isinstance(value, dict):
        doc.problem((*loc, key), f"expected a mapping (key: value lines), got {describe(value)}")
        return None
    return value


def strings(doc: Document, parent: dict[str, Any], key: str, loc: Loc) -> dict[str, str]:
    """Labels or annotations: their values are strings, as Kubernetes takes them (it refuses `min-scale: 1`)."""
    value = mapping(doc, parent, key, loc, required=False)
    if value is None:
        return {}
    strings = {}
    for name, text in value.items():
        if not isinstance(name, str):
            doc.problem((*loc, key), f"field names are text, got {describe(name)}: quote it")
        elif not isinstance(text, str):
            written = str(text).lower() if isinstance(text, bool) else str(text)
            doc.problem((*loc, key, name), f"{key} are strings, as Kubernetes takes them, got {describe(text)}: "
                                           f'quote it, e.g. {name}: "{written}"')
        else:
            strings[name] = text
    return strings


def unknown_annotation(key: str, known: Iterable[str], shown: Iterable[str] | None = None) -> str:
    """An annotation ferry does not read: the closest of `known` as a guess, and `shown` (default: all) listed."""
    prefix, _, name = key.rpartition("/")  # compared without their shared prefix, which would match anything
    same = {k.rpartition("/")[2]: k for k in known if k.rpartition("/")[0] == prefix}
    close = [k for k in same if k.lower() == name.lower()] or difflib.get_close_matches(name, sorted(same), n=1,
                                                                                        cutoff=0.7)
    guess = f"; did you mean {same[close[0]]!r}?" if close else ""
    listed = ", ".join(shown if shown is not None else sorted(known))
    if key.startswith(AUTOSCALING):
        return f"unknown autoscaling annotation {key!r}{guess}: ferry reads {listed} under {AUTOSCALING}: fix or remove it"
    return f"ferry does not read the annotation {key!r}{guess} (it reads {listed} here): remove it"
