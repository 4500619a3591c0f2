"""Pydantic's validation errors, reworded for someone editing YAML: no pydantic jargon, always a fix."""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import Loc, Problem, format_path


def problems_from(exc: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One Problem per error; `model` is the type that was validated, to name the allowed fields."""
    return [_problem(error, model) for error in exc.errors(include_url=False)]


def error_loc(error: ErrorDetails) -> Loc:
    """The YAML location of an error ("[key]" marks an invalid mapping key: the key itself is the place)."""
    return tuple(seg for seg in error["loc"] if seg != "[key]")


def describe(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (int, float, str)):
        return repr(value)
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    return f"a {type(value).__name__}"


def _problem(error: ErrorDetails, model: type[BaseModel]) -> Problem:
    loc = error_loc(error)
    return Problem(format_path(loc), _message(error, model, loc))


def _message(error: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = describe(value)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        choices = _literal_choices(_type_at(model, loc))
        return f"required field '{loc[-1]}' is missing: add it" + (f", one of {_or_list(choices)}" if choices else "")
    if kind == "invalid_key":
        return f"field names are text, got {got}: remove it or quote it if you meant a field"
    if kind == "extra_forbidden":
        return _unknown_field(str(loc[-1]), _fields_at(model, loc[:-1]))
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}" + _unquote_hint(value, "an integer")
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}" + _unquote_hint(value, "a number")
    if kind == "finite_number":
        return f"expected a finite number, got {got}: .inf and .nan are not allowed here"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind == "string_type":
        return f"expected a string, got {got}" + _quote_hint(value)
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return f"expected a mapping (key: value lines), got {got}" + _mapping_hint(model, loc, value)
    if kind in ("list_type", "tuple_type", "iterable_type", "sequence_str"):
        return f"expected a list, got {got}" + _list_hint(value)
    if kind == "literal_error":
        # an invalid mapping key (resources.requests.gpu): the choices are the key type's, not the value's
        where = _key_type_at(model, loc) if error["loc"][-1:] == ("[key]",) else _type_at(model, loc)
        return f"expected one of {ctx.get('expected')}, got {got}" + _choice_hint(value, _literal_choices(where))
    if kind == "greater_than_equal":
        return f"must be {_number(ctx['ge'])} or more, got {got}" + _percent_hint(loc, value)
    if kind == "less_than_equal":
        return f"must be {_number(ctx['le'])} or less, got {got}"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}, got {got}"
    if kind == "less_than":
        return f"must be less than {_number(ctx['lt'])}, got {got}"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {got}"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


# Knative's names for what ferry calls otherwise (autoscaling.knative.dev/<annotation>, Revision spec fields),
# where the close-match guess would miss or mislead (max-scale is closer to maxScaleUpRate than to max).
_KNATIVE_NAMES = {
    "min-scale": "min",
    "minScale": "min",
    "max-scale": "max",
    "maxScale": "max",
    "initial-scale": "initial",
    "target-utilization-percentage": "utilization",
    "activation-scale": "activation",
    "min-activate-scale": "activation",
    "window": "stableWindow",
    "panic-window-percentage": "panicWindowPercent",
    "panic-threshold-percentage": "panicThreshold",
    "scale-to-zero-grace-period": "zeroGracePeriod",
    "target-burst-capacity": "burstCapacity",
    "containerConcurrency": "concurrency",
    "timeoutSeconds": "timeout",
    # Kubernetes' container fields
    "containerPort": "port",
    "entrypoint": "command",
    # rollout: Knative's serving.knative.dev/rollout-duration, and Flagger's and Argo Rollouts' names
    "rollout-duration": "duration",
    "rolloutDuration": "duration",
    "stepWeights": "steps",
    "setWeight": "steps",
    "threshold": "failureLimit",
    "failureThreshold": "failureLimit",
    "autoPromotionEnabled": "autoPromote",
    "request-success-rate": "successRate",
    "request-duration": "maxLatencyP99",
}


def _unknown_field(name: str, allowed: list[str]) -> str:
    if not allowed:
        return f"unknown field '{name}': remove it"
    knative = _KNATIVE_NAMES.get(name.removeprefix("autoscaling.knative.dev/").removeprefix("serving.knative.dev/"))
    close = (
        [knative]
        if knative in allowed
        else difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        or [a for a in allowed if a.lower() == name.lower()]
    )
    guess = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown field '{name}'{guess} (allowed: {', '.join(allowed)})"


def _percent_hint(loc: Loc, value: Any) -> str:
    """panicThreshold: 2 is the ratio Knative's config map also accepts; the field takes the percentage."""
    if loc and loc[-1] == "panicThreshold" and isinstance(value, (int, float)) and 1 < value <= 10:
        times = _number(float(value))
        return f": it is a percentage: write {_number(float(value) * 100)} for {times} times the ready instances"
    if loc and loc[-1] == "utilization" and isinstance(value, (int, float)) and 0 < value < 1:
        return f": it is a percentage: write {_number(float(value) * 100)} for {_number(float(value) * 100)}%"
    return ""


def _quote_hint(value: Any) -> str:
    if isinstance(value, bool):
        return ": YAML reads unquoted yes/no/on/off/true/false as booleans: put the value in quotes"
    if isinstance(value, (int, float)):
        return f': YAML reads it as a number: put it in quotes, e.g. "{value}"'
    return ""


def _unquote_hint(value: Any, what: str) -> str:
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    if not isinstance(yaml.safe_load(value), (int, float)):  # YAML 1.1 reads 1e3 as text, quoted or not
        return f": YAML reads an exponent without a dot and a sign as text: write {_yaml_number(number)}"
    return f": remove the quotes to write {what}"


def _yaml_number(number: float) -> str:
    """A number as YAML 1.1 reads it: 1000 for 1e3, 5.0e-324 for 5e-324."""
    if number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    mantissa, e, exponent = repr(number).partition("e")
    if not e:
        return mantissa
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent if exponent[0] in '+-' else '+' + exponent}"


