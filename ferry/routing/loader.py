"""routes.yaml -> a validated RoutesFile, or a ConfigError listing every problem with its line.

The valid path is kept cheap (one libyaml compose, one pydantic validation, one pass of cross checks)
because it runs on every save of the file; line numbers are looked up only when something is wrong.
A file of Knative Service documents is read too (knative.py translates it into the same data, and its
problems are reported at their place in it); command-line Overrides hold over what either says.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from yaml.nodes import Node

from . import knative, yamlsource
from .blocks import ServiceBlocks, split_services
from .certificates import KeyPair, read_certificates
from .checks import HostClaims, check_hosts, check_own_listeners, check_routes, check_service
from .errors import ConfigError, Loc, Problem, format_path, parse_path
from .messages import describe, error_loc, problems_from
from .revisions import Revision, RevisionPlan, RevisionStore
from .fields import HostPort
from .overrides import Overrides
from .schema import Gateway, RoutesFile, ServiceSpec, container_recorded


@dataclass(frozen=True)
class LoadedRoutes:
    path: Path  # absolute path of the routes file
    base_dir: Path  # its folder: relative command paths and the working dir of instances resolve here
    spec: RoutesFile
    label: str = field(default="", compare=False)  # what messages call the file (`ferry apply` sends its own name)
    text: str = field(default="", repr=False, compare=False)  # the content validated, to locate later problems
    # as parsed, for reuse by a load that cannot split the file into blocks; empty when `blocks` are kept (the
    # blocks find what changed, and the parsed data of 10,000 services is ~15 MiB)
    raw_services: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    blocks: ServiceBlocks | None = field(default=None, repr=False, compare=False)  # per-service text, for reuse
    block_names: dict[str, str] = field(default_factory=dict, repr=False, compare=False)  # block text -> service
    host_claims: HostClaims = field(default_factory=dict, repr=False, compare=False)  # for the next load's checks
    # gateway.tls's certificates as read when its block last changed (reconcile/certs.py follows the files after)
    certificates: tuple[KeyPair, ...] = field(default=(), repr=False, compare=False)
    format: Literal["routes", "knative"] = field(default="routes", compare=False)  # what the text is written as
    overrides: Overrides = field(default_factory=Overrides, compare=False)  # the flags it was loaded with


def load_routes(path: Path | str, text: str | None = None, previous: LoadedRoutes | None = None, *,
                label: str | None = None, overrides: Overrides | None = None) -> LoadedRoutes:
    """Read (or take `text` in place of) the routes file and validate it; raises ConfigError.

    The file is a routes.yaml, or one or more Knative Service documents (serving.knative.dev/v1), never both.
    `overrides` (ferry's --listen, --domain, --internal, --backend, --namespace) hold over what the file says.
    `label` names the text in messages instead of `path` (content sent over the API names itself; its relative
    commands still resolve against `path`'s folder).

    `previous` is returned as is when the content has not changed: editors and file watchers
    often report a save that changed nothing. Otherwise services whose YAML is unchanged keep their
    validated objects, so a one-service edit validates one service (and callers can compare by identity).
    """
    path = Path(path).absolute()
    file = label or str(path)
    overrides = overrides or Overrides()
    if text is None:
        text = _read(path)
    if previous is not None and previous.overrides != overrides:
        previous = None  # another gateway or backend: nothing of it holds
    if previous is not None and previous.path == path and previous.text == text and previous.label == (label or ""):
        return previous
    with yamlsource.gc_paused():
        if knative.is_candidate(text):
            loaded = _load_knative(path, file, text, previous, label, overrides)
            if loaded is not None:  # (its YAML node trees are freed by now: the collector need not walk them)
                return loaded
        split = split_services(text)
        if previous is not None and split is not None:
            reused = _load_changed_blocks(split, previous)
            if reused is not None:
                spec, names = reused
                return LoadedRoutes(path, path.parent, spec, label or "", text, {}, split,
                                    dict(zip(split.blocks, names, strict=True)), previous.host_claims,
                                    _certificates(spec, path, file, text, previous))
        claims: HostClaims = {}
        try:
            spec, raw_services = _validate(text, file, previous, claims, overrides, split)
        except RecursionError:
            raise ConfigError(file, [Problem("", "the document is nested too deeply: flatten it")]) from None
    certificates = _certificates(spec, path, file, text, previous)
    if split is None or len(split.blocks) != len(raw_services):
        return LoadedRoutes(path, path.parent, spec, label or "", text, raw_services, host_claims=claims,
                            certificates=certificates, overrides=overrides)
    return LoadedRoutes(path, path.parent, spec, label or "", text, {}, split,
                        dict(zip(split.blocks, raw_services, strict=True)), claims, certificates, overrides=overrides)


def _documents(text: str, file: str) -> list[tuple[Any, Node]]:
    """Every document of the text; ConfigError for YAML it cannot read."""
    try:
        return yamlsource.parse_all(text)
    except yamlsource.YamlError as exc:
        where = format_path(exc.loc)
        if exc.document is not None and ("\n---" in text or exc.document > 0):
            where = f"[{exc.document}]" + ("." + where if where and not where.startswith("[") else where)
        raise ConfigError(file, [Problem(where, exc.message, exc.line)]) from None


def _load_knative(path: Path, file: str, text: str, previous: LoadedRoutes | None, label: str | None,
                  overrides: Overrides) -> LoadedRoutes | None:
    """Knative Service documents, translated into routes.yaml's data and validated as one: every problem of the
    translation and of the schema and checks, in one ConfigError, each at its place in the Knative documents.
    None: the text is no Knative file. Services whose translation is unchanged since `previous` keep their
    validated objects; documents whose text is unchanged are not even parsed again."""
    if previous is not None and previous.format == "knative" and previous.block_names:
        reused = _load_changed_documents(path, text, previous, label, overrides)
        if reused is not None:
            return reused
    documents = _documents(text, file)
    if not knative.is_knative(documents):
        return None
    translation = knative.translate(documents, overrides)
    services = translation.services
    data = {**overrides.knative_base(), "services": services}
    claims: HostClaims = {}
    with container_recorded():
        try:
            if previous is not None and previous.format == "knative":
                spec = _validate_changed(data, services, previous)
            else:
                spec = RoutesFile.model_validate(data)
        except ValidationError as exc:
            problems = problems_from(exc, RoutesFile) + _check_valid_parts(data, exc)
        else:
            problems = check_routes(spec.gateway, spec.services, claims)
    problems = translation.problems + translation.locate(problems)
    if problems:
        raise ConfigError(file, sorted(problems, key=lambda p: p.line if p.line is not None else 0))
    return LoadedRoutes(path, path.parent, spec, label or "", text, services, host_claims=claims,
                        block_names=_document_names(text, translation), format="knative", overrides=overrides)


def _document_names(text: str, translation: knative.Translation) -> dict[str, str]:
    """Each document's text -> the service it defines, for the next load to reuse (empty: it cannot)."""
    blocks = knative.split_documents(text)
    if blocks is None:
        return {}
    starts = [line for line, _ in blocks]
    names: dict[str, str] = {}
    for name, document in translation.documents.items():
        line = document.node.start_mark.line if document.node is not None else -1
        names[blocks[max(bisect.bisect_right(starts, line) - 1, 0)][1]] = name
    return names if len(names) == len(translation.services) else {}


def _load_changed_documents(path: Path, text: str, previous: LoadedRoutes, label: str | None,
                            overrides: Overrides) -> LoadedRoutes | None:
    """Parse and translate only the documents whose text changed since `previous`; None means: do the full load
    (another shape, or any problem at all, so that errors are always reported by the one full path)."""
    blocks = knative.split_documents(text)
    if blocks is None:
        return None
    services: dict[str, Any] = {}
    names: dict[str, str] = {}
    for _, block in blocks:
        name = previous.block_names.get(block)
        if name is not None:
            raw = previous.raw_services[name]
        else:
            try:
                documents = yamlsource.parse_all(block)
            except yamlsource.YamlError:
                return None
            if all(data is None for data, _ in documents):
                continue  # comments, or an empty document
            translation = knative.translate(documents, overrides)
            if translation.problems or len(translation.services) != 1:
                return None
            [(name, raw)] = translation.services.items()
        if name in services:
            return None
        services[name], names[block] = raw, name
    data = {**overrides.knative_base(), "services": services}
    with container_recorded():
        try:
            spec = _validate_changed(data, services, previous)
        except ValidationError:
            return None
    if check_routes(spec.gateway, spec.services, previous.host_claims):
        return None
    return LoadedRoutes(path, path.parent, spec, label or "", text, services, host_claims=previous.host_claims,
                        block_names=names, format="knative", overrides=overrides)


def _certificates(spec: RoutesFile, path: Path, file: str, text: str,
                  previous: LoadedRoutes | None) -> tuple[KeyPair, ...]:
    """gateway.tls's certificates, read and checked (ConfigError with lines); as `previous` read them when the
    block is the same (the files are followed by reconcile/certs.py while ferry runs)."""
    tls = spec.gateway.tls
    if tls is None:
        return ()
    if previous is not None and previous.spec.gateway.tls == tls and previous.base_dir == path.parent:
        return previous.certificates
    pairs, problems = read_certificates(tls, path.parent)
    if problems:
        raise ConfigError(file, _locate(problems, yamlsource.compose(text)))
    return pairs


def _load_changed_blocks(
    split: ServiceBlocks, previous: LoadedRoutes
) -> tuple[RoutesFile, list[str]] | None:
    """Parse and validate only the services whose text changed; None means: do the full load instead
    (another shape, or any problem at all, so that errors are always reported by the one full path)."""
    if previous.blocks is None or split.rest != previous.blocks.rest:
        return None
    changed = [block for block in split.blocks if block not in previous.block_names]
    parsed = _parse_blocks(changed)
    if parsed is None:
        return None
    fresh = iter(parsed)
    names = [previous.block_names.get(block) or next(fresh) for block in split.blocks]
    if len(set(names)) != len(names):
        return None
    try:
        validated = RoutesFile.model_validate(
            {"gateway": previous.spec.gateway, "backend": previous.spec.backend, "services": parsed}
        )
    except ValidationError:
        return None
    services = {n: validated.services[n] if n in parsed else previous.spec.services[n] for n in names}
    # Unchanged services passed their own checks before; hosts are shared, so those are checked across all.
    if any(check_service(n, services[n]) for n in parsed) or check_hosts(validated.gateway, services,
                                                                          previous.host_claims):
        return None
    return RoutesFile.model_construct(gateway=validated.gateway, backend=validated.backend, services=services), names


# Services parsed per libyaml call: a node tree costs ~8 KB per service (~80 MiB for a 10,000-service file, next
# to ~20 MiB for the data built from it), so a whole file's tree was the peak of ferry's memory. In chunks, one
# chunk's tree is alive at a time; the data is the same (each block is one key of `services:`).
_BLOCKS_PER_PARSE = 500


def _parse_blocks(blocks: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """The services of these blocks, parsed a chunk at a time; None if any chunk does not parse to exactly its
    blocks' services (a YAML error, a duplicate name): the caller then takes the full path, which says where."""
    parsed: dict[str, Any] = {}
    for start in range(0, len(blocks), _BLOCKS_PER_PARSE):
        chunk = blocks[start:start + _BLOCKS_PER_PARSE]
        try:
            data, _ = yamlsource.parse("services:\n" + "".join(chunk))
        except yamlsource.YamlError:
            return None
        services = data.get("services") if isinstance(data, dict) else None
        del data, _  # this chunk's node tree, before the next one is made
        if not isinstance(services, dict) or len(services) != len(chunk) or not parsed.keys().isdisjoint(services):
            return None
        parsed.update(services)
    return parsed


def _parse_split(split: ServiceBlocks) -> dict[str, Any] | None:
    """The whole file's data from its blocks (see _parse_blocks); None: parse it whole."""
    try:
        data, _ = yamlsource.parse(split.rest)
    except yamlsource.YamlError:
        return None
    if not isinstance(data, dict) or data.get("services") is not None:
        return None
    if split.blocks:
        services = _parse_blocks(split.blocks)
        if services is None:
            return None
        data["services"] = services
    return data


def validate(
    loaded: LoadedRoutes, store: RevisionStore, previous: tuple[LoadedRoutes, RevisionPlan] | None = None, *,
    own: Mapping[HostPort, str] | None = None,
) -> RevisionPlan:
    """The checks that need the revision history, on top of load_routes's: template.name must not reuse a
    revision with another template, and `revision:` must exist; and those that need the running ferry: no
    endpoint is one of its `own` listeners (address -> what listens there). Returns the plan to commit (reads
    only); raises ConfigError with lines, like load_routes.

    `previous` is the last (routes, plan) committed: services whose spec object is unchanged keep their
    revision without a look at the store."""
    known: dict[str, Revision] = {}
    if previous is not None:
        old_routes, old_plan = previous
        old_services = old_routes.spec.services
        known = {
            name: old_plan.current[name]
            for name, spec in loaded.spec.services.items()
            if old_services.get(name) is spec and name in old_plan.current
        }
    plan, problems = store.draft(loaded.spec, known)
    problems += store.check_references(loaded.spec, plan, skip=known)
    if own is not None:
        problems += check_own_listeners(loaded.spec.gateway, loaded.spec.services, own)
    if problems:
        raise ConfigError(loaded.label or str(loaded.path), _locate_in(loaded, problems))
    return plan


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            str(path), [Problem("", "no such file: create it, or pass the path of your routes.yaml")]
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            str(path), [Problem("", f"not UTF-8 text (byte 0x{data[exc.start]:02x}): save the file as UTF-8", line)]
        ) from None


def _validate(text: str, file: str, previous: LoadedRoutes | None, claims: HostClaims | None = None,
              overrides: Overrides | None = None, split: ServiceBlocks | None = None) -> tuple[RoutesFile, dict[str, Any]]:
    data = _parse_split(split) if split is not None else None
    root: Node | None = None  # the whole file's node tree: made only to give problems their lines
    if data is None:
        try:
            data, root = yamlsource.parse(text)
        except yamlsource.YamlError as exc:
            raise ConfigError(file, [Problem(format_path(exc.loc), exc.message, exc.line)]) from None
    if data is None:  # an empty file: no services yet
        data = {}
    if overrides:
        data = overrides.apply(data)
    if not isinstance(data, dict):
        problem = Problem("", f"the top level must be a mapping with gateway: and services:, got {describe(data)}")
        raise ConfigError(file, _locate([problem], root or yamlsource.compose(text)))
    raw_services = data.get("services") if isinstance(data.get("services"), dict) else {}
    try:
        spec = (_validate_changed(data, raw_services, previous, _same_blocks(split, previous))
                if previous is not None and previous.format == "routes" else RoutesFile.model_validate(data))
    except ValidationError as exc:
        problems = problems_from(exc, RoutesFile) + _check_valid_parts(data, exc)
    else:
        problems = check_routes(spec.gateway, spec.services, claims)
    if problems:
        raise ConfigError(file, _locate(problems, root or yamlsource.compose(text)))
    return spec, raw_services


def _same_blocks(split: ServiceBlocks | None, previous: LoadedRoutes | None) -> set[str]:
    """The services whose block of text is the same as in `previous` (a block holds its service's name)."""
    if split is None or previous is None or not previous.block_names:
        return set()
    return {previous.block_names[block] for block in split.blocks if block in previous.block_names}


def _validate_changed(data: dict[str, Any], raw_services: dict[str, Any], previous: LoadedRoutes,
                      same: Collection[str] = ()) -> RoutesFile:
    """Validate only the services whose YAML changed (`same`: known unchanged by their text); the others keep
    their objects from `previous`."""
    try:
        changed_backend = RoutesFile.model_validate({"backend": data.get("backend")}).backend != previous.spec.backend
    except ValidationError:
        return RoutesFile.model_validate(data)  # raises, with every problem of the file
    kept = {
        name: previous.spec.services[name]
        for name, raw in raw_services.items()
        if not changed_backend and name in previous.spec.services and (
            name in same or (name in previous.raw_services and previous.raw_services[name] == raw))
    }
    changed = {**data, "services": {n: raw for n, raw in raw_services.items() if n not in kept}}
    validated = RoutesFile.model_validate(changed)
    if not kept:
        return validated
    services = {name: kept.get(name) or validated.services[name] for name in raw_services}
    return RoutesFile.model_construct(gateway=validated.gateway, backend=validated.backend, services=services)


def _check_valid_parts(data: dict[str, Any], exc: ValidationError) -> list[Problem]:
    """Cross checks over the parts of a broken file that are themselves valid, so one run reports all."""
    broken = {error_loc(e)[:2] for e in exc.errors(include_url=False)}
    services = data.get("services")
    if not isinstance(services, dict) or ("services",) in broken:
        return []
    valid = {
        name: ServiceSpec.model_validate(raw) for name, raw in services.items() if ("services", name) not in broken
    }
    return check_routes(_domain_only(data, broken), valid)


def _domain_only(data: dict[str, Any], broken: set[Loc]) -> Gateway | None:
    """The host checks need only the domain, so a bad listen address must not hide host conflicts."""
    raw = data.get("gateway") or {}
    if ("gateway",) in broken or ("gateway", "domain") in broken:
        return None
    return Gateway.model_validate({"domain": raw["domain"]} if "domain" in raw else {})


def problems_in(loaded: LoadedRoutes, problems: list[Problem]) -> ConfigError:
    """Problems found later about a loaded file (its certificate files changed), with their lines in it."""
    return ConfigError(loaded.label or str(loaded.path), _locate_in(loaded, problems))


def _locate_in(loaded: LoadedRoutes, problems: list[Problem]) -> list[Problem]:
    """Problems at routes.yaml paths, at their place in the loaded file (a routes.yaml, or Knative documents)."""
    if loaded.format == "knative":
        located = knative.translate(yamlsource.parse_all(loaded.text), loaded.overrides, locating=True).locate(problems)
        return sorted(located, key=lambda p: p.line if p.line is not None else 0)
    return _locate(problems, yamlsource.compose(loaded.text))


def _locate(problems: list[Problem], root: Node | None) -> list[Problem]:
    """Give each problem its line (the nearest existing parent's when the path itself is missing), in file order."""
    located = [
        p if p.line is not None else Problem(p.path, p.message, yamlsource.line_of(root, parse_path(p.path)))
        for p in problems
    ]
    return sorted(located, key=lambda p: p.line if p.line is not None else 0)
