"""YAML text -> plain Python data, fast, keeping the node tree so problems can be given line numbers.

libyaml composes the node tree (with marks); a small builder turns it into dicts and lists, about five
times faster than PyYAML's generic constructor for the plain scalars and mappings a routes file is
made of. It also rejects duplicate keys, where PyYAML silently lets the last one win.
Anything unusual (tags, !!set, timestamps, merge keys) goes through PyYAML's own SafeConstructor.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import Loc

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"

# Aliases can make a small file expand into a huge one ("billion laughs"); refuse before validating it.
MAX_EXPANDED_NODES = 2_000_000


class YamlError(Exception):
    """The text is not YAML we can read; `line` is 1-based, `loc` is where in the document (if known)."""

    def __init__(self, message: str, line: int | None, loc: Loc = (), document: int | None = None):
        super().__init__(message)
        self.message, self.line, self.loc = message, line, loc
        self.document = document  # in a file of several documents (parse_all), which one, from 0


class _Loader(yaml.CSafeLoader):
    """libyaml's parser and composer; implicit tags are cached per scalar text, since most scalars repeat."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        if kind is not ScalarNode or not implicit[0]:
            return super().resolve(kind, value, implicit)  # type: ignore[no-any-return, no-untyped-call]
        tag = self._tags.get(value)  # a plain scalar: its tag depends on its text alone
        if tag is None:
            tag = self._tags[value] = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        return tag


def compose(text: str) -> Node | None:
    """The node tree of a single-document YAML text (None when empty); raises YamlError."""
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text) from None
    except yaml.YAMLError as exc:  # e.g. a character libyaml refuses outright
        raise YamlError(f"invalid YAML: {exc}", None) from None
    finally:
        loader.dispose()


def parse(text: str) -> tuple[Any, Node | None]:
    """The document as dicts, lists and scalars, and its node tree; raises YamlError."""
    root = compose(text)
    if root is None:
        return None, None
    builder = _Builder(root)
    data = builder.build(root)
    if builder.shared:
        _check_expansion(root)
    return data, root


def parse_all(text: str) -> list[tuple[Any, Node]]:
    """Every document of a multi-document text (`---` between them), each as data and node tree; an empty
    document is (None, its node). Raises YamlError (with `document` set when the problem is in one)."""
    loader = _Loader(text)
    nodes: list[Node] = []
    try:
        while loader.check_node():
            nodes.append(loader.get_node())
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}", None) from None
    finally:
        loader.dispose()
    documents = []
    builder = _Builder(nodes[0]) if nodes else None  # one for all: scalars repeat across documents
    for index, node in enumerate(nodes):
        assert builder is not None
        builder.start(node)
        try:
            data = builder.build(node)
            if builder.shared:
                _check_expansion(node)
        except YamlError as exc:
            exc.document = index
            raise
        documents.append((data, node))
    return documents