def _list_hint(value: Any) -> str:
    if isinstance(value, str) and value.split():
        return f": write it as a YAML list, e.g. [{', '.join(value.split())}]"
    if isinstance(value, (str, int, float)):
        return f": write it as a YAML list, e.g. [{value}]"
    return ""


# Common names for a choice that the close-match guess misses (backend: k8s).
_CHOICE_ALIASES = {"k8s": "kubernetes", "kube": "kubernetes", "process": "local", "processes": "local"}


def _choice_hint(value: Any, choices: list[str]) -> str:
    """strategy: bluegreen -> did you mean 'blue-green'?"""
    if not isinstance(value, str) or not choices:
        return ""
    alias = _CHOICE_ALIASES.get(value.lower())
    close = [alias] if alias in choices else difflib.get_close_matches(value, choices, n=1, cutoff=0.6) or [
        c for c in choices if c.replace("-", "").lower() == value.replace("-", "").replace("_", "").lower()
    ]
    return f"; did you mean '{close[0]}'?" if close else ""


def _mapping_hint(model: type[BaseModel], loc: Loc, value: Any) -> str:
    """rollout: canary -> write rollout: {strategy: canary}: a required choice given in place of its mapping."""
    tp = _unwrap(_type_at(model, loc))
    if not isinstance(value, str) or not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return ""
    for name, field in tp.model_fields.items():
        if field.is_required() and value in _literal_choices(field.annotation):
            return f": write {loc[-1]}: {{{name}: {value}}}" if loc else ""
    return ""


def _literal_choices(tp: Any) -> list[str]:
    tp = _unwrap(tp)
    return [str(c) for c in typing.get_args(tp)] if typing.get_origin(tp) is typing.Literal else []


def _or_list(choices: list[str]) -> str:
    quoted = [f"'{c}'" for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The field names of the model found at `loc`, following field types through mappings and lists."""
    tp = _unwrap(_type_at(model, loc))
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _type_at(model: type[BaseModel], loc: Loc) -> Any:
    """The annotation of the field found at `loc` (None if there is none), following mappings and lists."""
    tp: Any = model
    for seg in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(seg))
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) in (dict, list, tuple):
            tp = typing.get_args(tp)[-1 if typing.get_origin(tp) is dict else 0]
        else:
            return None
    return tp


def _key_type_at(model: type[BaseModel], loc: Loc) -> Any:
    """The key type of the mapping holding the key at `loc` (None if that is not a mapping)."""
    tp = _unwrap(_type_at(model, loc[:-1]))
    return typing.get_args(tp)[0] if typing.get_origin(tp) is dict else None


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X and X | None -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp
