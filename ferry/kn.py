"""kn's everyday verbs over ferry's API: `ferry service list|describe`, `ferry revision list|describe` and `ferry wait`,
each with `-o json|yaml`.

Thin views: the API answers every fact and the conditions (reconcile/conditions.py); this module only asks and
renders. Rendering (views -> aligned tables, `describe` text, JSON, YAML) is pure and takes `now`; the commands reach
the API through the `call` the CLI hands them (cli._call: prints the error and returns None when it fails).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .routing.durations import parse_duration

COMMANDS = ("service", "revision", "wait")
OUTPUTS = ("json", "yaml")
WAIT_POLL_S = 0.25
UNREACHABLE = "ferry: no ferry answers at"  # how the CLI's call says there is no ferry to ask
Call = Callable[[Any, str], Any]  # (api, path) -> the answer, or None once the error is printed


# -- the command line ----------------------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction, client: argparse.ArgumentParser) -> None:
    """`service`, `revision` and `wait` under ferry's subcommands; `client` is the parent parser of every command
    that talks to a running ferry (--api, --token-file, --ca)."""
    service = sub.add_parser("service", help="kn-style: list services, or describe one (URL, revisions, conditions)")
    actions = service.add_subparsers(dest="action", required=True)
    _output(actions.add_parser("list", aliases=["ls"], parents=[client], help="every service, with its conditions"))
    describe = actions.add_parser("describe", parents=[client], help="one service: URL, revisions, conditions")
    describe.add_argument("name")
    _output(describe)

    revision = sub.add_parser("revision", help="kn-style: list revisions, or describe one (template, instances)")
    actions = revision.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", aliases=["ls"], parents=[client], help="revisions, newest first")
    listing.add_argument("-s", "--service", help="only this service's revisions")
    _output(listing)
    describe = actions.add_parser("describe", parents=[client], help="one revision: template, instances, conditions")
    describe.add_argument("name")
    _output(describe)

    wait = sub.add_parser("wait", parents=[client],
                          help="until a service is Ready: its latest revision ready and its traffic served by every "
                               "gateway (exit 1 with the reason on timeout or failure)")
    wait.add_argument("name")
    wait.add_argument("--timeout", type=_seconds, default=60.0, help="how long to wait (default 60s)")
    wait.add_argument("--error-window", type=_seconds, default=2.0,
                      help="how long Ready may stay False before giving up (default 2s; kn's --wait-window)")
    _output(wait)


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, help="print the API's answer as JSON or YAML")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    if not seconds >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration of 0 or more")
    return seconds


def run(args: argparse.Namespace, call: Call) -> int:
    """One of COMMANDS, parsed by add_parsers."""
    if args.command == "wait":
        return wait(args, call)
    quote = urllib.parse.quote
    if args.command == "service":
        path = "/services" if args.action in ("list", "ls") else f"/services/{quote(args.name, safe='')}"
        render = service_list if args.action in ("list", "ls") else service_describe
    elif args.action in ("list", "ls"):
        path = f"/revisions/{quote(args.service, safe='')}" if args.service else "/revisions"
        render = revision_list
    else:
        path, render = f"/revision/{quote(args.name, safe='')}", revision_describe
    answer = call(args.api, path)
    if answer is None:
        return 1
    print(dump(answer, args.output) if args.output else render(answer, time.time()))
    return 0


def wait(args: argparse.Namespace, call: Call, *, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> int:
    """Exit 0 once the service's Ready is True; 1 once it has been False for the error window (a revision that
    cannot start), or when the timeout passes, with the reason either way. A ferry that does not answer yet (just
    started) is asked again until the timeout; a service it does not know is an error at once, as with kn."""
    path = f"/services/{urllib.parse.quote(args.name, safe='')}"
    started = clock()
    failing_since: float | None = None
    call, unreachable = _each_error_once(call)
    while True:
        view = call(args.api, path)
        if view is None:  # an error (printed); only a ferry that does not answer yet is asked again
            if not unreachable() or clock() - started >= args.timeout:
                return 1
            sleep(WAIT_POLL_S)
            continue
        ready = find(view.get("conditions") or (), "Ready")
        now = clock()
        if ready["status"] != "False":
            failing_since = None
        elif failing_since is None:
            failing_since = now
        done = ready["status"] == "True"
        failed = failing_since is not None and now - failing_since >= args.error_window
        timed_out = now - started >= args.timeout
        if done or failed or timed_out:
            if args.output:
                print(dump(view, args.output))
            if done:
                if not args.output:
                    print(f"service {args.name} is ready after {now - started:.1f}s: {view['url']} serves "
                          f"{_served(view)}")
                return 0
            why = "failed" if failed else f"is not ready after {_duration(args.timeout)}"
            print(f"ferry: service {args.name} {why}: {ready['reason'] or ready['status']}"
                  + (f": {ready['message']}" if ready.get("message") else ""), file=sys.stderr)
            return 1
        sleep(max(0.0, min(WAIT_POLL_S, args.timeout - (now - started))))


def _each_error_once(call: Call) -> tuple[Call, Callable[[], bool]]:
    """`call`, printing each of its error messages once however often it is retried; and whether its last error
    was that no ferry answers (ferry just starting: worth asking again)."""
    said: set[str] = set()
    last = [""]

    def once(api: Any, path: str) -> Any:
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            answer = call(api, path)
        last[0] = captured.getvalue()
        if last[0] not in said:
            said.add(last[0])
            sys.stderr.write(last[0])
        return answer

    return once, lambda: last[0].startswith(UNREACHABLE)


# -- rendering (pure) ------------------------------------------------------------------------------------------


def dump(data: Any, output: str) -> str:
    """-o json|yaml: the API's answer as it is."""
    if output == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")
    return json.dumps(data, indent=2)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns, three spaces apart (kn's tabwriter); "" for None."""
    cells = [[("" if v is None else str(v)) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def age(created_at: float | None, now: float) -> str:
    """kubectl's short durations: 45s, 3m20s, 25m, 5h10m, 3d4h, 12d."""
    if created_at is None:
        return ""
    seconds = max(0, int(now - created_at))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def find(conditions: Sequence[Mapping], type_: str) -> Mapping:
    """The condition of that type (Unknown when the view has none)."""
    for c in conditions:
        if c["type"] == type_:
            return c
    return {"type": type_, "status": "Unknown", "reason": None, "message": None, "severity": ""}


def _columns(conditions: Sequence[Mapping]) -> tuple[str, str, str]:
    """kn's CONDITIONS, READY and REASON: '3 OK / 4', Ready's status, and its reason (with its message unless True)."""
    ok = sum(1 for c in conditions if c["status"] == "True")
    ready = find(conditions, "Ready")
    reason = ready.get("reason") or ""
    if ready["status"] != "True" and ready.get("message"):
        reason = f"{reason} : {ready['message']}" if reason else ready["message"]
    return f"{ok} OK / {len(conditions)}", ready["status"], reason


def service_list(services: Sequence[Mapping], now: float) -> str:
    if not services:
        return "No services found."
    rows = [(s["name"], s["url"], s.get("latest_ready") or "", age(s.get("created_at"), now),
             *_columns(s.get("conditions") or ())) for s in services]
    return table(("NAME", "URL", "LATEST", "AGE", "CONDITIONS", "READY", "REASON"), rows)


def revision_list(revisions: Sequence[Mapping], now: float) -> str:
    if not revisions:
        return "No revisions found."
    rows = [(r["name"], r["service"], f"{r['traffic']}%" if r.get("traffic") else "", ",".join(r.get("tags") or ()),
             r["generation"], age(r.get("created_at"), now), *_columns(r.get("conditions") or ())) for r in revisions]
    return table(("NAME", "SERVICE", "TRAFFIC", "TAGS", "GENERATION", "AGE", "CONDITIONS", "READY", "REASON"), rows)


def _fields(pairs: Sequence[tuple[str, object]]) -> list[str]:
    """`Name:   value` lines, aligned; pairs whose value is None or "" are left out."""
    shown = [(k, v) for k, v in pairs if v not in (None, "")]
    width = max(len(k) for k, _ in shown) + 3
    return [f"{(k + ':').ljust(width)}{v}" for k, v in shown]


_SYMBOLS = {"True": "++", "Unknown": "??"}


def conditions_block(conditions: Sequence[Mapping]) -> list[str]:
    """kn's Conditions: ++ true, !! false, ?? unknown, ` I` an informational condition that is not true."""
    rows = []
    for c in conditions:
        symbol = _SYMBOLS.get(c["status"], "!!")
        if c["status"] != "True" and c.get("severity") == "Info":
            symbol = " I"
        rows.append((symbol, c["type"], c.get("reason") or "", c.get("message") or ""))
    return ["Conditions:", *("  " + line for line in table(("OK", "TYPE", "REASON", "MESSAGE"), rows).splitlines())]


def service_describe(service: Mapping, now: float) -> str:
    lines = _fields([
        ("Name", service["name"]), ("URL", service["url"]),
        ("Visibility", service.get("visibility") if service.get("visibility") != "public" else None),
        ("Hosts", ", ".join(service["hosts"][1:]) if len(service.get("hosts") or ()) > 1 else None),
        ("Age", age(service.get("created_at"), now)),
        ("Latest", _latest(service)),
    ])
    revisions = service.get("revisions") or ()
    shown = [r for r in revisions if r.get("traffic") or r.get("tags") or r.get("latest_created")]
    lines += ["", "Revisions:"]
    for r in shown:
        tags = "".join(f" #{t}" for t in r.get("tags") or ())
        marks = [m for m, on in (("latest", r.get("latest_ready")), ("latest created", r.get("latest_created")
                 and not r.get("latest_ready"))) if on]
        ready = find(r.get("conditions") or (), "Ready")
        lines.append(f"  {str(r.get('traffic', 0)) + '%':>5}  {r['name']}{tags} [{r['generation']}] "
                     f"({age(r.get('created_at'), now)})" + (f" ({', '.join(marks)})" if marks else ""))
        lines.append(f"         Replicas:  {r.get('ready', 0)}/{r.get('desired', 0)}    Ready: {ready['status']}"
                     + (f" ({ready['reason']})" if ready.get("reason") else ""))
    tag_urls = [t for t in service.get("traffic") or () if "tag" in t]
    if tag_urls:
        lines += ["", "Tags:", *(f"  #{t['tag']}  {t['url']} -> {t['revision']}" for t in tag_urls)]
    if service.get("split_owner", "file") != "file":
        lines += ["", f"Main split: {service['split_owner']}"]
    lines += ["", *conditions_block(service.get("conditions") or ())]
    return "\n".join(lines)


def _latest(service: Mapping) -> str:
    created, ready = service.get("latest_created"), service.get("latest_ready")
    if created == ready:
        return f"{created} (ready)"
    return f"{created} (created), {ready or 'none'} (ready)"


def revision_describe(revision: Mapping, now: float) -> str:
    t = revision.get("template") or {}
    scale = t.get("scale") or {}
    rollout = revision.get("rollout")
    lines = _fields([
        ("Name", revision["name"]), ("Service", revision["service"]), ("Generation", revision["generation"]),
        ("Age", age(revision.get("created_at"), now)),
        ("Image", t.get("image")), ("Command", _argv(t.get("command"))), ("Args", _argv(t.get("args"))),
        ("Port", t.get("port")), ("Endpoints", ", ".join(t.get("endpoints") or ())),
        ("Env", ", ".join(f"{k}={v}" for k, v in (t.get("env") or {}).items())),
        ("Readiness", _readiness(t)), ("Protocol", t.get("protocol") if t.get("protocol") != "http1" else None),
        ("Concurrency", None if t.get("endpoints") else _concurrency(t.get("concurrency"))),
        ("Timeouts", _timeouts(t)), ("Scale", None if t.get("endpoints") else _scale(scale)),
        ("Replicas", f"{revision.get('ready', 0)}/{revision.get('desired', 0)} ({revision['state']})"),
        ("Traffic", f"{revision.get('traffic', 0)}%" + "".join(f" #{tag}" for tag in revision.get("tags") or ())),
        ("Rollout", f"{rollout['result']}" + (f": {rollout['reason']}" if rollout.get("reason") else "")
         if rollout else None),
    ])
    troubled = [i for i in revision.get("instances") or () if i.get("error") or i.get("restarts")]
    if troubled:
        lines += ["", "Instances:", *(f"  #{n}  {'ready' if i.get('ready') else 'not ready'}, {i.get('restarts', 0)} "
                                      f"restarts" + (f", {i['error']}" if i.get("error") else "") + f"  ({i.get('log')})"
                                      for n, i in enumerate(troubled, 1))]
    lines += ["", *conditions_block(revision.get("conditions") or ())]
    return "\n".join(lines)


def _argv(argv: Sequence[str] | None) -> str | None:
    import shlex

    return shlex.join(argv) if argv else None


def _readiness(template: Mapping) -> str | None:
    if template.get("endpoints"):
        return None
    readiness = template.get("readiness") or {}
    return f"GET {readiness['path']}" if readiness.get("path") else "TCP connect"


def _concurrency(limit: int | None) -> str:
    return f"{limit} per instance" if limit else "unlimited"


def _duration(seconds: float | None) -> str:
    return f"{seconds:g}s"


def _timeouts(template: Mapping) -> str:
    timeout = template.get("timeout", 300.0)
    start = template.get("responseStartTimeout")
    idle = template.get("idleTimeout") or 0
    return (f"{_duration(timeout)} (response start {_duration(start if start is not None else timeout)}, idle "
            f"{_duration(idle) if idle else 'none'})")


def _scale(scale: Mapping) -> str | None:
    if not scale:
        return None
    target = scale.get("target")
    return (f"min {scale.get('min', 0)}, max {scale.get('max') or 'unbounded'}, initial {scale.get('initial', 1)}; "
            f"target {f'{target:g}' if isinstance(target, (int, float)) else '-'} {scale.get('metric', 'concurrency')} "
            "per instance")


def _served(service: Mapping) -> str:
    main = [f"{t['revision']} {t['percent']}%" for t in service.get("traffic") or () if "percent" in t]
    return ", ".join(main) or "nothing"
