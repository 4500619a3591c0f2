"""Split routes.yaml's `services:` mapping into one text block per service, without parsing YAML.

Parsing a 10,000-service file costs ~0.6 s of libyaml even when one service changed; comparing text
blocks costs ~20 ms. The split is only attempted on the plain shape people write (a block mapping under a
top-level `services:`); anything else — tabs, anchors and aliases, document markers, flow style, complex
keys — returns None and the caller parses the whole file. The rule it relies on is YAML's: in a block
mapping indented n spaces, a content line indented exactly n starts the next key, and every line of a
key's value (block scalars, flow collections, plain multi-line scalars included) is indented more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNSUPPORTED = re.compile(
    r"\t"  # tabs: indentation rules differ
    r"|^(?:---|\.\.\.)"  # several documents or explicit markers
    r"|(?:^|[\s\[{,:-])[&*!][^\s]",  # anchors, aliases and tags
    re.MULTILINE,
)
_SERVICES_LINE = re.compile(r"^services:[ ]*(?:#.*)?$")


@dataclass(frozen=True)
class ServiceBlocks:
    rest: str  # the file without the services' blocks (gateway, the `services:` line, comments)
    blocks: tuple[str, ...]  # each service's lines, in file order, each starting with its `name:` line


def split_services(text: str) -> ServiceBlocks | None:
    # The regex is slow on megabytes: run it only when a character it looks for is there at all.
    if any(c in text for c in "\t&*!") or text.startswith(("---", "...")) or "\n---" in text or "\n..." in text:
        if _UNSUPPORTED.search(text):
            return None
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("services:") and _SERVICES_LINE.match(line.rstrip("\r\n"))]
    if len(starts) != 1:
        return None
    first = starts[0] + 1
    blocks: list[list[str]] = []
    leading: list[str] = []
    indent: int | None = None
    end = len(lines)
    for i in range(first, len(lines)):
        line = lines[i]
        content = line.lstrip(" ")
        if not content.strip() or content.startswith("#"):
            (blocks[-1] if blocks else leading).append(line)
            continue
        depth = len(line) - len(content)
        if depth == 0:
            end = i
            break
        if indent is None:
            indent = depth
        if depth < indent:
            return None
        if depth == indent:
            if content[0] in "-?{[\"'|>%@`":
                return None  # a sequence, a complex or quoted key: leave it to the parser
            blocks.append([line])
        else:
            blocks[-1].append(line)
    rest = "".join(lines[:first] + leading + lines[end:])
    return ServiceBlocks(rest, tuple("".join(block) for block in blocks))
