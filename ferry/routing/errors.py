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


# A value quoted in a message is shortened past this: an error must never carry a whole file or secret back.
QUOTE_LIMIT = 200
_LONG_QUOTE = re.compile(r"'([^'\n]{%d,})'|\"([^\"\n]{%d,})\"" % (QUOTE_LIMIT + 1, QUOTE_LIMIT + 1))


def shorten_quotes(text: str) -> str:
    """Every quoted run in `text` longer than QUOTE_LIMIT characters, cut to its start and its length."""
    def cut(m: re.Match) -> str:
        quoted = m.group(1) if m.group(1) is not None else m.group(2)
        mark = "'" if m.group(1) is not None else '"'
        return f"{mark}{quoted[:QUOTE_LIMIT]}...{mark} ({len(quoted)} characters)"
    return _LONG_QUOTE.sub(cut, text)


@dataclass(frozen=True)
class Problem:
    path: str  # YAML path like "services.hello.traffic[1].percent" ("" for the whole document)
    message: str  # reason and fix
    line: int | None = None  # 1-based line in the file, when known

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", shorten_quotes(self.path))
        object.__setattr__(self, "message", shorten_quotes(self.message))

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
