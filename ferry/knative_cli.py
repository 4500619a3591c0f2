"""`ferry export` and `ferry convert`, and the flags that hold over a file's gateway and backend (`--listen`,
`--domain`, `--internal`, `--backend`, `--namespace`) on `ferry up`, `ferry validate` and `ferry convert`: a file
of Knative Services has no gateway or backend of its own, and a routes.yaml's are replaced field by field."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .routing.errors import ConfigError
from .routing.fields import HostPort
from .routing.overrides import Overrides, check_domain, check_namespace

COMMANDS = ("export", "convert")
NEEDS_API = ("export",)


def _typed(check: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return check(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "gateway and backend", "over the routes file's own (a file of Knative Services has none: these are its "
        "gateway and backend), on every reload and apply while ferry runs")
    group.add_argument("--listen", type=_typed(HostPort.parse), metavar="HOST:PORT",
                       help="the gateway's HTTP listener (gateway.listen; default 127.0.0.1:8080)")
    group.add_argument("--domain", type=_typed(check_domain),
                       help="a service's host is <service>.DOMAIN (gateway.domain; default localhost)")
    group.add_argument("--internal", type=_typed(HostPort.parse), metavar="HOST:PORT",
                       help="the listener of private services, Knative's cluster-local (gateway.internal)")
    group.add_argument("--backend", choices=["local", "kubernetes"],
                       help="where revisions run (backend.kind; default local)")
    group.add_argument("--namespace", type=_typed(check_namespace),
                       help="backend kubernetes: where revisions run; a Knative file's Services must be in it "
                            "(default: default)")


def overrides_from(args: argparse.Namespace) -> Overrides:
    return Overrides(listen=getattr(args, "listen", None), domain=getattr(args, "domain", None),
                     internal=getattr(args, "internal", None), backend=getattr(args, "backend", None),
                     namespace=getattr(args, "namespace", None))


def add_parsers(sub: Any, client: argparse.ArgumentParser) -> None:
    export = sub.add_parser("export", parents=[client],
                            help="print a running service as a Knative Service manifest (kn service export)")
    export.add_argument("service")
    convert = sub.add_parser("convert", help="print a Knative Service file as routes.yaml, or a routes.yaml as "
                                             "Knative Services")
    convert.add_argument("file", type=Path)
    add_overrides(convert)


def run(args: argparse.Namespace, call: Callable[[Any, str], dict | None]) -> int:
    return _export(args, call) if args.command == "export" else _convert(args)


def _export(args: argparse.Namespace, call: Callable[[Any, str], dict | None]) -> int:
    from pydantic import ValidationError

    from .routing.knative_export import NotExpressible, dump, service_manifest
    from .routing.schema import Backend, ServiceSpec, backend_kind, container_recorded

    answer = call(args.api, f"/services/{urllib.parse.quote(args.service, safe='')}/spec")
    if answer is None:
        return 1
    try:
        backend = Backend.model_validate(answer["backend"])
        with backend_kind(backend.kind), container_recorded():  # as the running ferry validated it
            spec = ServiceSpec.model_validate(answer["spec"])
        manifest = service_manifest(args.service, spec, backend)
    except NotExpressible as err:
        print(f"ferry: {err}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValidationError) as err:
        print(f"ferry: the running ferry answered a spec this ferry cannot read ({err}): are both the same "
              "version?", file=sys.stderr)
        return 1
    print(dump([manifest]), end="")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .routing.knative_export import NotExpressible, dump, manifests, routes_document
    from .routing.loader import load_routes

    try:
        loaded = load_routes(args.file, overrides=overrides_from(args))
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except OSError as err:
        print(f"ferry: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 1
    if loaded.format == "knative":
        data, notes = routes_document(loaded.spec)
        header = [f"# {args.file} as routes.yaml (ferry convert)", *(f"# {note}" for note in notes)]
        print("\n".join(header) + "\n" + dump([data]), end="")
    else:
        try:
            documents = manifests(loaded.spec)
        except NotExpressible as err:
            print(f"ferry: {err}", file=sys.stderr)
            return 1
        notes = _gateway_notes(loaded.spec)
        header = [f"# {args.file} as Knative Services (ferry convert)", *(f"# {note}" for note in notes)]
        print("\n".join(header) + "\n" + dump(documents), end="")
    for note in notes:
        print(f"ferry: note: {note}", file=sys.stderr)
    return 0


def _gateway_notes(spec: Any) -> list[str]:
    """What of a routes.yaml's gateway and backend has no place in a Knative Service, and how to keep it."""
    gateway = spec.gateway.model_dump(mode="json", exclude_defaults=True)
    backend = spec.backend.model_dump(mode="json", exclude_defaults=True)
    flags = [f"--{key} {gateway.pop(key)}" for key in ("listen", "domain", "internal") if key in gateway]
    flags += [f"--{'backend' if key == 'kind' else key} {backend.pop(key)}" for key in ("kind", "namespace")
              if key in backend]
    notes = [f"run it with: ferry up FILE {' '.join(flags)}"] if flags else []
    lost = [f"gateway.{key}" for key in gateway] + [f"backend.{key}" for key in backend]
    if lost:
        notes.append(f"{', '.join(lost)} have no flag and no place in a Knative Service: keep the routes.yaml for them")
    return notes
