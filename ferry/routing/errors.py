"""Configuration problems, reported the way a person fixes them: file, line, YAML path, reason and fix.

A bad routes file never changes anything; it raises ConfigError carrying every problem found in one
pass, so a user fixes them all in one edit instead of discovering them one apply at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

# A location inside the YAML document: mapping keys and sequence indexes, outermost first.
Loc = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SEGMENT = re.compile(r'\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


@dataclass(frozen=True)
class Problem:
    path: str  # YAML path like "services.hello.traffic[1].percent" ("" for the whole document)
    message: str  # reason and fix
    line: int | None = None  # 1-based line in the file, when known

    def render(self, file: str) -> str:
        """'<file>:<line>: <path>: <message>', leaving out the parts that are unknown or empty."""
        where = f"{file}:{self.line}" if self.line is not None else file
        return ": ".join(part for part in (where, self.path, self.message) if part)


class ConfigError(Exception):
    """The routes file (or content sent in its place) is not acceptable; nothing was changed."""

    def __init__(self, file: str, problems: Iterable[Problem]):
        self.file = file
        self.problems = tuple(problems)
        super().__init__(self.file, self.problems)

    def __str__(self) -> str:
        return "\n".join(p.render(self.file) for p in self.problems)


def format_path(loc: Loc) -> str:
    """("services", "hello", "traffic", 1) -> 'services.hello.traffic[1]'.

    Keys that would make the path ambiguous (dots, spaces, ...) are written ["like.this"].
    """
    out = []
    for seg in loc:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif _PLAIN_KEY.fullmatch(seg):
            out.append(f".{seg}")
        else:
            out.append(f"[{json.dumps(seg)}]")
    return "".join(out).removeprefix(".")


def parse_path(path: str) -> Loc:
    """The inverse of format_path; stops at the first segment it cannot read."""
    loc: list[str | int] = []
    pos, text = 0, "." + path if path and not path.startswith("[") else path
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if m is None:
            break
        key, index, quoted = m.groups()
        loc.append(key if key is not None else int(index) if index is not None else json.loads(quoted))
        pos = m.end()
    return tuple(loc)
