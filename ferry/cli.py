"""ferry's command line: up, down, apply, validate, status, rollout, revisions, traffic, manifests, bootstrap (kn's verbs: kn.py; dashboard: dashboard_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import dashboard_cli, kn, knative_cli
from .routing.errors import ConfigError
from .routing.fields import is_loopback
from .statedir import token_file_for
from .routing.schema import HostPort

DEFAULT_API = "127.0.0.1:8090"
TOKEN_FILE = Path(".ferry") / "api-token"


@dataclass(frozen=True)
class Api:
    """Where a running ferry answers, and the token it wants."""

    address: str  # host:port, or a URL (https://host:port when ferry runs with --xds-cert)
    token: str | None = None
    ca: Path | None = None  # the CA that signed ferry's certificate, for https

    def __str__(self) -> str:
        return self.address

    def url(self, path: str) -> str:
        return (self.address if "://" in self.address else f"http://{self.address}").rstrip("/") + path

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.url("").startswith("https://"):
            return None
        return ssl.create_default_context(cafile=str(self.ca) if self.ca else None)


def find_token(token_file: Path | None, routes: Path | None = None, api: str | None = None) -> str | None:
    """The API token: --token-file, else $FERRY_TOKEN, else the token file `ferry up` noted for that API address
    (same user), else .ferry/api-token here, else beside the routes file."""
    if token_file is not None:
        return token_file.read_text().strip()
    if os.environ.get("FERRY_TOKEN"):
        return os.environ["FERRY_TOKEN"].strip()
    noted = token_file_for(api.split("://")[-1]) if api is not None else None  # the one for that very address
    candidates = [*([noted] if noted else []), Path.cwd() / TOKEN_FILE,
                  *([routes.absolute().parent / TOKEN_FILE] if routes is not None else [])]
    for candidate in candidates:
        try:
            return candidate.read_text().strip()
        except OSError:
            continue
    return None


def _hostport(value: str) -> HostPort:
    try:
        return HostPort.parse(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _admin(value: str) -> HostPort:
    """Envoy's admin API: loopback only (it can quit Envoy and dump its whole config)."""
    address = _hostport(value)
    if not is_loopback(address.host):
        raise argparse.ArgumentTypeError(
            f"{value}: Envoy's admin API can quit Envoy and dump its config, so it stays on loopback (127.0.0.1); "
            "a gateway elsewhere offers ferry its stats on the read-only --stats listener of `ferry bootstrap`")
    return address


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
    client = argparse.ArgumentParser(add_help=False)  # what every command that talks to a running ferry takes
    client.add_argument("--api", default=DEFAULT_API, help=f"where ferry answers (default {DEFAULT_API}; "
                        "https://HOST:PORT when it runs with --xds-cert)")
    client.add_argument("--token-file", type=Path, help="the API token (default: $FERRY_TOKEN, or .ferry/api-token "
                        "here or beside the routes file)")
    client.add_argument("--ca", type=Path, help="for https: the CA that signed ferry's certificate (ferry certs)")

    up = sub.add_parser("up", help="run the control plane, a local Envoy and the revisions of a routes file")
    up.add_argument("routes", type=Path)
    up.add_argument("--state", type=Path, help="SQLite state (default: .ferry/state.db beside the routes file)")
    up.add_argument("--xds", type=_hostport, default=HostPort("127.0.0.1", 18000), help="xDS gRPC address")
    up.add_argument("--api", type=_hostport, default=_hostport(DEFAULT_API), help="status/metrics/apply API address")
    up.add_argument("--admin", type=_admin, default=HostPort("127.0.0.1", 9901),
                    help="local Envoy's admin address (loopback only)")
    up.add_argument("--no-envoy", action="store_true", help="control plane only; gateways run elsewhere (ferry bootstrap)")
    up.add_argument("--sotw", action="store_true",
                    help="the local Envoy uses State-of-the-World xDS instead of Delta (Delta's push cost does not grow with the service count)")
    up.add_argument("--no-watch", action="store_true", help="do not re-apply the file (nor re-read gateway.tls's certificate files) when it changes")
    up.add_argument("--cluster-linger", type=float, default=10.0, metavar="SECONDS",
                    help="how long a retired revision's cluster stays on the gateways")
    up.add_argument("--activator", type=_hostport, default=HostPort("127.0.0.1", 8012),
                    help="where the activator listens (holds requests for revisions at zero)")
    up.add_argument("--advertise-activator", type=_hostport, metavar="HOST:PORT",
                    help="the activator's address as gateways reach it (default: --activator; in a pod, its IP)")
    up.add_argument("--leader-elect", action="store_true",
                    help="backend kubernetes, several replicas: the one holding the Lease scales and writes; the "
                         "others serve its xDS state to their gateways and forward the API to it")
    up.add_argument("--advertise", metavar="HOST",
                    help="the host other replicas and gateways reach this one at (in a pod: $(POD_IP)); also the "
                         "activator's host in EDS unless --advertise-activator says otherwise")
    up.add_argument("--lease-duration", type=_positive_float, default=15.0, metavar="SECONDS",
                    help="how long a dead leader's Lease blocks a follower from taking over (client-go: 15)")
    up.add_argument("--retain-revisions", type=_positive_int, default=10, metavar="N",
                    help="backend kubernetes: stopped revisions kept (at 0 replicas) per service before deletion")
    up.add_argument("--queue-limit", type=_positive_int, default=10_000, metavar="N",
                    help="requests the activator holds per revision before answering 503")
    up.add_argument("--autoscale-tick", type=_positive_float, default=2.0, metavar="SECONDS",
                    help="seconds between autoscaling decisions (Knative: 2)")
    up.add_argument("--token-file", type=Path, metavar="FILE",
                    help="the API token (default: api-token in the state folder, made if absent)")
    up.add_argument("--activator-key-file", type=Path, metavar="FILE",
                    help="the key gateways add to requests for the activator (default: in the state folder)")
    up.add_argument("--xds-cert", type=Path, help="mutual TLS on xDS: ferry's certificate (`ferry certs`)")
    up.add_argument("--xds-key", type=Path, help="... its private key")
    up.add_argument("--xds-ca", type=Path, help="... and the CA every gateway's certificate must come from")
    up.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    up.add_argument("-v", "--verbose", action="count", default=0)
    up.add_argument("-q", "--quiet", action="store_true")
    knative_cli.add_overrides(up)  # --listen, --domain, --internal, --backend, --namespace

    down = sub.add_parser("down", help="stop a ferry and its data plane, or the data plane a ferry that died left")
    down.add_argument("routes", nargs="?", type=Path, help="the routes file ferry ran (its state is beside it)")
    down.add_argument("--state", type=Path, help="the state folder (or its state.db), if not beside the routes file")

    activator = sub.add_parser("activator", help="(started by ferry up) the activator as its own process")
    activator.add_argument("--listen", type=_hostport, required=True)
    activator.add_argument("--control", type=Path, required=True, help="the control socket ferry connects to")
    activator.add_argument("--queue-limit", type=_positive_int, default=10_000, metavar="N")
    activator.add_argument("--key-file", type=Path, help="requests must carry the key in this file (gateways add it)")
    activator.add_argument("-v", "--verbose", action="count", default=0)

    apply = sub.add_parser("apply", parents=[client], help="send a routes file to a running ferry")
    apply.add_argument("routes", type=Path)

    validate = sub.add_parser("validate", help="check a routes file without applying it (exit 1 on errors)")
    validate.add_argument("routes", type=Path)
    validate.add_argument("--state", type=Path, help="revision history to check names against (default: beside the file)")
    knative_cli.add_overrides(validate)

    status = sub.add_parser("status", parents=[client], help="services, revisions and gateways of a running ferry")
    status.add_argument("service", nargs="?", help="only this service and its revisions")
    status.add_argument("--json", action="store_true")
    status.add_argument("-o", "--output", choices=kn.OUTPUTS)

    rollout = sub.add_parser("rollout", parents=[client], help="a service's rollout: status, promote, abort, retry")
    rollout.add_argument("action", choices=["status", "promote", "abort", "retry"])
    rollout.add_argument("service")
    rollout.add_argument("--watch", action="store_true", help="status: refresh every second until the rollout ends")
    rollout.add_argument("--json", action="store_true")

    revisions = sub.add_parser("revisions", parents=[client],
                               help="a service's revisions: created, ready, traffic, rollout result")
    revisions.add_argument("service")
    revisions.add_argument("--json", action="store_true")
    revisions.add_argument("-o", "--output", choices=kn.OUTPUTS)
    kn.add_parsers(sub, client)  # service list|describe, revision list|describe, wait
    knative_cli.add_parsers(sub, client)  # export, convert
    dashboard_cli.add_parser(sub, client)

    traffic = sub.add_parser("traffic", parents=[client],
                             help="set a service's split by hand (kept until the file agrees or --reset)")
    traffic.add_argument("service")
    traffic.add_argument("splits", nargs="*", metavar="REVISION=PERCENT")
    traffic.add_argument("--reset", action="store_true", help="back to the file's traffic block")

    manifests = sub.add_parser("manifests", help="print Kubernetes manifests that run ferry and its gateways")
    manifests.add_argument("--namespace", required=True, help="where ferry, its gateways and the revisions run")
    manifests.add_argument("--image", default="ferry:latest", help="ferry's container image (deploy/Dockerfile)")
    manifests.add_argument("--gateways", type=_positive_int, default=2, metavar="N", help="gateway replicas")
    manifests.add_argument("--replicas", type=_positive_int, default=2, metavar="N",
                           help="ferry replicas (one leads; all serve xDS)")
    manifests.add_argument("--secrets", type=Path, metavar="FOLDER",
                           help="where this install's token, activator key and certificates are kept (made if absent; "
                                "default .ferry/kubernetes-NAMESPACE here)")
    manifests.add_argument("--no-secrets", action="store_true",
                           help="leave the Secrets out (you make them; deploy/ferry.yaml is this)")

    certs = sub.add_parser("certs", help="make a CA and certificates for mutual TLS on xDS")
    certs.add_argument("folder", type=Path)
    certs.add_argument("--host", action="append", default=[], metavar="NAME",
                       help="another name or IP ferry is reached at (repeatable; ferry, localhost and 127.0.0.1 "
                            "are always in)")
    certs.add_argument("--days", type=_positive_int, default=365)

    boot = sub.add_parser("bootstrap", help="print an Envoy bootstrap that connects a gateway to ferry")
    boot.add_argument("--node-id", default="gateway-1")
    boot.add_argument("--group", default="default", help="node.cluster: gateways of one group share a snapshot")
    boot.add_argument("--xds", type=_hostport, default=HostPort("127.0.0.1", 18000))
    boot.add_argument("--admin", type=_admin, default=HostPort("127.0.0.1", 9901),
                      help="Envoy's admin API: loopback only (it can quit Envoy and dump its config)")
    boot.add_argument("--stats", type=_hostport, metavar="HOST:PORT",
                      help="the read-only listener ferry reads stats from (GET /stats and /ready only; default: "
                           "loopback, the admin port + 1); ferry reads it at the address this gateway connects from")
    boot.add_argument("--xds-cert", type=Path, help="mutual TLS with ferry's xDS: this gateway's certificate")
    boot.add_argument("--xds-key", type=Path, help="... its private key")
    boot.add_argument("--xds-ca", type=Path, help="... and the CA that signed ferry's (from `ferry certs`)")
    boot.add_argument("--listen", type=_hostport, help="this gateway's HTTP listener (default: the file's gateway.listen)")
    boot.add_argument("--sotw", action="store_true", help="State-of-the-World xDS instead of Delta")
    boot.add_argument("--all-stats", action="store_true",
                      help="keep every stat Envoy makes (~100 per cluster), not only those ferry and dashboards read")
    boot.add_argument("--format", choices=["yaml", "json"], default="yaml")

    args = parser.parse_args(argv)
    if args.command in ("apply", "status", "rollout", "revisions", "traffic", *kn.COMMANDS, *knative_cli.NEEDS_API,
                        *dashboard_cli.COMMANDS):
        try:
            args.api = Api(args.api, find_token(args.token_file, getattr(args, "routes", None), args.api), args.ca)
        except OSError as err:
            parser.error(f"cannot read the token file: {err}")
    commands = {"up": _up, "down": _down, "activator": _activator, "apply": _apply, "validate": _validate, "status": _status, "bootstrap": _bootstrap,
                "rollout": _rollout, "revisions": _revisions, "traffic": _traffic,
                "manifests": _manifests, "certs": _certs, **dict.fromkeys(kn.COMMANDS, _kn),
                **dict.fromkeys(knative_cli.COMMANDS, lambda a: knative_cli.run(a, _call)),
                "dashboard": lambda a: dashboard_cli.run(a, _call)}
    return commands[args.command](args)