def line_of(root: Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest part of `loc` present in the tree (a key's line, or a list item's)."""
    if root is None:
        return None
    node, line = root, root.start_mark.line + 1
    for seg in loc:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == str(seg):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
            node = node.value[seg]
            line = node.start_mark.line + 1
        else:
            break
    return line


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building ~10^5 long-lived objects makes the cyclic GC rescan them over and over (3x slower);
    none of them are garbage until the whole load is done."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Builder:
    def __init__(self, root: Node):
        self._root = root
        self._safe = SafeConstructor()
        self._scalars: dict[tuple[str, str], Any] = {}  # every safe scalar type is immutable: share them
        self._collections: dict[int, Any] = {}  # id(node) -> built value, so aliases share one object
        self.shared = False  # an alias to a collection was seen

    def start(self, root: Node) -> None:
        """Build another document (of the same text) next: aliases are per document, scalars are immutable."""
        self._root = root
        self._collections.clear()
        self.shared = False

    def build(self, node: Node) -> Any:
        if node.__class__ is ScalarNode:
            return node.value if node.tag == _STR else self._scalar(node)
        built = self._collections.get(id(node))
        if built is not None:
            self.shared = True
            return built
        if node.__class__ is MappingNode and node.tag == _MAP:
            mapping: dict[Any, Any] = {}
            self._collections[id(node)] = mapping
            self._fill_mapping(node, mapping)
            return mapping
        if node.__class__ is SequenceNode and node.tag == _SEQ:
            items: list[Any] = []
            self._collections[id(node)] = items
            items.extend(map(self.build, node.value))
            return items
        return self._construct(node)  # !!set, !!omap, custom tags...

    def _scalar(self, node: ScalarNode) -> Any:
        key = (node.tag, node.value)
        try:
            return self._scalars[key]
        except KeyError:
            value = self._scalars[key] = node.value if node.tag == _VALUE else self._construct(node)
            return value

    def _construct(self, node: Node) -> Any:
        try:
            return self._safe.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc, "") from None

    def _fill_mapping(self, node: MappingNode, mapping: dict[Any, Any]) -> None:
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            key = self.build(key_node)
            try:
                seen = key in mapping
            except TypeError:
                raise self._error("a mapping key must be a plain value, not a list or mapping", key_node) from None
            if seen:
                raise self._error(
                    f"duplicate key {key!r}: only one of them would count: remove or rename one", key_node
                )
            mapping[key] = self.build(value_node)
        if merges:
            self._merge(mapping, merges)

    def _merge(self, mapping: dict[Any, Any], merges: list[Node]) -> None:
        """YAML merge keys (<<: *defaults): the mapping's own keys win, then earlier merged mappings."""
        sources: list[Node] = []
        for value_node in merges:
            sources.extend(value_node.value if isinstance(value_node, SequenceNode) else [value_node])
        merged: dict[Any, Any] = {}
        for source in reversed(sources):
            if not isinstance(source, MappingNode):
                raise self._error("<< (merge) takes a mapping or a list of mappings", source)
            merged.update(self.build(source))
        merged.update(mapping)
        mapping.clear()
        mapping.update(merged)

    def _error(self, message: str, node: Node) -> YamlError:
        return YamlError(message, node.start_mark.line + 1, _loc_of(self._root, node) or ())


def _loc_of(root: Node, target: Node) -> Loc | None:
    """Where `target` sits in the tree (for messages only: a depth-first search)."""
    stack: list[tuple[Node, Loc]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, loc = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if key is target:
                    return loc
                if isinstance(key, ScalarNode):
                    stack.append((value, (*loc, key.value)))
        elif isinstance(node, SequenceNode):
            stack.extend((item, (*loc, i)) for i, item in enumerate(node.value))
        if node is target:
            return loc
    return None


def _check_expansion(root: Node) -> None:
    sizes: dict[int, int] = {}

    def size(node: Node) -> int:
        if isinstance(node, ScalarNode):
            return 1
        known = sizes.get(id(node))
        if known is not None:
            if known < 0:
                raise YamlError(
                    "an alias refers to the collection that contains it: remove the cycle", node.start_mark.line + 1
                )
            return known
        sizes[id(node)] = -1
        children = (n for pair in node.value for n in pair) if isinstance(node, MappingNode) else node.value
        total = sizes[id(node)] = min(1 + sum(map(size, children)), MAX_EXPANDED_NODES + 1)
        return total

    if size(root) > MAX_EXPANDED_NODES:
        raise YamlError(
            f"aliases expand this document to over {MAX_EXPANDED_NODES:,} values: use fewer nested aliases", None
        )


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> YamlError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    reason = ": ".join(part for part in (exc.context, exc.problem) if part)
    source = text.splitlines()[line - 1] if line and text and line <= text.count("\n") + 1 else ""
    return YamlError(f"invalid YAML: {reason}: {_fix(reason, source)}", line)


def _fix(reason: str, source_line: str) -> str:
    if "\t" in source_line[: len(source_line) - len(source_line.lstrip())] or "'\\t'" in reason:
        return "indent with spaces; YAML does not allow tabs"
    if "mapping values are not allowed here" in reason:
        return "check the indentation, and quote values that contain ': '"
    if "expected key" in reason or "expected ':'" in reason or "expected <block end>" in reason:
        return "check the indentation of this line and the lines above it"
    if "found undefined alias" in reason:
        return "define the anchor (&name) before using it (*name)"
    if "expected a single document" in reason:
        return "keep one document per file (remove the extra '---')"
    return "fix the YAML syntax here"
