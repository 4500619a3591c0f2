"""ferry's command line: up, apply, validate, status, bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .routing.errors import ConfigError
from .routing.schema import HostPort

DEFAULT_API = "127.0.0.1:8090"


def _hostport(value: str) -> HostPort:
    try:
        return HostPort.parse(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry", description="Knative-style serving on real Envoy, no Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the control plane, a local Envoy and the revisions of a routes file")
    up.add_argument("routes", type=Path)
    up.add_argument("--state", type=Path, help="SQLite state (default: .ferry/state.db beside the routes file)")
    up.add_argument("--xds", type=_hostport, default=HostPort("127.0.0.1", 18000), help="xDS gRPC address")
    up.add_argument("--api", type=_hostport, default=_hostport(DEFAULT_API), help="status/metrics/apply API address")
    up.add_argument("--admin", type=_hostport, default=HostPort("127.0.0.1", 9901), help="local Envoy's admin address")
    up.add_argument("--no-envoy", action="store_true", help="control plane only; gateways run elsewhere (ferry bootstrap)")
    up.add_argument("--sotw", action="store_true",
                    help="the local Envoy uses State-of-the-World xDS instead of Delta (Delta's push cost does not grow with the service count)")
    up.add_argument("--no-watch", action="store_true", help="do not re-apply the file when it changes")
    up.add_argument("--cluster-linger", type=float, default=10.0, metavar="SECONDS",
                    help="how long a retired revision's cluster stays on the gateways")
    up.add_argument("--activator", type=_hostport, default=HostPort("127.0.0.1", 8012),
                    help="where the activator listens (holds requests for revisions at zero)")
    up.add_argument("--queue-limit", type=_positive_int, default=10_000, metavar="N",
                    help="requests the activator holds per revision before answering 503")
    up.add_argument("--autoscale-tick", type=_positive_float, default=2.0, metavar="SECONDS",
                    help="seconds between autoscaling decisions (Knative: 2)")
    up.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    up.add_argument("-v", "--verbose", action="count", default=0)
    up.add_argument("-q", "--quiet", action="store_true")

    apply = sub.add_parser("apply", help="send a routes file to a running ferry")
    apply.add_argument("routes", type=Path)
    apply.add_argument("--api", default=DEFAULT_API)

    validate = sub.add_parser("validate", help="check a routes file without applying it (exit 1 on errors)")
    validate.add_argument("routes", type=Path)
    validate.add_argument("--state", type=Path, help="revision history to check names against (default: beside the file)")

    status = sub.add_parser("status", help="services, revisions and gateways of a running ferry")
    status.add_argument("service", nargs="?", help="only this service and its revisions")
    status.add_argument("--api", default=DEFAULT_API)
    status.add_argument("--json", action="store_true")

    boot = sub.add_parser("bootstrap", help="print an Envoy bootstrap that connects a gateway to ferry")
    boot.add_argument("--node-id", default="gateway-1")
    boot.add_argument("--group", default="default", help="node.cluster: gateways of one group share a snapshot")
    boot.add_argument("--xds", type=_hostport, default=HostPort("127.0.0.1", 18000))
    boot.add_argument("--admin", type=_hostport, default=HostPort("127.0.0.1", 9901))
    boot.add_argument("--listen", type=_hostport, help="this gateway's HTTP listener (default: the file's gateway.listen)")
    boot.add_argument("--sotw", action="store_true", help="State-of-the-World xDS instead of Delta")
    boot.add_argument("--format", choices=["yaml", "json"], default="yaml")

    args = parser.parse_args(argv)
    return {"up": _up, "apply": _apply, "validate": _validate, "status": _status, "bootstrap": _bootstrap}[args.command](args)


def _up(args) -> int:
    from . import logs
    from .daemon import Daemon, DaemonOptions

    logs.configure(-1 if args.quiet else args.verbose)
    options = DaemonOptions(
        routes=args.routes, state=args.state, xds=args.xds, api=args.api, admin=args.admin,
        run_envoy=not args.no_envoy, delta=not args.sotw, watch=not args.no_watch,
        test_hooks=args.test_hooks, cluster_linger_s=args.cluster_linger,
        activator=args.activator, queue_limit=args.queue_limit, autoscale_tick_s=args.autoscale_tick,
    )
    try:
        asyncio.run(Daemon(options).run())
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except (OSError, RuntimeError, TimeoutError) as err:
        print(f"ferry: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _request(api: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{api}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _apply(args) -> int:
    path = args.routes.resolve()
    try:
        content = path.read_text()
    except OSError as err:
        print(f"ferry: cannot read {args.routes}: {err.strerror}", file=sys.stderr)
        return 1
    try:
        status, body = _request(args.api, "/apply", {"path": str(path), "content": content})
    except OSError as err:
        print(f"ferry: no ferry answers at {args.api} ({err}); start one with `ferry up {args.routes}`", file=sys.stderr)
        return 1
    if status != 200:
        print(body.get("error", body), file=sys.stderr)
        return 1
    print(f"applied {args.routes}")
    return 0


def _validate(args) -> int:
    from .routing.loader import load_routes, validate
    from .routing.revisions import RevisionStore, default_store_path

    try:
        loaded = load_routes(args.routes)
        state = args.state or default_store_path(loaded.path)
        if state.exists():
            store = RevisionStore(state)
            try:
                validate(loaded, store)
            finally:
                store.close()
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                store = RevisionStore(Path(tmp) / "state.db")
                try:
                    validate(loaded, store)
                finally:
                    store.close()
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except OSError as err:
        print(f"ferry: cannot read {args.routes}: {err.strerror}", file=sys.stderr)
        return 1
    print(f"{args.routes}: ok ({len(loaded.spec.services)} services)")
    return 0


def _status(args) -> int:
    path = "/status" + (f"?service={urllib.parse.quote(args.service)}" if args.service else "")
    try:
        code, status = _request(args.api, path)
    except OSError as err:
        print(f"ferry: no ferry answers at {args.api} ({err})", file=sys.stderr)
        return 1
    if code != 200:
        print(f"ferry: {status.get('error', status)}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(status, sys.stdout, indent=1)
        print()
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict) -> str:
    lines = []
    config = status["config"]
    lines.append(f"config: {config['file']}")
    if config.get("last_error"):
        lines.append("  last error (not applied; previous config serving):\n    " + config["last_error"].replace("\n", "\n    "))
    lines.append("")
    lines.append("SERVICE            URL                                      LATEST            TRAFFIC")
    for name, svc in status["services"].items():
        traffic = ", ".join(
            f"{t['revision']} {t['percent']}%" if "percent" in t else f"{t['revision']} @{t['tag']} ({t['url']})"
            for t in svc["traffic"]
        )
        if svc["waiting"]:
            traffic += f"  [{svc['waiting']}]"
        lines.append(f"{name:18} {svc['url']:40} {svc['latest_ready'] or '-':17} {traffic}")
    lines.append("")
    lines.append("REVISION                 SERVICE            STATE        READY  ENDPOINTS")
    for name, rev in status["revisions"].items():
        lines.append(
            f"{name:24} {rev['service']:18} {rev['state']:12} {rev['ready']}/{rev['total']:<4} {' '.join(rev['endpoints'])}"
        )
    scaled = {name: rev["autoscaling"] for name, rev in status["revisions"].items() if rev.get("autoscaling")}
    if scaled:
        lines.append("")
        lines.append("AUTOSCALING              WANT READY METRIC       STABLE   PANIC    NOW conc/rps   MODE   ACTIVATOR  LAST DECISION")
        for name, a in scaled.items():
            if "desired" not in a:
                continue
            observed = a["observed"]
            now = f"{_num(observed['concurrency'])}/{_num(observed['rps'])}"
            decided = a["last_decision"]
            decision = f"{decided['seconds_ago']}s ago: {decided['reason']}" if decided else "-"
            lines.append(
                f"{name:24} {a['desired']:<4} {a['ready']:<5} {a['metric']:12} {_num(observed['stable']):8} "
                f"{_num(observed['panic']):8} {now:14} {'panic' if a['panic_mode'] else 'stable':6} "
                f"{'in path' if a['activator_in_path'] else '-':10} {decision}"
            )
    lines.append("")
    lines.append("GATEWAY              GROUP       PROTO  CONNECTED  IN SYNC  ACKED                      LAST NACK")
    for gw in status["gateways"]:
        acked = " ".join(f"{t}={v[:6]}" for t, v in gw["acked"].items())
        nack = gw["last_nack"]
        nack_text = f"{nack['type']}: {nack['message'][:120]}" if nack else "-"
        lines.append(
            f"{gw['node']:20} {gw['group'] or '-':11} {gw['protocol']:6} {'yes' if gw['connected'] else 'no':10} "
            f"{'yes' if gw['in_sync'] else 'no':8} {acked:26} {nack_text}"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _bootstrap(args) -> int:
    from .envoy.bootstrap import BootstrapOptions, bootstrap

    config = bootstrap(
        BootstrapOptions(
            node_id=args.node_id, group=args.group, xds_host=args.xds.host, xds_port=args.xds.port,
            admin_host=args.admin.host, admin_port=args.admin.port, delta=not args.sotw,
            listen=str(args.listen) if args.listen else None,
        )
    )
    if args.format == "json":
        print(json.dumps(config, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