def _up(args) -> int:
    from . import logs
    from .daemon import Daemon, DaemonOptions
    from .tls import TlsFiles

    tls_files = (args.xds_cert, args.xds_key, args.xds_ca)
    if any(tls_files) and not all(tls_files):
        print("ferry: mutual TLS on xDS needs all three of --xds-cert, --xds-key and --xds-ca", file=sys.stderr)
        return 1
    logs.configure(-1 if args.quiet else args.verbose)
    options = DaemonOptions(
        routes=args.routes, state=args.state, xds=args.xds, api=args.api, admin=args.admin,
        run_envoy=not args.no_envoy, delta=not args.sotw, watch=not args.no_watch,
        test_hooks=args.test_hooks, cluster_linger_s=args.cluster_linger,
        activator=args.activator, queue_limit=args.queue_limit, autoscale_tick_s=args.autoscale_tick,
        advertise_activator=args.advertise_activator, retained_revisions=args.retain_revisions,
        leader_elect=args.leader_elect, lease_duration_s=args.lease_duration, advertise=args.advertise,
        token_file=args.token_file, activator_key_file=args.activator_key_file,
        xds_tls=TlsFiles(*tls_files) if all(tls_files) else None, overrides=knative_cli.overrides_from(args),
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


def _down(args) -> int:
    from .daemon.down import down, state_folder

    folder = state_folder(args.routes, args.state)
    try:
        stopped = asyncio.run(down(folder))
    except (OSError, RuntimeError, TimeoutError) as err:
        print(f"ferry: {err}", file=sys.stderr)
        return 1
    print("\n".join(f"stopped {what}" for what in stopped) if stopped else f"nothing runs from {folder}")
    return 0


def _activator(args) -> int:
    from . import logs
    from .activator.process import main

    logs.configure(args.verbose)
    return main(args.listen.host, args.listen.port, args.control, args.queue_limit, args.key_file)


def _certs(args) -> int:
    from .certs import make

    paths = make(args.folder, hosts=args.host, days=args.days)
    print(f"wrote {', '.join(sorted(p.name for p in paths.values()))} to {args.folder}")
    print(f"  ferry up ROUTES --xds-cert {paths['server.crt']} --xds-key {paths['server.key']} "
          f"--xds-ca {paths['ca.crt']}")
    print(f"  ferry bootstrap --xds-cert {paths['gateway.crt']} --xds-key {paths['gateway.key']} "
          f"--xds-ca {paths['ca.crt']} ...")
    return 0


def _request(api: Api, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if api.token:
        headers["Authorization"] = f"Bearer {api.token}"
    request = urllib.request.Request(api.url(path), data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30, context=api.ssl_context()) as response:
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
        status, body = _request(args.api, "/apply", {"path": str(args.routes), "content": content})
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
        loaded = load_routes(args.routes, overrides=knative_cli.overrides_from(args))
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
    if args.json or args.output:
        print(kn.dump(status, args.output or "json"))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict) -> str:
    lines = []
    config = status["config"]
    lines.append(f"config: {config['file']}")
    if config.get("last_error"):
        lines.append("  last error (not applied; previous config serving):\n    " + config["last_error"].replace("\n", "\n    "))
    for cert in config.get("certificates") or ():
        lines.append(f"  https: {', '.join(cert['hosts'])} (until {cert['not_after'][:10]}, sha256 "
                     f"{cert['sha256'][:16]}...)")
    if config.get("certificates_error"):
        lines.append("  certificate files rejected (the last good certificates keep serving):\n    "
                     + config["certificates_error"].replace("\n", "\n    "))
    lines.append("")
    lines.append("SERVICE            URL                                      LATEST            TRAFFIC")
    for name, svc in status["services"].items():
        traffic = ", ".join(
            f"{t['revision']} {t['percent']}%" if "percent" in t else f"{t['revision']} @{t['tag']} ({t['url']})"
            for t in svc["traffic"]
        )
        if svc["waiting"]:
            traffic += f"  [{svc['waiting']}]"
        rollout = svc.get("rollout")
        if rollout and rollout.get("active"):
            traffic += (f"  [{rollout['strategy']} rollout to {rollout['candidate']}: {rollout['phase']}, "
                        f"step {rollout['step']}, {rollout['weight']}%]")
        elif svc.get("split_owner", "file") != "file":
            traffic += f"  [{svc['split_owner']}]"
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


def _call(api: Api, path: str, body: dict | None = None) -> dict | None:
    """One API call; prints the error and returns None when it fails."""
    try:
        code, answer = _request(api, path, body)
    except OSError as err:
        print(f"{kn.UNREACHABLE} {api} ({err})", file=sys.stderr)
        return None
    if code != 200:
        print(f"ferry: {answer.get('error', answer)}", file=sys.stderr)
        return None
    return answer


def _rollout(args) -> int:
    service = urllib.parse.quote(args.service)
    if args.action != "status":
        answer = _call(args.api, f"/rollouts/{service}/{args.action}", {})
        if answer is None:
            return 1
        print(format_rollout(answer))
        return 0
    while True:
        answer = _call(args.api, f"/rollouts/{service}")
        if answer is None:
            return 1
        if args.json:
            json.dump(answer, sys.stdout, indent=1)
            print()
        else:
            print(format_rollout(answer), flush=True)
        if not args.watch or not answer.get("active"):
            return 0
        time.sleep(1)
        print()


def format_rollout(r: dict) -> str:
    if r.get("phase") is None:
        return f"{r['service']}: no rollout yet (a template change on a service with a rollout block starts one)"
    served = ", ".join(f"{s['revision']} {s['percent']}%" for s in r.get("served", [])) or "-"
    lines = [
        f"service {r['service']}: {r['strategy']} rollout {r['stable']} -> {r['candidate']}, {r['phase']}"
        + (f" ({r['reason']})" if r.get("reason") else ""),
        f"  step {r['step']}, {r['weight']}% of main traffic to {r['candidate']}"
        + ("; preview host serves the candidate" if r.get("preview") else "")
        + f"; gateways serve: {served}",
    ]
    if r.get("rollback_ms") is not None:
        lines.append(f"  rollback reached every gateway {r['rollback_ms']} ms after the failing check")
    history = r.get("history") or []
    if history:
        lines.append("  TIME      EVENT               STEP WEIGHT REQUESTS SUCCESS   P99        WHY")
        for h in history[-20:]:
            v = h.get("verdict") or {}
            rate = f"{v['success_rate']:.2f}%" if v.get("success_rate") is not None else "-"
            p99 = f"{v['latency_p99_ms']:.1f} ms" if v.get("latency_p99_ms") is not None else "-"
            why = v.get("message") or h.get("note") or ""
            lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(h['at']))}  {h['event']:19} {h['step']:<4} "
                         f"{h['weight']:<6} {v.get('requests', '-'):<8} {rate:9} {p99:10} {why}")
    return "\n".join(lines)


