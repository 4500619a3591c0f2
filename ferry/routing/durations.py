"""Durations written the way Go and Kubernetes users write them: 300s, 1.5s, 500ms, 2m, 1h, 1m30s."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
EXAMPLES = "e.g. 300s, 1.5s, 500ms, 2m, 1h or 1m30s"


def parse_duration(value: object) -> float:
    """Seconds from a duration string; a bare number is taken as seconds (what Knative's timeoutSeconds means)."""
    if isinstance(value, bool):  # bool is an int subclass, but `timeout: yes` is a mistake
        raise ValueError(f"expected a duration, got {str(value).lower()}: write a number with a unit, {EXAMPLES}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration, got {type(value).__name__}: write a number with a unit, {EXAMPLES}")
    text = value.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            break
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}: write a number with a unit, {EXAMPLES}")
    return total