def _revisions(args) -> int:
    answer = _call(args.api, f"/revisions/{urllib.parse.quote(args.service)}")
    if answer is None:
        return 1
    if args.json or args.output:
        print(kn.dump(answer, args.output or "json"))
        return 0
    print("REVISION                 CREATED              STATE        READY TRAFFIC  TAGS         ROLLOUT")
    for r in answer:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        result = r["rollout"]
        outcome = f"{result['result']}" + (f": {result['reason']}" if result.get("reason") else "") if result else "-"
        latest = " (latest)" if r["latest_ready"] else ""
        print(f"{r['name'] + latest:24} {created:20} {r['state']:12} {r['ready']:<5} {str(r['traffic']) + '%':8} "
              f"{','.join(r['tags']) or '-':12} {outcome}")
    return 0


def _kn(args) -> int:
    return kn.run(args, _call)


def _traffic(args) -> int:
    if args.reset == bool(args.splits):
        print("ferry: give REVISION=PERCENT pairs, or --reset", file=sys.stderr)
        return 2
    splits = []
    for pair in args.splits:
        revision, sep, percent = pair.partition("=")
        if not sep or not percent.strip().isdigit():
            print(f"ferry: {pair!r}: write REVISION=PERCENT, e.g. hello-00002=10", file=sys.stderr)
            return 2
        splits.append([revision, int(percent)])
    body = {"reset": True} if args.reset else {"splits": splits}
    answer = _call(args.api, f"/traffic/{urllib.parse.quote(args.service)}", body)
    if answer is None:
        return 1
    print(f"{args.service}: traffic back to the file" if args.reset else
          f"{args.service}: {', '.join(f'{r}={p}%' for r, p in splits)} (differs from the file until it agrees or --reset)")
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _bootstrap(args) -> int:
    from .envoy.bootstrap import BootstrapOptions, XdsTls, bootstrap

    tls_files = (args.xds_cert, args.xds_key, args.xds_ca)
    if any(tls_files) and not all(tls_files):
        print("ferry: mutual TLS needs all three of --xds-cert, --xds-key and --xds-ca", file=sys.stderr)
        return 1
    stats = args.stats or HostPort("127.0.0.1", args.admin.port + 1)
    try:
        config = bootstrap(
            BootstrapOptions(
                node_id=args.node_id, group=args.group, xds_host=args.xds.host, xds_port=args.xds.port,
                admin_host=args.admin.host, admin_port=args.admin.port, delta=not args.sotw,
                listen=str(args.listen) if args.listen else None, stats=(stats.host, stats.port),
                all_stats=args.all_stats,
                xds_tls=XdsTls(*(str(p.absolute()) for p in tls_files)) if all(tls_files) else None,
            )
        )
    except ValueError as err:
        print(f"ferry: {err}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(config, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


def _manifests(args) -> int:
    from . import statedir
    from .certs import ensure
    from .manifests import InstallSecrets, manifests, render, server_names

    install, header = None, (
        "# Without Secrets (--no-secrets): make the Secrets ferry and ferry-gateway yourself (keys in deploy/README.md)"
        "\n# or apply `ferry manifests --namespace NS` once, which writes them.\n")
    if not args.no_secrets:
        folder = args.secrets or Path(".ferry") / f"kubernetes-{args.namespace}"
        try:
            statedir.prepare(folder)
            install = InstallSecrets(
                token=statedir.secret(folder, statedir.API_TOKEN),
                activator_key=statedir.secret(folder, statedir.ACTIVATOR_KEY),
                certs=ensure(folder, hosts=server_names(args.namespace)))
        except OSError as err:
            print(f"ferry: cannot keep this install's secrets in {folder}: {err}", file=sys.stderr)
            return 1
        header = (f"# Holds this install's Secrets, kept in {folder} (the same ones each time; delete the folder to "
                  f"make new ones).\n# Through kubectl port-forward: ferry status --api https://127.0.0.1:8090 "
                  f"--ca {folder / 'ca.crt'} --token-file {folder / statedir.API_TOKEN}\n")
    print(render(manifests(args.namespace, image=args.image, gateway_replicas=args.gateways,
                           replicas=args.replicas, install=install), header=header), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
